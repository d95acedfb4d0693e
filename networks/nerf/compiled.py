"""torch.compile of a per-sample function (a field, or field + compositing) with the sample count padded to a bucket.

The cuda_ext ops are PyTorch custom operators (cuda_ext._ops), so the whole function compiles as one graph
(``fullgraph=True``). The number of marched samples M changes every step; the sample dimension is marked dynamic
(one compilation for all M) and, with ``bucket > 0``, padded up to a multiple of ``bucket`` so that the CUDA-graph
modes ("reduce-overhead") replay one recorded graph per bucket instead of recording one per step.
"""

from __future__ import annotations

from typing import Callable

import torch

_CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


class BucketedCompile:
    """Call ``fn(*per_sample, *rest)`` compiled, where ``per_sample`` are the first ``n_per_sample`` arguments
    ([M, ...] tensors) and every output is [M, ...] when ``outputs_per_sample`` (else returned as is).

    Args:
        fn: the function; it must be traceable without graph breaks (HeadField.forward and the cuda_ext ops are).
        mode: torch.compile mode (None, "reduce-overhead", "max-autotune-no-cudagraphs", ...).
        bucket: pad M up to a multiple of this (0: no padding). Padding rows repeat real samples (row i -> i mod M),
            so they are valid inputs and their gradients, sliced away, are zero.
        n_per_sample: how many leading arguments have M rows. outputs_per_sample: slice every output to [:M].
        backend: torch.compile backend ("inductor"; "aot_eager" traces the same graphs without code generation).
    """

    def __init__(self, fn: Callable, *, mode: str | None = None, bucket: int = 0, n_per_sample: int = 2,
                 outputs_per_sample: bool = True, backend: str = "inductor"):
        self.fn, self.mode, self.bucket = fn, mode, int(bucket)
        self.n_per_sample, self.outputs_per_sample = int(n_per_sample), bool(outputs_per_sample)
        self.compiled = torch.compile(fn, fullgraph=True, backend=backend, mode=mode)
        self.cudagraphs = backend == "inductor" and mode in _CUDAGRAPH_MODES

    def padded_size(self, m: int) -> int:
        return -(-m // self.bucket) * self.bucket if self.bucket > 0 else m

    def __call__(self, *args):
        per, rest = args[:self.n_per_sample], args[self.n_per_sample:]
        m = per[0].shape[0]
        if m < 2:  # 0/1-sized dims are always specialised; not worth a graph
            return self.fn(*args)
        mp = self.padded_size(m)
        if mp != m:
            rows = torch.arange(mp, device=per[0].device) % m
            per = tuple(t[rows] for t in per)
        for t in per:
            torch._dynamo.mark_dynamic(t, 0)
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        out = self.compiled(*per, *rest)
        if not self.outputs_per_sample or mp == m:
            return out
        return tuple(o[:m] for o in out)
