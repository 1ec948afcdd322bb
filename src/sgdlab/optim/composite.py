"""Muon for matrices plus AdamW for everything else, as one ``torch.optim.Optimizer``.

``torch.optim.Muon`` (torch 2.13) refuses any parameter whose ``ndim != 2`` (it orthogonalises
the momentum of a weight *matrix* with a Newton-Schulz iteration), so the usual recipe routes
biases, normalisation gains and conv kernels to AdamW. The training loop wants a single optimizer
object, so this class owns both and exposes their parameter groups and state as its own: one
``step``, one ``zero_grad``, one ``state_dict``, and lr schedulers see every group.
"""

from __future__ import annotations

from collections import defaultdict

import torch


class MuonWithAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` on the hidden 2-D params, ``torch.optim.AdamW`` on the others (with
    ``io_to_adamw``, the default, the first and last 2-D matrices count as "others": input layer, head).

    ``param_groups`` is the Muon group (if any 2-D param) followed by the AdamW group (if any
    other param); both children share this object's ``state`` dict (their params are disjoint),
    so ``state_dict()``/``load_state_dict()`` of the composite cover both exactly.
    """

    def __init__(self, named_params, h: dict):
        named = list(named_params)
        mats = [p for _, p in named if p.ndim == 2]  # (out, in) weight matrices -> Muon
        io: list[torch.Tensor] = []
        if h.get("io_to_adamw", True) and mats:
            # the reference recipe (Jordan et al. 2024): the input layer and the output head are not hidden
            # weight matrices and go to AdamW; parameters in model order, so first and last 2-D ones
            io = [mats[0]] + ([mats[-1]] if len(mats) > 1 else [])
            mats = mats[1:-1]
        io_ids = {id(p) for p in io}
        rest = [p for _, p in named if p.ndim != 2 or id(p) in io_ids]  # io, biases, norms, conv kernels
        self.muon = (
            torch.optim.Muon(
                mats,
                lr=h["lr"],
                weight_decay=h["weight_decay"],
                momentum=h["momentum"],
                nesterov=h["nesterov"],
                ns_steps=h["ns_steps"],
                adjust_lr_fn=h["adjust_lr_fn"],
            )
            if mats
            else None
        )
        self.adamw = (
            torch.optim.AdamW(
                rest,
                lr=h["adamw_lr"],
                betas=h["adamw_betas"],
                eps=h["adamw_eps"],
                weight_decay=h["adamw_weight_decay"],
            )
            if rest
            else None
        )
        super().__init__([p for _, p in named], defaults={})
        self.param_groups = []
        self.state = defaultdict(dict)
        self._link()

    def _children(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.muon, self.adamw) if o is not None]

    def _link(self) -> None:
        """Make the children use this object's groups and state (after init or a load)."""
        if not self.param_groups:
            self.param_groups = [g for o in self._children() for g in o.param_groups]
        i = 0
        for o in self._children():
            n = len(o.param_groups)
            o.param_groups = self.param_groups[i : i + n]
            o.state = self.state
            i += n

    @torch.no_grad()
    def step(self, closure=None):
        """Evaluate ``closure()`` once (if given), then step Muon and AdamW on those gradients."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self._children():
            o.step()
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # replaces self.param_groups / self.state
        self._link()
