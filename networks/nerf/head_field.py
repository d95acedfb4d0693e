"""The head radiance field: grid-encoded position + an ambient branch conditioned on landmarks and eye openness,
density and colour MLPs, spherical-harmonics view directions and a per-frame latent code."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from cuda_ext import GridEncoder
from networks.nerf.condition import ConditionEncoder
from networks.nerf.latent import FrameCodes
from talkfield.camera import HEAD_AABB


class _TruncExp(torch.autograd.Function):
    """exp in float32 with the backward's exponent clamped to [-15, 15] (stable under mixed precision)."""

    @staticmethod
    def forward(ctx, x):
        x = x.float()
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(-15, 15))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncExp.apply(x)


def sh_encode(d: torch.Tensor) -> torch.Tensor:
    """Real spherical harmonics of degree < 4 of unit directions: d [M, 3] -> [M, 16] float32."""
    x, y, z = d.float().unbind(-1)
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    return torch.stack([
        torch.full_like(x, 0.28209479177387814),
        -0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x,
        1.0925484305920792 * xy, -1.0925484305920792 * yz, 0.94617469575755997 * zz - 0.31539156525251999,
        -1.0925484305920792 * xz, 0.54627421529603959 * (xx - yy),
        0.59004358992664352 * y * (-3.0 * xx + yy), 2.8906114426405538 * xy * z,
        0.45704579946446572 * y * (1.0 - 5.0 * zz), 0.3731763325901154 * z * (5.0 * zz - 3.0),
        0.45704579946446572 * x * (1.0 - 5.0 * zz), 1.4453057213202769 * z * (xx - yy),
        0.59004358992664352 * x * (-xx + 3.0 * yy),
    ], dim=-1)


def _mlp(in_dim: int, hidden: int, out_dim: int, layers: int, bias: bool = True) -> nn.Sequential:
    dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
    mods: list[nn.Module] = []
    for i in range(layers):
        mods.append(nn.Linear(dims[i], dims[i + 1], bias=bias))
        if i < layers - 1:
            mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)


