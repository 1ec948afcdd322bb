"""1-bit Adam simulated on one device: K workers, error-compensated 1-bit momentum compression.

Tang, Gan, Awan, Rajbhandari, Li, Lian, Liu, Zhang, He 2021, "1-bit Adam: Communication Efficient
Large-Scale Training with Adam's Convergence Speed" (ICML), Algorithm 1. With K workers, all at the
same weights x_t, each with its own minibatch gradient g_k:

Warm-up, steps t = 1..T_w (``warmup_steps``): full-precision Adam on the exact average gradient
    g = (1/K) sum_k g_k,  m <- b1 m + (1-b1) g,  v <- b2 v + (1-b2) g^2,  x <- x - lr m / (sqrt(v) + eps)
then v is frozen at v_{T_w} (never updated again).
Compression, t > T_w (m is the momentum every worker received from the server at t-1):
    worker k:  m_k = b1 m + (1-b1) g_k
               c_k = C[m_k + d_k],        d_k <- m_k + d_k - c_k          (worker error feedback)
    server:    a = (1/K) sum_k c_k
               m  = C[a + d_s],           d_s <- a + d_s - m              (server error feedback)
    all:       x <- x - lr m / (sqrt(v_{T_w}) + eps)
1-bit compressor, one scale per tensor:  C[u] = (||u||_2 / sqrt(d)) * sign(u),  sign in {-1, +1}
(0 -> +1: one bit per element cannot encode 0), so ||C[u]||_2 = ||u||_2: "the compressed momentum has
the same magnitude as the uncompressed momentum" (the paper's scale: magnitude of the compensated
vector over the magnitude of its sign vector). The momentum is shared: after each step every worker
holds the server's m (the paper's m_{t-1} carries no worker index); only the errors d_k are per worker.

Choices and what could not be verified from the paper's text:
- Bias correction: Algorithm 1 keeps raw EMAs (m_0 = v_0 = 0, x <- x - lr m / sqrt(v_{T_w})), and the
  authors' DeepSpeed ``OnebitAdam`` takes a ``bias_correction`` flag but never applies it. Default
  here: off (the paper). ``bias_correction=True`` gives torch Adam's bias-corrected warm-up exactly,
  and in the compression stage divides m by (1 - b1^t) and uses v_hat = v_{T_w} / (1 - b2^{T_w}).
  With warmup_steps << 1/(1-b2) and no correction the frozen v is biased toward 0 (steps too large).
- eps is added outside the square root (as in DeepSpeed and torch); whether the paper's eta sits
  inside or outside sqrt(.) was not verified.
- weight_decay is not in Algorithm 1; it follows the DeepSpeed implementation, decoupled:
  x <- x - lr (m / (sqrt(v) + eps) + wd x), in both stages (default 0).
- The paper writes C on one vector; DeepSpeed applies it per parameter tensor (its server side
  further per worker chunk, an artefact of the distributed server). Here: one scale per tensor, on
  worker and server alike.

Simulation: ``step(closure)`` calls ``closure(k)`` for k = 0..K-1 (worker k's own minibatch, all at the
same weights; the loop's ``batches_per_step`` = K) and returns the mean worker loss. State per param:
"exp_avg" (shared m), "exp_avg_sq" (v), "worker_error" (K, *p.shape), "server_error" (p.shape); the
step counter is ``param_groups[i]["steps_done"]``. For logging each group keeps
"last_worker_error_norm" (sqrt of the mean over workers of ||d_k||^2, summed over the group's
params) and "last_server_error_norm" (||d_s||), both 0 during warm-up; :meth:`log_metrics` reports them.

Why own code: DeepSpeed's ``OnebitAdam`` needs a distributed NCCL/MPI backend and cupy; nothing
simulates the K workers in one process.
"""

from __future__ import annotations

import math

import torch

from ..registry import HParam, OptimizerSpec, register


def onebit_compress(u: torch.Tensor) -> torch.Tensor:
    """1-bit compression with one scale per tensor: (||u||_2 / sqrt(numel)) * sign(u), sign(0) = +1."""
    scale = torch.linalg.vector_norm(u) / math.sqrt(u.numel())
    return torch.where(u >= 0, scale, -scale)


