"""The torso field: a deformable 2D image-plane field (GeneFace++ / RAD-NeRF torso, geneface_pp.md section 4).

The torso (neck, shoulders, clothes) has no 3D density: each pixel coordinate x in [-1, 1]^2 of the render is
deformed by an MLP conditioned on the 7 jaw landmarks (projected into the image), the head pose, a per-frame
latent code and a per-pixel head-aware code (the frozen head's rendered colour and alpha at that pixel), then a
canonical 2D grid + MLP gives the torso's alpha and colour. `ImageOccupancy` is its own 2D occupancy grid:
only pixels whose (dilated, decayed-max) alpha can be non-zero are evaluated.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cuda_ext import GridEncoder
from networks.encodings import FourierEncoding, mlp
from networks.nerf.head_field import _CondLinear
from networks.nerf.latent import FrameCodes

POSE_DIM = 9
"""Head pose as the field sees it: the first two columns of the world-to-camera rotation (6) + its translation (3)."""


def pose_features(c2w: torch.Tensor) -> torch.Tensor:
    """Head pose features of camera-to-world poses c2w [B, 4, 4] -> [B, 9]: the head's rotation in the camera
    (first two columns, a continuous 6D parametrisation) and its position in the camera, in head units."""
    R = c2w[:, :3, :3].float()
    t = c2w[:, :3, 3].float()
    Rt = R.transpose(1, 2)  # world-to-camera rotation
    return torch.cat([Rt[:, :, 0], Rt[:, :, 1], -(Rt @ t[:, :, None])[:, :, 0]], dim=-1)


def pixel_coords(size: int, device: torch.device | None = None) -> torch.Tensor:
    """Normalised image-plane coordinates of every pixel centre of a size x size render: [size*size, 2] in
    (-1, 1), (x right, y down), row-major like `talkfield.camera.get_rays`."""
    c = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size * 2.0 - 1.0
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([x, y], dim=-1).reshape(-1, 2)


class TorsoField(nn.Module):
    """Image-plane torso field.

    Args:
        grid: keyword args of `cuda_ext.GridEncoder` (2D) for the canonical grid (num_levels, level_dim,
            base_resolution, desired_resolution, log2_hashmap_size, gridtype).
        xy_freqs: Fourier octaves of the pixel coordinate. jaw_points: landmarks in the condition (7).
        jaw_freqs: octaves of the jaw landmark coordinates. pose_freqs: octaves of the head pose (-1: no pose).
        latent_dim, latent_max_frames: per-frame torso codes (`FrameCodes`, CONTRACTS.md section 5).
        head_dim: size of the head-aware code from the head's rgb + alpha at the pixel (0: not head-aware).
        deform_hidden / deform_layers: deformation MLP. hidden / layers: canonical MLP.
        shrink: pixel coordinates are scaled by it before deformation, leaving the grid room for the deformation.
    """

    def __init__(self, grid: dict | None = None, xy_freqs: int = 10, jaw_points: int = 7, jaw_freqs: int = 4,
                 pose_freqs: int = 2, latent_dim: int = 8, latent_max_frames: int = 20000, head_dim: int = 16,
                 deform_hidden: int = 64, deform_layers: int = 3, hidden: int = 32, layers: int = 3,
                 shrink: float = 0.8):
        super().__init__()
        grid_defaults = dict(num_levels=16, level_dim=2, base_resolution=16, desired_resolution=2048,
                             log2_hashmap_size=16, gridtype="tiled")
        self.jaw_points, self.shrink = int(jaw_points), float(shrink)
        self.grid = GridEncoder(input_dim=2, bound=1.0, **{**grid_defaults, **(grid or {})})
        self.xy_enc = FourierEncoding(2, xy_freqs)
        self.jaw_enc = FourierEncoding(2 * self.jaw_points, jaw_freqs)
        self.pose_enc = FourierEncoding(POSE_DIM, pose_freqs) if pose_freqs >= 0 else None
        self.codes = FrameCodes(latent_max_frames, latent_dim)
        self.head_dim = int(head_dim)
        self.head_net = (nn.Sequential(nn.Linear(4, 16), nn.LeakyReLU(0.01), nn.Linear(16, 32), nn.LeakyReLU(0.01),
                                       nn.Linear(32, head_dim)) if head_dim > 0 else None)
        self.cond_dim = self.jaw_enc.output_dim + (self.pose_enc.output_dim if self.pose_enc else 0) + latent_dim
        pix = self.xy_enc.output_dim + self.head_dim
        self.deform_in = _CondLinear(pix, self.cond_dim, deform_hidden, bias=True)
        self.deform_out = nn.Sequential(nn.ReLU(), mlp(deform_hidden, deform_hidden, 2, deform_layers - 1))
        with torch.no_grad():  # start near the identity deformation (small, not zero: every layer gets gradients)
            self.deform_out[-1][-1].weight.mul_(1e-2)
            self.deform_out[-1][-1].bias.zero_()
        self.canonical_in = _CondLinear(self.grid.output_dim + pix, self.cond_dim, hidden, bias=True)
        self.canonical_out = nn.Sequential(nn.ReLU(), mlp(hidden, hidden, 4, layers - 1))

    # --------------------------------------------------------------------------------------------------------
    def encode_condition(self, jaw: torch.Tensor, pose: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Per-image condition: jaw [B, 7, 2] landmarks in normalised image coordinates ([-1, 1], see
        `pixel_coords`), pose [B, 9] (`pose_features`, normalised), code [B, latent_dim] -> [B, cond_dim]."""
        parts = [self.jaw_enc(jaw.float().reshape(jaw.shape[0], -1))]
        if self.pose_enc is not None:
            parts.append(self.pose_enc(pose.float()))
        parts.append(code.float())
        return torch.cat(parts, dim=-1)

    def _pixel_features(self, xy: torch.Tensor, head_rgba: torch.Tensor | None) -> torch.Tensor:
        enc = self.xy_enc(xy.float() * self.shrink)
        if self.head_net is None:
            return enc
        if head_rgba is None:
            ha = enc.new_zeros(enc.shape[0], self.head_dim)
        else:
            ha = self.head_net(head_rgba.to(enc.dtype))
        return torch.cat([enc, ha], dim=-1)

    def forward(self, xy: torch.Tensor, cond: torch.Tensor,
                head_rgba: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """xy [N, 2] pixel coordinates in [-1, 1]; cond [1, C] or [N, C] (`encode_condition`); head_rgba [N, 4]
        (the head's premultiplied rgb + alpha at those pixels; None: zeros, e.g. for occupancy queries) ->
        alpha [N] float32 in (0, 1), rgb [N, 3] float32 in (0, 1), deformation dx [N, 2]."""
        feat = self._pixel_features(xy, head_rgba)
        c = cond.to(feat.dtype)
        dx = self.deform_out(self.deform_in(feat, c))
        warped = (xy.float() * self.shrink + dx.float()).clamp(-1.0, 1.0)
        g = self.grid(warped)
        h = self.canonical_out(self.canonical_in(torch.cat([g.to(feat.dtype), feat], dim=-1), c)).float()
        out = torch.sigmoid(h)
        return out[:, 0], out[:, 1:], dx

    def alpha(self, xy: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """alpha [N] at pixel coordinates xy [N, 2] without head-aware input (the occupancy grid's query)."""
        return self.forward(xy, cond, None)[0]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by learning-rate group: 'grid' (the canonical grid) and 'mlp' (the rest, codes included)."""
        grid = list(self.grid.parameters())
        taken = {id(p) for p in grid}
        return {"grid": grid, "mlp": [p for p in self.parameters() if id(p) not in taken]}


class ImageOccupancy(nn.Module):
    """A resolution x resolution occupancy grid over the image plane [-1, 1]^2 (state in buffers).

    `update` queries alpha at jittered cell centres, dilates with a k x k max-pool and keeps
    max(decay * grid, new); `mask` says which pixels can be non-empty: bilinear occupancy above
    min(threshold, mean occupancy). Before the first update every pixel is evaluated.
    """

    def __init__(self, resolution: int = 128, decay: float = 0.95, threshold: float = 0.01, dilation: int = 5):
        super().__init__()
        self.resolution, self.decay = int(resolution), float(decay)
        self.threshold, self.dilation = float(threshold), int(dilation)
        self.register_buffer("grid", torch.zeros(self.resolution, self.resolution))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def cell_centres(self, jitter: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """[R*R, 2] cell centres in (-1, 1) (row-major, x right, y down), optionally jittered by +-1/2 cell."""
        xy = pixel_coords(self.resolution, self.grid.device)
        if jitter:
            noise = torch.rand(xy.shape, generator=generator, device=generator.device if generator else xy.device)
            xy = xy + (noise.to(xy.device) - 0.5) * (2.0 / self.resolution)
        return xy

    @torch.no_grad()
    def update(self, alpha_fn: Callable[[torch.Tensor], torch.Tensor],
               generator: torch.Generator | None = None,
               reduce_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """One update with alpha_fn(xy [M, 2]) -> alpha [M]; `reduce_fn` combines the new alphas across
        data-parallel ranks (e.g. an all-reduce max) so every rank keeps the same grid."""
        R = self.resolution
        new = alpha_fn(self.cell_centres(True, generator)).float().reshape(1, 1, R, R)
        if self.dilation > 1:
            new = F.max_pool2d(new, self.dilation, stride=1, padding=self.dilation // 2)
        if reduce_fn is not None:
            new = reduce_fn(new.contiguous())
        grid = self.grid if int(self.step) > 0 else torch.zeros_like(self.grid)
        self.grid.copy_(torch.maximum(grid * self.decay, new[0, 0]))
        self.step += 1

    def occupancy(self, xy: torch.Tensor) -> torch.Tensor:
        """Bilinear occupancy [N] at pixel coordinates xy [N, 2] in [-1, 1]."""
        g = self.grid[None, None]
        return F.grid_sample(g, xy.float().reshape(1, 1, -1, 2).to(g.device), mode="bilinear",
                             padding_mode="border", align_corners=False).reshape(-1)

    def mask(self, xy: torch.Tensor) -> torch.Tensor:
        """Which pixels xy [N, 2] to evaluate: bool [N] (all before the first update)."""
        if int(self.step) == 0:
            return torch.ones(xy.shape[0], dtype=torch.bool, device=xy.device)
        thresh = min(self.threshold, float(self.grid.mean()))
        return self.occupancy(xy) > thresh

    def occupied_fraction(self) -> float:
        if int(self.step) == 0:
            return 1.0
        return float((self.grid > min(self.threshold, float(self.grid.mean()))).float().mean())

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, decay={self.decay}, threshold={self.threshold}, dilation={self.dilation}"
