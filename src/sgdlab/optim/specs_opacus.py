"""DP-SGD from ``opacus`` (1.6): per-sample clipping, Gaussian noise, privacy accounting (issue 16).

Paper: Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar, Zhang 2016, "Deep Learning with Differential
Privacy" (ACM CCS), Algorithm 1. Accounting: Renyi DP (Mironov 2017, "Renyi Differential Privacy", IEEE
CSF) of the sampled Gaussian mechanism as opacus' ``RDPAccountant`` computes it, or the numerical
composition of privacy loss random variables (Gopi, Lee, Wutschitz 2021, NeurIPS) of its
``PRVAccountant`` (it reports the upper bound).

Update, per step t on the loop's minibatch b_t of B samples (parameters theta, all tensors jointly)::

    g_i    = grad_theta loss(theta_t; x_i, y_i)                       for i in b_t (opacus' hooks)
    gbar_i = g_i * min(1, C / (||g_i||_2 + 1e-6))                      (opacus' stabiliser 1e-6)
    g      = (sum_i gbar_i + N(0, sigma^2 C^2 I)) / B
    d      = g + weight_decay * theta_t;  v = momentum * v + d (v = d at t = 1);  theta_{t+1} = theta_t - lr v

Algorithm 1 is the case momentum = weight_decay = 0; both only post-process the noisy g (no data enters
them), so they cost no privacy. C = ``max_grad_norm``, sigma = ``noise_multiplier``.

Where the paper is open, or this code differs:

* clipping is "flat" (one norm over all parameters), not the paper's per-layer variant.
* the lot is the loop's minibatch (``LoopConfig.batch_size``); with ``physical_batch_size`` < B the
  per-sample gradients of the micro-batches are collected and one noise draw is added per step (the
  update is that of the full batch).
* the noise comes from a private ``torch.Generator`` on the parameters' device (Philox on CUDA, Mersenne
  Twister on CPU), seeded by hparam ``seed`` or, when None, from ``LoopConfig.seed``; its state is in the
  optimizer's ``state_dict``. It is not a cryptographically secure generator and floating-point attacks on
  the Gaussian sampler are not mitigated: a research setting, not a deployment.
* ``delta`` None means delta = 1/(10 n) with n the training set size: below 1/n, since at delta = 1/n a
  mechanism that publishes one random record in full is (0, delta)-DP.

The epsilon reported (``dp/epsilon`` at ``dp/delta``, at eval points and in the final metrics): the
accountant's epsilon for T = steps done compositions of the Poisson-subsampled Gaussian mechanism with
sampling rate q = B/n and noise multiplier sigma, under add/remove-one neighbouring datasets. This is a
proven (epsilon, delta) guarantee for the sequence of parameters only if every batch is a Poisson sample
(each record in independently with probability q). The loop draws fixed-size batches instead
(``sampling="epoch"``: a fresh permutation cut into batches; ``"iid"``: B records uniformly with
replacement), and for those the reported number is the customary Poisson-accounting *estimate*, not a
proven bound: shuffled batches can leak more than Poisson accounting says (Chua, Ghazi, Kamath, Kumar,
Manurangsi, Sinha, Zhang 2024, "How Private are DP-SGD Implementations?", ICML; not verified here).
Poisson sampling (variable batch sizes, the empty batch) is not implemented in the loop. Not covered
either way: the metrics the loop computes on the training data without noise (``train/loss``,
``train/acc``, ``train_full/*``), checkpoints of other runs, and choosing hyper-parameters over runs.

Why opacus: it is the maintained library for this (per-sample gradients for every layer type, with a
functorch fallback; RDP and PRV accountants). sgdlab only fits it to the step protocol and checkpoints
(:mod:`sgdlab.optim.dp`).
"""

from __future__ import annotations

from .registry import HParam, OptimizerSpec, register
from .specs_torch import lr, params_only, wd


def _dp_sgd(named, h):
    from .dp import DPSGD  # imports opacus (about a second): only when a dp_sgd optimizer is built

    return DPSGD(params_only(named), **h)


register(
    OptimizerSpec(
        name="dp_sgd",
        family="private",
        source="opacus",
        summary=(
            "DP-SGD: each per-sample gradient clipped to norm C, g = (sum + N(0, sigma^2 C^2)) / B, then SGD "
            "(momentum, weight decay); dp/epsilon at dp/delta at eval points (Poisson accounting, q = B/n)"
        ),
        paper="Abadi et al. 2016, Algorithm 1; Mironov 2017 (RDP accounting)",
        hparams=(
            lr(0.1),
            HParam("momentum", 0.0, "heavy-ball momentum on the noisy gradient (torch convention)", float, "unit"),
            wd(0.0, "L2 weight decay added to the noisy gradient (no privacy cost)"),
            HParam("max_grad_norm", 1.0, "C: per-sample gradients clipped to this L2 norm", float, "positive"),
            HParam("noise_multiplier", 1.0, "sigma: noise std is sigma C on the summed gradient", float, "nonneg"),
            HParam(
                "delta",
                None,
                "delta for the reported epsilon (None: 1/(10 n_train))",
                float,
                "open_unit",
                optional=True,
            ),
            HParam("accountant", "rdp", "privacy accountant for epsilon", str, choices=("rdp", "prv")),
            HParam(
                "seed",
                None,
                "seed of the noise generator (None: from LoopConfig.seed)",
                int,
                "nonnegint",
                optional=True,
            ),
        ),
        per_sample_grads=True,
    ),
    _dp_sgd,
)
