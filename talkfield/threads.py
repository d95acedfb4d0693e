"""CPU thread caps for the latency-bound paths (streaming inference).

Inference runs small CPU pieces per 40 ms chunk (log-mel, f0, the LLE projection, small torch ops) next to the GPU
render. With one thread pool per library sized to every core (16 on the H100 box), each small call wakes and spins
all of them: on the H100 a streaming step's motion part took 59-71 ms with the defaults and 32 ms with OpenMP /
OpenBLAS / MKL capped at 4 threads, and the latency p95 fell from 548-578 ms to 485 ms
(`python bench/diag_stream.py`, bench/notes in docs/inference.md).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

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
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)  # applied now, kept (not used as a context manager)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn (a librosa dependency)
        log.debug("threadpoolctl missing: only the environment defaults cap the BLAS pools")
    import torch

    if torch.get_num_threads() > n:
        torch.set_num_threads(n)
    return n
