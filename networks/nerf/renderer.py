"""Volume renderer of the head: box + near/far from `talkfield.camera`, occupancy grid, cuda_ext ray marching and
compositing over a background. The field is passed in per call, so the torso stage can reuse the renderer."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

import cuda_ext
from cuda_ext import OccupancyGrid
from talkfield.camera import HEAD_AABB

FieldFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""(xyzs [M, 3], dirs [M, 3]) -> (sigma [M], rgb [M, 3], ambient magnitude [M])."""
FramesFieldFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""(xyzs [M, 3], dirs [M, 3], image [M] int64) -> (sigma [M], rgb [M, 3], ambient magnitude [M]): several images
at once, each sample with the condition of its image (`VolumeRenderer.render_frames`)."""


class VolumeRenderer(nn.Module):
    """Ray marching through an occupancy grid over `aabb` (head units).

    Args:
        aabb: (xmin, ymin, zmin, xmax, ymax, zmax) box (None: talkfield.camera.HEAD_AABB); rays start at max(box entry, min_near) and end at its exit.
        grid_resolution: occupancy cells per axis (power of two). dt: marching step in head units (None: one cell
            diagonal, which samples the head about as densely as GeneFace++'s 2*sqrt(3)/128 in its box).
        max_steps: occupied samples per ray at most. min_near: nearest t. T_thresh: stop a ray once its
            transmittance drops below this. density_thresh, decay: occupancy grid update (see cuda_ext.OccupancyGrid).
        backend: cuda_ext backend for these ops ('auto': CUDA kernels on CUDA tensors; 'torch': the twins).
        chunk: rays per chunk when rendering without gradients.
    """

    def __init__(self, aabb: Sequence[float] | None = None, grid_resolution: int = 128, dt: float | None = None,
                 max_steps: int = 32, min_near: float = 0.05, T_thresh: float = 1e-4, density_thresh: float = 10.0,
                 decay: float = 0.95, backend: str = "auto", chunk: int = 65536):
        super().__init__()
        self.grid = OccupancyGrid(HEAD_AABB if aabb is None else aabb, grid_resolution, decay=decay, density_thresh=density_thresh)
        cell = self.grid.cell_size
        self.dt = float(dt) if dt else float(cell.norm())
        self.max_steps, self.min_near, self.T_thresh = int(max_steps), float(min_near), float(T_thresh)
        if backend not in cuda_ext.BACKENDS:
            raise ValueError(f"renderer backend {backend!r}: one of {cuda_ext.BACKENDS}")
        self.backend, self.chunk = backend, int(chunk)
        # render_frames: compact the inference loop's ray list every this many passes (cuda_ext.render_inference);
        # an inference setting (infer.compact_every), not part of the model's config
        self.compact_every = 1

    @property
    def aabb(self) -> torch.Tensor:
        return self.grid.aabb

    def render(self, field_fn: FieldFn, rays_o: torch.Tensor, rays_d: torch.Tensor, bg: torch.Tensor | None = None,
               perturb: bool = False, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Render rays [N, 3] (one image's rays) over bg [N, 3] (None: black).

        Returns image [N, 3] (composited), rgb [N, 3] (head only, premultiplied), weights_sum [N] (alpha),
        ambient_sum [N] (unweighted sum of the field's ambient magnitude over the ray's samples), depth [N],
        num_samples (int). Differentiable w.r.t. the field when grad is enabled.
        """
        with cuda_ext.backend(self.backend):
            nears, fars = cuda_ext.near_far_from_aabb(rays_o, rays_d, self.aabb, self.min_near)
            xyzs, dirs, deltas, rays = cuda_ext.march_rays_train(
                rays_o, rays_d, self.grid.bitfield, self.aabb, nears, fars, resolution=self.grid.resolution,
                dt=self.dt, max_steps=self.max_steps, perturb=perturb, generator=generator,
                buffer_size=self.grid.buffer_size() if torch.is_grad_enabled() else None)
            if torch.is_grad_enabled():
                self.grid.record_samples(xyzs.shape[0])
            sigma, rgb, ambient = field_fn(xyzs, dirs)
            ws, amb, depth, image = cuda_ext.composite_rays_train(sigma.float(), rgb.float(), ambient.float(), deltas,
                                                                  rays, self.T_thresh)
        out = {"rgb": image, "weights_sum": ws, "ambient_sum": amb, "depth": depth, "num_samples": xyzs.shape[0]}
        out["image"] = image + (1.0 - ws)[:, None] * bg if bg is not None else image
        return out

    @torch.no_grad()
    def render_chunked(self, field_fn: FieldFn, rays_o: torch.Tensor, rays_d: torch.Tensor,
                       bg: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`render` without gradients in chunks of `chunk` rays (validation, inference)."""
        parts = [self.render(field_fn, rays_o[i:i + self.chunk], rays_d[i:i + self.chunk],
                             None if bg is None else bg[i:i + self.chunk])
                 for i in range(0, rays_o.shape[0], self.chunk)]
        out = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "num_samples"}
        out["num_samples"] = sum(p["num_samples"] for p in parts)
        return out

    @torch.no_grad()
    def render_frames(self, field_fn: FramesFieldFn, rays_o: torch.Tensor, rays_d: torch.Tensor,
                      bg: torch.Tensor | None = None, max_step_per_pass: int = 8) -> dict[str, torch.Tensor]:
        """Render B images at once without gradients (inference): rays_o, rays_d [B, P, 3] (P rays per image), bg
        [B, P, 3] or None (black).

        All B*P rays go through one inference march/composite loop (`cuda_ext.render_inference`: only rays still
        alive are marched, each pass `n_step` samples per ray). With `ray_index` it hands each sample's ray, so the
        image a sample belongs to is ray // P: field_fn(xyzs [K, 3],
        dirs [K, 3], image [K] int64 in [0, B)) evaluates each sample with its own image's condition. A ray stops
        after the sample that brings its transmittance below `T_thresh` or after `max_steps` samples: the same
        samples and the same stopping rule as `render` (equal up to float rounding); behind an opaque surface at
        most the rest of one pass is evaluated. Returns image [B, P, 3] (over bg), rgb [B, P, 3] (premultiplied),
        weights_sum [B, P] (alpha), depth [B, P], num_samples (int: sample slots evaluated, padding included).
        """
        B, P = rays_o.shape[:2]
        o = rays_o.reshape(-1, 3).float().contiguous()
        d = rays_d.reshape(-1, 3).float().contiguous()
        stats: dict = {}

        def fn(xyzs, dirs, rays):
            sigma, col, _ = field_fn(xyzs, dirs, rays // P)
            return sigma.float(), col.float()

        with cuda_ext.backend(self.backend):
            ws, depth, rgb = cuda_ext.render_inference(fn, o, d, self.grid, dt=self.dt, max_steps=self.max_steps,
                                                       T_thresh=self.T_thresh, min_near=self.min_near,
                                                       max_step_per_pass=int(max_step_per_pass), ray_index=True,
                                                       stats=stats, compact_every=self.compact_every)
        evaluated = stats["samples"]
        ws, depth, rgb = ws.reshape(B, P), depth.reshape(B, P), rgb.reshape(B, P, 3)
        out = {"rgb": rgb, "weights_sum": ws, "depth": depth, "num_samples": evaluated}
        out["image"] = rgb + (1.0 - ws)[..., None] * bg.float() if bg is not None else rgb
        return out

    @torch.no_grad()
    def update_grid(self, density_fn: Callable[[torch.Tensor], torch.Tensor],
                    generator: torch.Generator | None = None,
                    reduce_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """One occupancy update (jittered cell centres, 6-neighbour dilation, decayed max) with `density_fn`;
        `reduce_fn` combines the new densities across data-parallel ranks (identical grids everywhere)."""
        with cuda_ext.backend(self.backend):
            self.grid.update(density_fn, jitter=True, dilate=True, generator=generator, reduce_fn=reduce_fn)

    @torch.no_grad()
    def mark_unseen(self, poses: torch.Tensor, K: torch.Tensor, size: int) -> None:
        """Cells no training camera sees are never occupied. poses [F, 4, 4] c2w; K [3, 3] at `size` px."""
        intr = torch.stack([K[0, 0], K[1, 1], K[0, 2], K[1, 2]]).float()
        with cuda_ext.backend(self.backend):
            self.grid.mark_untrained(poses.float(), intr, size, size, convention="opencv")

    def extra_repr(self) -> str:
        return f"dt={self.dt:.4f}, max_steps={self.max_steps}, min_near={self.min_near}, backend={self.backend}"
