"""Step-indexed streams: resumable, rank-split without overlap, worker-split in order."""

from __future__ import annotations

import itertools

from torch.utils.data import DataLoader

from datamodules.streams import StepStream, item_at


def _take(stream, n, **dl):
    return list(itertools.islice(iter(DataLoader(stream, batch_size=None, **dl)), n))


def make(i, k):
    return (i, k)


def test_every_item_once_per_pass_and_resume():
    items = [item_at(k, 7, seed=3) for k in range(14)]
    assert sorted(items[:7]) == list(range(7)) and sorted(items[7:]) == list(range(7))
    assert items[:7] != items[7:]  # a new order each pass
    full = _take(StepStream(7, make, seed=3), 12)
    resumed = _take(StepStream(7, make, seed=3, start=5), 7)
    assert full[5:] == resumed


def test_ranks_partition_the_global_stream():
    one = _take(StepStream(10, make, seed=1), 8)
    r0 = _take(StepStream(10, make, seed=1, rank=0, world_size=2), 4)
    r1 = _take(StepStream(10, make, seed=1, rank=1, world_size=2), 4)
    merged = [x for pair in zip(r0, r1) for x in pair]
    assert merged == one  # 2 ranks see exactly what 1 rank sees, split by step


def test_workers_keep_step_order():
    plain = _take(StepStream(5, make, seed=2), 9)
    workers = _take(StepStream(5, make, seed=2), 9, num_workers=2)
    assert plain == workers
