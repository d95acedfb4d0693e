"""CPU thread caps for the latency-bound paths (streaming inference).

Inference runs small CPU pieces per 40 ms chunk (log-mel, f0, the LLE projection, small torch ops) next to the GPU
render. With one thread pool per library sized to every core (16 on the H100 box), each small call wakes all of
them. Measured on one H100 machine (docs/inference.md, "Benchmark"): the motion part of a streaming step took 59-71
ms with one thread per core and 32 ms capped at 4 (`bench/diag_stream.py`, 12 s streams); `bench/bm_infer.py` gave
streaming p95 608 -> 542 ms and 82.1 -> 91.2 frames/s for a 60 s file.
"""

from __future__ import annotations

import os

_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def cap_cpu_threads(n: int | None) -> int | None:
    """Cap the CPU thread pools of torch, OpenMP and the BLAS libraries at `n` (None or <= 0: leave them alone).

    Sets the environment defaults (for libraries not loaded yet; the user's own settings win), limits the pools
    already loaded through threadpoolctl, and torch's intra-op pool. Returns the cap applied (or None)."""
    if n is None or int(n) <= 0:
        return None
    n = int(n)
    for var in _VARS:
        os.environ.setdefault(var, str(n))
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)  # applied now and kept (not used as a context manager)
    if torch.get_num_threads() > n:
        torch.set_num_threads(n)
    return n
