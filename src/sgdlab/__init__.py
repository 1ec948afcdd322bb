"""sgdlab: an experiment platform for research on how optimizers shape training and generalization.

The library (this package) holds all the science and file formats. It never imports Prefect, and only
``sgdlab.tracking`` imports MLflow, so every algorithm is testable in milliseconds without an orchestrator.
Submodules are imported lazily by their users; importing ``sgdlab`` itself is cheap.
"""

__version__ = "0.1.0"