class _CondLinear(nn.Module):
    """Linear layer on [per-sample features ‖ one per-image vector] without materialising the broadcast:
    forward(x [M, a], c [1, b] or [M, b]) -> [M, out]; with image [M] int64, c is [B, b] (one row per image) and
    each sample takes its image's row of c's projection (c is linear: c(cond)[image] == c(cond[image]))."""

    def __init__(self, a: int, b: int, out: int, bias: bool):
        super().__init__()
        self.x = nn.Linear(a, out, bias=bias)
        self.c = nn.Linear(b, out, bias=False)

    def forward(self, x: torch.Tensor, c: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        if image is None:
            return self.x(x) + self.c(c)
        return self.x(x) + self.c(c)[image]


class HeadField(nn.Module):
    """Person-specific head field in head units (talkfield.camera conventions).

    Args:
        aabb: (xmin, ymin, zmin, xmax, ymax, zmax) box in head units (None: talkfield.camera.HEAD_AABB); positions are mapped to [-1, 1]^3 inside it.
        grid: keyword args of `cuda_ext.GridEncoder` for the position grid (num_levels, level_dim, base_resolution,
            desired_resolution, log2_hashmap_size, gridtype). ambient_grid: the same for the ambient grid.
        window, motion_hidden, landmark_dim, eye_dim: the `ConditionEncoder`.
        ambient_dim: ambient coordinate size (2 or 3). hidden: MLP width. geo_dim: geometry feature size.
        latent_dim, latent_max_frames: per-frame codes (`FrameCodes`).
        density_bias: initial bias of the log-density output (sigma = exp(h)).
    """

    def __init__(self, aabb: Sequence[float] | None = None, grid: dict | None = None, ambient_grid: dict | None = None,
                 window: int = 3, motion_hidden: int = 64, landmark_dim: int = 64, eye_dim: int = 8,
                 ambient_dim: int = 3, hidden: int = 128, geo_dim: int = 64, latent_dim: int = 4,
                 latent_max_frames: int = 20000, density_bias: float = 0.0):
        super().__init__()
        grid_defaults = dict(num_levels=16, level_dim=2, base_resolution=16, desired_resolution=2048,
                             log2_hashmap_size=16, gridtype="tiled")
        self.register_buffer("aabb", torch.as_tensor(list(aabb or HEAD_AABB), dtype=torch.float32))
        self.position_grid = GridEncoder(input_dim=3, bound=1.0, **{**grid_defaults, **(grid or {})})
        self.ambient_grid = GridEncoder(input_dim=ambient_dim, bound=1.0, **{**grid_defaults, **(ambient_grid or {})})
        self.condition = ConditionEncoder(204, window, motion_hidden, landmark_dim, eye_dim)
        self.codes = FrameCodes(latent_max_frames, latent_dim)
        pdim, adim, cdim = self.position_grid.output_dim, self.ambient_grid.output_dim, self.condition.out_dim
        self.ambient_in = _CondLinear(pdim, cdim, hidden, bias=False)
        self.ambient_out = nn.Sequential(nn.ReLU(inplace=True), _mlp(hidden, hidden, ambient_dim, 2, bias=False))
        self.sigma_net = _mlp(pdim + adim, hidden, 1 + geo_dim, 3)
        with torch.no_grad():  # initial log-density: below 0 the box starts transparent (the image starts as the bg)
            self.sigma_net[-1].bias[0] = density_bias
        self.color_in = _CondLinear(16 + geo_dim, latent_dim, hidden, bias=True)
        self.color_out = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(hidden, 3))

    # --------------------------------------------------------------------------------------------------------
    def normalize(self, xyz: torch.Tensor) -> torch.Tensor:
        """World points [M, 3] -> [-1, 1]^3 box coordinates (outside the box stays outside)."""
        lo, hi = self.aabb[:3], self.aabb[3:]
        return (xyz.float() - lo) / (hi - lo) * 2.0 - 1.0

    def encode_condition(self, motion: torch.Tensor, eye: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """motion [B, W, 204] z-scored, eye [B, W] -> (cond [B, C], window weights [B, W])."""
        return self.condition(motion, eye)

    def geometry(self, xyz: torch.Tensor, cond: torch.Tensor,
                 image: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """xyz [M, 3], cond [1, C] or [M, C] (or [B, C] with image [M] int64 in [0, B): each sample's image) ->
        sigma [M] float32, geometry feature [M, G], ambient coord [M, A]."""
        pos = self.position_grid(self.normalize(xyz))
        ambient = torch.tanh(self.ambient_out(self.ambient_in(pos, cond.to(pos.dtype), image)))
        amb = self.ambient_grid(ambient.float())
        h = self.sigma_net(torch.cat([pos, amb], dim=-1))
        return trunc_exp(h[..., 0]), h[..., 1:], ambient

    def density(self, xyz: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """sigma [M] float32 at world points for one condition (the occupancy grid's query)."""
        return self.geometry(xyz, cond)[0]

    def forward(self, xyz: torch.Tensor, dirs: torch.Tensor, cond: torch.Tensor, code: torch.Tensor,
                image: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """xyz [M, 3], dirs [M, 3] unit, cond [1, C] or [M, C], code [1, D] or [M, D] -> sigma [M] float32,
        rgb [M, 3] float32 in (0, 1), ambient coordinate [M, A]. With image [M] int64 in [0, B), cond [B, C] and
        code [B, D] are per image: their projections are computed once per image and gathered per sample."""
        sigma, geo, ambient = self.geometry(xyz, cond, image)
        h = self.color_in(torch.cat([sh_encode(dirs).to(geo.dtype), geo], dim=-1), code.to(geo.dtype), image)
        rgb = torch.sigmoid(self.color_out(h).float())
        return sigma, rgb, ambient

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by learning-rate group: 'grid' (both grids), 'attention' (window attention), 'mlp' (rest)."""
        grid = list(self.position_grid.parameters()) + list(self.ambient_grid.parameters())
        att = list(self.condition.attention.parameters())
        taken = {id(p) for p in grid + att}
        return {"grid": grid, "attention": att, "mlp": [p for p in self.parameters() if id(p) not in taken]}
