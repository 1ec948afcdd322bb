"""On-device minibatch sampling: epoch-wise random permutations, no DataLoader in the hot path.

The whole dataset lives on the device (airbench style); a batch is ``x[perm[pos:pos + B]]``.
The permutation is drawn with a per-run ``torch.Generator`` on the data's device, so batch order is
reproducible, independent of the global RNG, and its state can be checkpointed.
"""

from __future__ import annotations

import torch


class EpochSampler:
    """Minibatch indices, epoch-wise without replacement.

    Each epoch is a fresh ``randperm(n)``; an epoch ends when fewer than ``batch_size`` indices are
    left (the remainder is dropped, as with ``drop_last=True``), so every batch has exactly
    ``batch_size`` samples and no sample repeats within an epoch.
    """

    def __init__(self, n: int, batch_size: int, device: torch.device, seed: int) -> None:
        if not 1 <= batch_size <= n:
            raise ValueError(f"batch_size={batch_size} must be in [1, n={n}]")
        self.n, self.batch_size, self.device = n, batch_size, torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.perm = torch.empty(0, dtype=torch.long, device=self.device)
        self.pos = n  # forces a new permutation at the first draw
        self.epoch = 0  # number of permutations drawn so far

    def next_indices(self) -> torch.Tensor:
        """Indices of the next minibatch, shape (batch_size,), on the device."""
        if self.pos + self.batch_size > self.n:
            self.perm = torch.randperm(self.n, generator=self.generator, device=self.device)
            self.pos = 0
            self.epoch += 1
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict:
        """State loadable with ``torch.load(weights_only=True)`` (tensors and ints only)."""
        return {
            "generator": self.generator.get_state(),  # uint8 CPU tensor
            "perm": self.perm.cpu(),
            "pos": self.pos,
            "epoch": self.epoch,
            "n": self.n,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`; the dataset size and batch size must match."""
        if (state["n"], state["batch_size"]) != (self.n, self.batch_size):
            raise ValueError(
                f"sampler state is for n={state['n']}, batch_size={state['batch_size']}; "
                f"this run has n={self.n}, batch_size={self.batch_size}"
            )
        self.generator.set_state(state["generator"])
        self.perm = state["perm"].to(self.device)
        self.pos, self.epoch = int(state["pos"]), int(state["epoch"])


class IIDSampler(EpochSampler):
    """Minibatch indices drawn i.i.d. uniformly *with* replacement: the sampling the SDE view of SGD
    assumes (Li, Malladi, Arora 2021); ``epoch`` counts ``n`` samples drawn."""

    def __init__(self, n: int, batch_size: int, device: torch.device, seed: int) -> None:
        super().__init__(n, batch_size, device, seed)
        self.pos = 0  # samples drawn so far (no permutation to start)

    def next_indices(self) -> torch.Tensor:
        idx = torch.randint(self.n, (self.batch_size,), generator=self.generator, device=self.device)
        self.pos += self.batch_size
        self.epoch = self.pos // self.n
        return idx


SAMPLINGS = {"epoch": EpochSampler, "iid": IIDSampler}


def make_samplers(kind: str, n: int, batch_size: int, device, seeds: list[int]) -> list[EpochSampler]:
    """One sampler per minibatch a step draws (``seeds[k]`` for the k-th): the k-th batches of a step come
    from independent streams, so the two batches of SVAG are independent draws (one permutation would
    make them disjoint, i.e. negatively correlated: noise x ``l + (l-1) B/(N-B)`` instead of ``l``)."""
    if kind not in SAMPLINGS:
        raise ValueError(f"sampling={kind!r}; allowed: {', '.join(SAMPLINGS)}")
    return [SAMPLINGS[kind](n, batch_size, device, seed) for seed in seeds]
