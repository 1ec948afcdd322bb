"""Predicting generalization: predictors (GAN, validation, train error, sharpness, trace,
PAC-Bayes flatness) and how to score them over a population of models (MAE, Kendall tau,
granulated Kendall Psi, PGDL conditional-mutual-information score).

Predictors of ``kind == "test_error"`` return a predicted test error; those of
``kind == "measure"`` return a complexity measure compared by rank only.
"""

from sgdlab.generalization.flatness import (
    FlatnessResult,
    PACBayesFlatnessPredictor,
    pacbayes_flatness,
)
from sgdlab.generalization.predictors import (
    GANPredictor,
    SharpnessPredictor,
    TracePredictor,
    TrainErrorPredictor,
    ValidationPredictor,
    classification_error,
)
from sgdlab.generalization.scoring import (
    granulated_kendall,
    kendall_tau,
    mae,
    pgdl_conditional_mi,
    pgdl_score,
    pgdl_score_pair_weighted,
)

__all__ = [
    "FlatnessResult",
    "GANPredictor",
    "PACBayesFlatnessPredictor",
    "SharpnessPredictor",
    "TracePredictor",
    "TrainErrorPredictor",
    "ValidationPredictor",
    "classification_error",
    "granulated_kendall",
    "kendall_tau",
    "mae",
    "pacbayes_flatness",
    "pgdl_conditional_mi",
    "pgdl_score",
    "pgdl_score_pair_weighted",
]