def compress_with_feedback(x: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
    """Error-compensated compression: returns c = C[x + error] and sets ``error`` <- x + error - c."""
    u = x + error
    c = onebit_compress(u)
    error.copy_(u - c)
    return c


class OnebitAdam(torch.optim.Optimizer):
    """1-bit Adam with K simulated workers (see module docstring)."""

    def __init__(
        self,
        params,
        *,
        lr,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        workers=2,
        warmup_steps=100,
        bias_correction=False,
    ):
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "bias_correction": bias_correction,
            "steps_done": 0,
            "last_worker_error_norm": 0.0,
            "last_server_error_norm": 0.0,
        }
        super().__init__(params, defaults)
        self.workers, self.warmup_steps = int(workers), int(warmup_steps)

    def _init_state(self, p: torch.Tensor) -> dict:
        st = self.state[p]
        if "exp_avg" not in st:
            st["exp_avg"] = torch.zeros_like(p)
            st["exp_avg_sq"] = torch.zeros_like(p)
            st["worker_error"] = torch.zeros((self.workers, *p.shape), dtype=p.dtype, device=p.device)
            st["server_error"] = torch.zeros_like(p)
        return st

    def log_metrics(self) -> dict[str, float]:
        """Logged by the training loop: compression errors of the last step and the stage (0 warm-up, 1 compression)."""
        g0 = self.param_groups[0]
        return {
            "onebit_adam/worker_error_norm": float(g0["last_worker_error_norm"]),
            "onebit_adam/server_error_norm": float(g0["last_server_error_norm"]),
            "onebit_adam/compressing": float(g0["steps_done"] >= self.warmup_steps),
        }

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise ValueError("onebit_adam: step() needs a closure(k), one minibatch per worker")
        compress = [g["steps_done"] >= self.warmup_steps for g in self.param_groups]  # per group, fixed for the step
        acc: dict[int, torch.Tensor] = {}  # id(p) -> warm-up: sum_k g_k; compression: sum_k c_k
        losses = []
        for k in range(self.workers):
            with torch.enable_grad():
                losses.append(closure(k))
            for g, comp in zip(self.param_groups, compress):
                b1 = g["betas"][0]
                for p in g["params"]:
                    if p.grad is None:
                        continue
                    st = self._init_state(p)
                    if comp:
                        m_k = st["exp_avg"].mul(b1).add_(p.grad, alpha=1 - b1)  # b1 m + (1-b1) g_k
                        c_k = compress_with_feedback(m_k, st["worker_error"][k])
                    else:
                        c_k = p.grad
                    if id(p) in acc:
                        acc[id(p)].add_(c_k)
                    else:
                        acc[id(p)] = c_k.detach().clone()
        for g, comp in zip(self.param_groups, compress):
            b1, b2 = g["betas"]
            t = g["steps_done"] + 1
            worker_sq, server_sq = [], []
            for p in g["params"]:
                if id(p) not in acc:
                    continue
                st = self.state[p]
                mean = acc[id(p)].div_(self.workers)  # mean gradient (warm-up) or mean compressed momentum
                if comp:
                    st["exp_avg"].copy_(compress_with_feedback(mean, st["server_error"]))
                    worker_sq.append(st["worker_error"].square().sum() / self.workers)
                    server_sq.append(st["server_error"].square().sum())
                    t_v = self.warmup_steps  # v frozen at v_{T_w}
                else:
                    st["exp_avg"].mul_(b1).add_(mean, alpha=1 - b1)
                    st["exp_avg_sq"].mul_(b2).addcmul_(mean, mean, value=1 - b2)
                    t_v = t
                step_size, v_scale = g["lr"], 1.0
                if g["bias_correction"]:
                    step_size = g["lr"] / (1 - b1**t)
                    v_scale = math.sqrt(1 - b2**t_v)
                denom = st["exp_avg_sq"].sqrt().div_(v_scale).add_(g["eps"])
                if g["weight_decay"] != 0:
                    p.mul_(1 - g["lr"] * g["weight_decay"])
                p.addcdiv_(st["exp_avg"], denom, value=-step_size)
            if worker_sq:  # one host sync for both norms
                w, s = torch.stack([torch.stack(worker_sq).sum(), torch.stack(server_sq).sum()]).sqrt().tolist()
                g["last_worker_error_norm"], g["last_server_error_norm"] = w, s
            g["steps_done"] = t
        return torch.stack([torch.as_tensor(v) for v in losses]).mean()


register(
    OptimizerSpec(
        name="onebit_adam",
        family="distributed",
        source="sgdlab",
        summary=(
            "simulated 1-bit Adam: warmup_steps of Adam on the mean of K=workers gradients, then v frozen "
            "and each worker's momentum b1 m + (1-b1) g_k sent as error-compensated 1-bit sign*||u||/sqrt(d) "
            "(per tensor), averaged and recompressed by the server (own error feedback); x -= lr m/(sqrt(v)+eps). "
            "LOOP: batches_per_step = workers, closure(k) all at the same weights; returns the mean worker loss"
        ),
        paper="Tang, Gan, Awan, Rajbhandari, Li, Lian, Liu, Zhang, He 2021, 1-bit Adam (ICML), Algorithm 1",
        hparams=(
            HParam("lr", 1e-3, "learning rate gamma", float, "positive"),
            HParam("betas", (0.9, 0.999), "(beta1, beta2) EMA coefficients", tuple, "betas", length=2),
            HParam("eps", 1e-8, "denominator epsilon (outside the square root)", float, "positive"),
            HParam(
                "weight_decay", 0.0, "decoupled weight decay x -= lr wd x (DeepSpeed's; not in Alg. 1)", float, "nonneg"
            ),
            HParam("workers", 2, "number K of simulated workers", int, "posint"),
            HParam("warmup_steps", 100, "T_w: full-precision Adam steps before v is frozen", int, "posint"),
            HParam("bias_correction", False, "Adam bias correction (Algorithm 1 has none)", bool),
        ),
        batches_per_step=lambda h: h["workers"],
    ),
    lambda named, h: OnebitAdam([p for _, p in named], **h),
)
