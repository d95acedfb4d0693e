"""Occupancy grid over an axis-aligned box: density grid in Morton order plus its bitfield."""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ._wrapper import morton3d_dilation, morton3d_invert, packbits


class OccupancyGrid(nn.Module):
    """Density grid (single cascade) used to skip empty space while marching.

    Args:
        aabb: [6] (xmin, ymin, zmin, xmax, ymax, zmax), the box the grid covers (cells may be anisotropic).
        resolution: R cells per axis, a power of two <= 1024.
        decay: exponential decay of old densities in :meth:`update` (grid = max(decay * grid, new)).
        density_thresh: occupancy threshold cap; the threshold is min(mean density, density_thresh).

    Buffers (all in ``state_dict``, so resuming is exact):
        aabb [6]; density_grid [R^3] float32 in Morton order (-1 marks cells no camera sees);
        bitfield [R^3/8] uint8 (bit k of byte i = cell 8i+k occupied; all set until the first update);
        mean_density [] float32; step [] int64 (updates done); sample_counts [16] int64 ring of samples per
        ray batch and sample_step [] int64 (its write position), see :meth:`record_samples`.
    """

    def __init__(self, aabb: Union[Sequence[float], Tensor], resolution: int = 128, decay: float = 0.95,
                 density_thresh: float = 10.0):
        super().__init__()
        if resolution < 2 or resolution & (resolution - 1) or resolution > 1024:
            raise ValueError(f"OccupancyGrid resolution {resolution}: must be a power of two in [2, 1024]")
        aabb_t = torch.as_tensor(aabb, dtype=torch.float32).reshape(-1)
        if aabb_t.numel() != 6 or not bool((aabb_t[3:] > aabb_t[:3]).all()):
            raise ValueError(f"aabb must be (xmin, ymin, zmin, xmax, ymax, zmax) with max > min, got {aabb_t.tolist()}")
        self.resolution = int(resolution)
        self.decay = float(decay)
        self.density_thresh = float(density_thresh)
        n = resolution ** 3
        self.register_buffer("aabb", aabb_t.clone())
        self.register_buffer("density_grid", torch.zeros(n, dtype=torch.float32))
        self.register_buffer("bitfield", torch.full((n // 8,), 255, dtype=torch.uint8))
        self.register_buffer("mean_density", torch.zeros((), dtype=torch.float32))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("sample_counts", torch.zeros(16, dtype=torch.int64))
        self.register_buffer("sample_step", torch.zeros((), dtype=torch.int64))

    # ---------------------------------------------------------------------------------------------
    @property
    def cell_size(self) -> Tensor:
        """[3] edge lengths of one cell."""
        return (self.aabb[3:] - self.aabb[:3]) / self.resolution

    def cell_centers(self, codes: Tensor) -> Tensor:
        """codes: [K] Morton codes -> [K, 3] world positions of the cell centres."""
        ijk = morton3d_invert(codes).to(self.aabb.dtype)
        return self.aabb[:3] + (ijk + 0.5) * self.cell_size

    @torch.no_grad()
    def update(self, density_fn: Callable[[Tensor], Tensor], jitter: bool = True, dilate: bool = True,
               generator: Optional[torch.Generator] = None, chunk: int = 1 << 18,
               reduce_fn: Optional[Callable[[Tensor], Tensor]] = None) -> None:
        """Query ``density_fn`` (xyz [K, 3] -> sigma [K]) at every cell centre (jittered by up to half a cell
        when ``jitter``), take the 6-neighbour max (``dilate``), set grid = max(decay * grid, new) on cells
        that cameras see, then threshold at min(mean density, density_thresh) and repack the bitfield.
        ``reduce_fn`` (new [R^3] -> [R^3]) combines the new densities across data-parallel ranks (e.g. an
        all-reduce max) so every rank keeps an identical grid."""
        dev = self.density_grid.device
        n = self.density_grid.numel()
        new = torch.empty(n, dtype=torch.float32, device=dev)
        for start in range(0, n, chunk):
            codes = torch.arange(start, min(start + chunk, n), device=dev)
            ijk = morton3d_invert(codes).float()
            offs = torch.full_like(ijk, 0.5)
            if jitter:
                offs = offs + torch.rand(ijk.shape, generator=generator, device=dev) - 0.5
            xyz = self.aabb[:3] + (ijk + offs) * self.cell_size
            sig = density_fn(xyz)
            new[start:start + codes.numel()] = sig.reshape(-1).float()
        if dilate:
            new = morton3d_dilation(new)
        if reduce_fn is not None:
            new = reduce_fn(new)
        valid = self.density_grid >= 0
        self.density_grid.copy_(torch.where(valid, torch.maximum(self.density_grid * self.decay, new),
                                            self.density_grid))
        self.mean_density.copy_(self.density_grid.clamp(min=0).mean())
        self.bitfield.copy_(packbits(self.density_grid, self.threshold()))
        self.step += 1

    def threshold(self) -> Tensor:
        """[] float32: min(mean_density, density_thresh)."""
        return torch.clamp(self.mean_density, max=self.density_thresh)

    @torch.no_grad()
    def mark_untrained(self, poses: Tensor, intrinsics: Tensor, H: int, W: int, convention: str = "opencv",
                       chunk: int = 1 << 18) -> None:
        """Set cells that no camera sees to -1 (never occupied again) and repack the bitfield.

        Args:
            poses: [F, 4, 4] camera-to-world. intrinsics: [4] or [F, 4] (fx, fy, cx, cy) in pixels.
            H, W: image size. convention: ``opencv`` (camera x right, y down, looks along +z) or ``opengl``
                (y up, looks along -z).
        A cell counts as seen when its centre lies in front of a camera and projects inside the image
        widened by the cell's half-diagonal. Before the first :meth:`update` every seen cell stays occupied.
        """
        dev = self.density_grid.device
        poses = poses.to(device=dev, dtype=torch.float32)
        intr = intrinsics.to(device=dev, dtype=torch.float32).reshape(-1, 4).expand(poses.shape[0], 4)
        if convention == "opengl":
            poses = poses.clone()
            poses[:, :3, 1:3] = -poses[:, :3, 1:3]
        elif convention != "opencv":
            raise ValueError(f"convention {convention!r}: use 'opencv' or 'opengl'")
        half_diag = 0.5 * float(self.cell_size.norm())
        n = self.density_grid.numel()
        seen = torch.zeros(n, dtype=torch.bool, device=dev)
        for start in range(0, n, chunk):
            codes = torch.arange(start, min(start + chunk, n), device=dev)
            xyz = self.cell_centers(codes)
            s = torch.zeros(codes.numel(), dtype=torch.bool, device=dev)
            for f in range(poses.shape[0]):
                rot, trans = poses[f, :3, :3], poses[f, :3, 3]
                cam = (xyz - trans) @ rot  # world -> camera: R^T (x - t)
                z = cam[:, 2]
                zc = z.clamp(min=1e-6)
                fx, fy, cx, cy = intr[f]
                u = fx * cam[:, 0] / zc + cx
                v = fy * cam[:, 1] / zc + cy
                mu, mv = fx * half_diag / zc, fy * half_diag / zc
                s |= (z > 0) & (u >= -mu) & (u <= W + mu) & (v >= -mv) & (v <= H + mv)
            seen[start:start + codes.numel()] = s
        self.density_grid.masked_fill_(~seen, -1.0)
        if int(self.step.item()) == 0:  # no density yet: every seen cell stays occupied until the first update
            self.bitfield.copy_(packbits((self.density_grid >= 0).float(), 0.5))
        else:
            self.bitfield.copy_(packbits(self.density_grid, self.threshold()))

    def occupied_fraction(self) -> float:
        """Share of cells whose bit is set."""
        bits = (self.bitfield.long()[:, None] >> torch.arange(8, device=self.bitfield.device)) & 1
        return float(bits.sum().item()) / (self.resolution ** 3)

    # ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def record_samples(self, num_samples: int) -> None:
        """Record the sample count M of one training batch into the 16-slot running window (no host sync: a
        host-side copy of the window is kept next to the buffers)."""
        counts, step = self._host_window()
        counts[step % 16] = int(num_samples)
        self._host = (counts, step + 1)
        self.sample_counts[step % 16] = int(num_samples)
        self.sample_step.fill_(step + 1)

    def buffer_size(self, align: int = 128) -> Optional[int]:
        """Capacity hint for :func:`march_rays_train`: the running mean of recorded sample counts rounded up
        to ``align``, or None before anything was recorded."""
        counts, step = self._host_window()
        filled = min(step, 16)
        if filled == 0:
            return None
        mean = sum(counts[:filled]) / filled
        return int(math.ceil(mean / align) * align)

    def _host_window(self):
        if getattr(self, "_host", None) is None:  # first use, or after load_state_dict: read the buffers once
            self._host = ([int(v) for v in self.sample_counts.tolist()], int(self.sample_step.item()))
        return list(self._host[0]), self._host[1]

    def _load_from_state_dict(self, *args, **kwargs):
        self._host = None
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, aabb={self.aabb.tolist()}, decay={self.decay}, density_thresh={self.density_thresh}"
