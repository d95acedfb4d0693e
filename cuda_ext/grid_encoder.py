"""Multi-resolution grid encoder (instant-NGP style, tiled or hashed levels)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ._wrapper import _require, grid_encode

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class GridEncoder(nn.Module):
    """Multi-resolution grid encoding with linear interpolation.

    Level l has scale s_l = base_resolution * per_level_scale**l - 1 and res_l = ceil(s_l) + 1, so
    (res_l + 1)**D grid points; a point x in [-bound, bound]^D sits at p = (x + bound) / (2 bound) * s_l + 0.5
    in grid units. A level's table holds min(2**log2_hashmap_size, (res_l + 1)**D) entries (rounded up to a
    multiple of 8). ``tiled`` levels index row-major (uint32 arithmetic) modulo the table; ``hash`` levels do the
    same while the dense grid fits and otherwise XOR the coordinates times (1, 2654435761, 805459861).

    Args:
        input_dim: 2 or 3. num_levels: L. level_dim: C features per level. base_resolution, desired_resolution:
            set per_level_scale = (desired/base)**(1/(L-1)) unless ``per_level_scale`` is given.
        log2_hashmap_size: table size cap per level. gridtype: ``tiled`` or ``hash``. interpolation: ``linear``.
        bound: inputs live in [-bound, bound]^D; points outside give zero features.
        storage_dtype: embeddings' dtype (float32, float16, bfloat16, or their names); arithmetic is float32.
        backend: ``auto`` (follow :func:`cuda_ext.set_backend`) or ``tinycudann`` (needs tinycudann; tiled
            levels map to its ``DenseGrid`` only when no level wraps).
    Parameters: embeddings [E, C] initialised U(-1e-4, 1e-4).
    forward: x [B, D] -> [B, L*C] float32 (float64 for float64 inputs); differentiable w.r.t. the embeddings
        and x (the ambient branch needs d/dx).
    """

    def __init__(self, input_dim: int = 3, num_levels: int = 16, level_dim: int = 2, base_resolution: int = 16,
                 desired_resolution: Optional[int] = 2048, per_level_scale: Optional[float] = None,
                 log2_hashmap_size: int = 16, gridtype: str = "tiled", interpolation: str = "linear",
                 bound: float = 1.0, storage_dtype=torch.float32, backend: str = "auto"):
        super().__init__()
        if input_dim not in (2, 3):
            raise ValueError(f"GridEncoder input_dim {input_dim}: only 2 or 3 are supported")
        if gridtype not in ("tiled", "hash"):
            raise ValueError(f"GridEncoder gridtype {gridtype!r}: use 'tiled' or 'hash'")
        if interpolation != "linear":
            raise ValueError(f"GridEncoder interpolation {interpolation!r}: only 'linear' is implemented")
        if backend not in ("auto", "tinycudann"):
            raise ValueError(f"GridEncoder backend {backend!r}: use 'auto' or 'tinycudann'")
        if isinstance(storage_dtype, str):
            storage_dtype = _DTYPES[storage_dtype]
        if per_level_scale is None:
            per_level_scale = (2.0 ** (math.log2(desired_resolution / base_resolution) / (num_levels - 1))
                               if num_levels > 1 else 1.0)
        self.input_dim, self.num_levels, self.level_dim = input_dim, num_levels, level_dim
        self.base_resolution, self.per_level_scale = base_resolution, float(per_level_scale)
        self.log2_hashmap_size, self.gridtype, self.bound = log2_hashmap_size, gridtype, float(bound)
        self.output_dim = num_levels * level_dim
        cap = 2 ** log2_hashmap_size
        offsets, resolutions, scales, hashed = [0], [], [], []
        for lvl in range(num_levels):
            scale = base_resolution * self.per_level_scale ** lvl - 1.0
            res = int(math.ceil(scale)) + 1
            dense = (res + 1) ** input_dim
            size = int(math.ceil(min(cap, dense) / 8) * 8)
            offsets.append(offsets[-1] + size)
            resolutions.append(res)
            scales.append(scale)
            hashed.append(gridtype == "hash" and dense > cap)
        self.offsets, self.resolutions, self.scales, self.hashed = offsets, resolutions, scales, hashed
        self.backend = backend
        if backend == "tinycudann":
            tcnn = _require("tinycudann")
            if gridtype == "tiled" and any((r + 1) ** input_dim > cap for r in resolutions):
                raise ValueError("GridEncoder(backend='tinycudann'): tiny-cuda-nn has no wrapping tiled grid; "
                                 "use gridtype='hash' or backend='auto'")
            self.tcnn = tcnn.Encoding(input_dim, {
                "otype": "HashGrid" if gridtype == "hash" else "DenseGrid", "n_levels": num_levels,
                "n_features_per_level": level_dim, "log2_hashmap_size": log2_hashmap_size,
                "base_resolution": base_resolution, "per_level_scale": self.per_level_scale})
        else:
            self.embeddings = nn.Parameter(torch.empty(offsets[-1], level_dim, dtype=storage_dtype).uniform_(-1e-4, 1e-4))

    def forward(self, x: Tensor) -> Tensor:
        if self.backend == "tinycudann":
            return self.tcnn((x + self.bound) / (2 * self.bound)).float()
        return grid_encode(x, self.embeddings, self.offsets, self.resolutions, self.scales, self.hashed, self.bound)

    def extra_repr(self) -> str:
        return (f"input_dim={self.input_dim}, num_levels={self.num_levels}, level_dim={self.level_dim}, "
                f"base_resolution={self.base_resolution}, per_level_scale={self.per_level_scale:.4f}, "
                f"gridtype={self.gridtype}, params={self.offsets[-1] * self.level_dim}")
