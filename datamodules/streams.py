"""Step-indexed training streams: batch k is a pure function of (seed, k), so a resumed run sees exactly the
data an uninterrupted run would have seen (the start step comes from the restored trainer.global_step)."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The frame order of one pass over n items, reproducible from (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def item_at(k: int, n: int, seed: int) -> int:
    """The k-th item of the endless shuffled stream over n items (one permutation per pass)."""
    epoch, pos = divmod(k, n)
    return int(epoch_permutation(n, seed, epoch)[pos])


class StepStream(IterableDataset):
    """Endless stream of training items. At optimizer step s, rank r of W ranks gets global item k = s * W + r:
    make(index=item_at(k), step=k). `make` must be deterministic given its arguments (it may seed its own generator
    from `step`), so the global batch of a step is the same for any number of ranks as long as W is the same, and a
    resumed run (start = restored global step) continues exactly. DataLoader workers split the steps round-robin;
    items are whole batches (use DataLoader(batch_size=None))."""

    def __init__(self, n: int, make: Callable[[int, int], object], seed: int, start: int = 0, rank: int = 0,
                 world_size: int = 1):
        super().__init__()
        if n <= 0:
            raise ValueError("StepStream needs at least one item to draw from")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n, self.make, self.seed, self.start = n, make, seed, start
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[object]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        step = self.start + wid
        while True:
            k = step * self.world_size + self.rank
            yield self.make(item_at(k, self.n, self.seed), k)
            step += nw


def step_generator(seed: int, step: int, device: torch.device | str | None = None) -> torch.Generator:
    """A torch generator (on `device`, default CPU) seeded from (seed, step): per-step randomness that resumes
    exactly."""
    g = torch.Generator() if device is None or torch.device(device).type == "cpu" else torch.Generator(device=device)
    g.manual_seed(int(np.random.default_rng([seed, step, 7]).integers(0, 2**62)))
    return g
