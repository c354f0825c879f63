"""Which training samples each step uses: a pure function of (seed, step, rank).

The sample stream is a sequence of passes over the dataset, each pass a permutation seeded by
(seed, pass number). Global step ``t`` consumes samples ``[t * B * W, (t + 1) * B * W)`` of the
stream (B = per-rank batch, W = world size) and rank ``r`` takes the r-th block of B of them, so:

- ranks never share a sample within a step and together cover the dataset like a
  ``DistributedSampler`` would;
- the position of the sampler is the step number alone: resuming at step t reproduces exactly
  the batches an uninterrupted run would have drawn, with nothing extra to checkpoint;
- with W ranks of batch B the union of a step's samples equals a single process's batch of
  B * W, so multi-process and single-process runs see the same data.

An "epoch" of training is a fixed number of iterations (see ``TrainConfig.epoch_iters``), not a
pass over this stream: patch datasets can be of any size.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset

_PASS_SEED_STRIDE = 1_000_003  # a prime: (seed, pass) pairs never collide for pass < 10^6


class StepBatchSampler:
    """Yields the (pass, index) lists of steps ``start_step, ..., total_steps - 1`` for one rank."""

    def __init__(
        self, n: int, batch_size: int, *, seed: int, start_step: int, total_steps: int,
        rank: int = 0, world_size: int = 1,
    ) -> None:
        if n < 1:
            raise ValueError(f"the dataset must hold at least one sample, got {n}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_step, self.total_steps = start_step, total_steps
        self.rank, self.world_size = rank, world_size
        self._perm_pass = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def _permutation(self, p: int) -> torch.Tensor:
        if p != self._perm_pass:
            g = torch.Generator().manual_seed(self.seed * _PASS_SEED_STRIDE + p)
            self._perm, self._perm_pass = torch.randperm(self.n, generator=g), p
        return self._perm

    def indices(self, step: int) -> list[tuple[int, int]]:
        """[(pass, index), ...] for this rank at ``step``; the pass seeds per-pass augmentation."""
        first = (step * self.world_size + self.rank) * self.batch_size
        out = []
        for k in range(first, first + self.batch_size):
            p = k // self.n
            out.append((p, int(self._permutation(p)[k % self.n])))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.total_steps):
            yield self.indices(step)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)


class PassIndexed(Dataset):
    """Wraps a dataset with ``set_epoch`` (e.g. ``PatchDataset``) so that an item is addressed
    as ``(pass, index)``: the augmentation of a sample then depends on its pass in the stream and
    not on which process (DataLoader worker, rank) fetches it or in which order."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self._has_epoch = hasattr(dataset, "set_epoch")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        p, i = key
        if self._has_epoch:
            self.dataset.set_epoch(p)
        return self.dataset[i]
