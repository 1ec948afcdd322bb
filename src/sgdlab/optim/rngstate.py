"""A private ``torch.Generator`` that travels with an optimizer's ``state_dict``.

Optimizers that draw random numbers (SAM-style wrappers of library code, zeroth-order probes, Hutchinson
probes) use their own generator, never the global RNG, so a run's other randomness (batches, dropout) is
the same with and without them, and a resumed run draws exactly what an uninterrupted one would. The
generator's state is saved under the class's ``RNG_KEY`` (kept per family, so existing checkpoints load).
"""

from __future__ import annotations

import torch


class CheckpointedGenerator:
    """Mixin for a ``torch.optim.Optimizer``: ``self._rng`` (set by :meth:`_init_rng`), seeds drawn from it,
    and its state in ``state_dict`` / ``load_state_dict`` under ``RNG_KEY``."""

    RNG_KEY = "sgdlab_rng"

    def _init_rng(self, seed: int) -> None:
        self._rng = torch.Generator().manual_seed(int(seed))

    def _new_seed(self) -> int:
        """A fresh 62-bit seed from the private generator (one per probe or step)."""
        return int(torch.randint(0, 2**62, (1,), generator=self._rng))

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd[self.RNG_KEY] = self._rng.get_state()
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        rng = state_dict.pop(self.RNG_KEY, None)
        super().load_state_dict(state_dict)
        if rng is not None:
            self._rng.set_state(rng)
