"""Head stage parts without a dataset: losses (lip crop orientation, adaptive weight), the per-frame code rule,
the field, the renderer's compositing and the super-resolution's start."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from networks import losses as L
from networks.nerf import FrameCodes, HeadField, SuperResolution, VolumeRenderer, per_frame_code
from talkfield.camera import get_rays, intrinsics_matrix


def test_lip_crop_orientation():
    """A box given as (x0, y0, x1, y1) crops rows y0:y1 and columns x0:x1 (u right, v down)."""
    img = torch.zeros(1, 3, 64, 64)
    img[0, 0, 40:50, 10:20] = 1.0          # red block at rows 40-49, columns 10-19 (x 10..20, y 40..50)
    img[0, 1, 10:20, 40:50] = 1.0          # green block at the transposed place
    rect = torch.tensor([[10.0, 40.0, 20.0, 50.0]])
    crop = L.crop_box(img, rect, 10)
    assert crop.shape == (1, 3, 10, 10)
    assert torch.allclose(crop[0, 0], torch.ones(10, 10)) and crop[0, 1].abs().max() == 0
    # a non-square box keeps its aspect: height from y, width from x
    tall = L.crop_box(img, torch.tensor([[10.0, 30.0, 20.0, 50.0]]), 20)
    assert tall[0, 0, :8].max() < 0.5 and tall[0, 0, 12:].min() > 0.5


def test_alpha_entropy_and_ambient_regularizer():
    assert float(L.alpha_entropy(torch.tensor([0.5]))) == pytest.approx(1.0, abs=1e-5)
    assert float(L.alpha_entropy(torch.tensor([0.0, 1.0]))) < 1e-3
    amb = torch.tensor([1.0, 2.0, 4.0])
    nonface = torch.tensor([True, False, True])
    assert float(L.ambient_regularizer(amb, nonface)) == pytest.approx(2.5)
    assert float(L.ambient_regularizer(amb, nonface, "mse")) == pytest.approx(8.5)
    assert float(L.ambient_regularizer(amb, torch.zeros(3, dtype=torch.bool))) == 0.0


def test_adaptive_weight_stays_finite():
    """The adaptive ambient weight moves in log space, stays within its clamp and ignores non-finite losses."""
    w = torch.tensor(0.0)
    lo, hi = math.log10(1e-4), math.log10(1e3)
    seen = []
    for i in range(20000):
        loss = torch.tensor([1e3, float("nan"), float("inf"), 0.0, 1e-30, 1e6][i % 6])
        w = L.adaptive_log_weight(w, loss, target=1e-8, rate=0.01, log10_min=lo, log10_max=hi)
        assert torch.isfinite(w)
        seen.append(float(w))
    assert max(seen) == pytest.approx(hi) and min(seen) >= lo
    up = L.adaptive_log_weight(torch.tensor(0.0), torch.tensor(1e-6), 1e-8, 0.01, lo, hi)
    down = L.adaptive_log_weight(torch.tensor(0.0), torch.tensor(1e-10), 1e-8, 0.01, lo, hi)
    assert float(up) == pytest.approx(0.02) and float(down) == pytest.approx(-0.02)


def test_per_frame_code_rule():
    """Training frames use their own code; any other frame (val, unseen, -1) the mean of the training codes."""
    table = torch.randn(10, 4)
    frames = torch.tensor([0, 5, 6, 9, -1])
    out = per_frame_code(table, frames, num_train=6)
    mean = table[:6].mean(0)
    assert torch.equal(out[0], table[0]) and torch.equal(out[1], table[5])
    for i in (2, 3, 4):
        assert torch.allclose(out[i], mean)
    codes = FrameCodes(max_frames=10, dim=4)
    with pytest.raises(ValueError):
        codes(torch.tensor([0]))  # no training frames set yet
    codes.set_num_train(6)
    assert torch.equal(codes(torch.tensor([3]))[0], codes.table[3])
    with pytest.raises(ValueError, match="latent_max_frames"):
        FrameCodes(max_frames=4).set_num_train(5)


def _small_field(**kw):
    grid = dict(num_levels=4, desired_resolution=64, log2_hashmap_size=12)
    return HeadField(grid=grid, ambient_grid=dict(num_levels=2, desired_resolution=32, log2_hashmap_size=10),
                     hidden=32, geo_dim=16, motion_hidden=32, landmark_dim=16, latent_max_frames=8, **kw)


def test_field_shapes_ambient_gradient_and_groups():
    torch.manual_seed(0)
    field = _small_field()
    field.codes.set_num_train(5)
    cond, weights = field.encode_condition(torch.randn(1, 3, 204), torch.rand(1, 3))
    assert cond.shape == (1, 24) and torch.allclose(weights.sum(-1), torch.ones(1))
    xyz = torch.rand(50, 3) * 2 - 1
    dirs = F.normalize(torch.randn(50, 3), dim=-1)
    sigma, rgb, amb = field(xyz, dirs, cond, field.codes(torch.tensor([2])))
    assert sigma.shape == (50,) and rgb.shape == (50, 3) and amb.shape == (50, 3)
    assert sigma.dtype == torch.float32 and bool((sigma > 0).all()) and bool(((rgb > 0) & (rgb < 1)).all())
    # the ambient grid passes gradients back into its coordinate, so the ambient MLP learns
    (sigma.sum() + rgb.sum()).backward()
    g = field.ambient_in.x.weight.grad
    assert g is not None and g.abs().sum() > 0
    groups = field.param_groups()
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(field.parameters()))
    assert {id(p) for p in groups["grid"]} == {id(field.position_grid.embeddings), id(field.ambient_grid.embeddings)}


def test_zero_density_render_is_the_background_and_sr_starts_bilinear():
    ren = VolumeRenderer(grid_resolution=16, max_steps=8, backend="torch")
    K = torch.from_numpy(intrinsics_matrix(40.0, 40.0, 8.0, 8.0)).float()
    c2w = torch.eye(4)
    c2w[2, 3] = -6.0
    rays_o, rays_d = get_rays(c2w, K, 16, 16)
    bg = torch.rand(256, 3)

    def empty(x, d):
        return torch.zeros(x.shape[0]), torch.rand(x.shape[0], 3), torch.zeros(x.shape[0])

    out = ren.render(empty, rays_o, rays_d, bg)
    assert out["num_samples"] > 0 and torch.allclose(out["image"], bg)

    def opaque(x, d):
        return torch.full((x.shape[0],), 1e4), torch.full((x.shape[0], 3), 0.25), torch.zeros(x.shape[0])

    out = ren.render(opaque, rays_o, rays_d, bg)
    hit = out["weights_sum"] > 0.99
    assert hit.float().mean() > 0.5  # the box covers most of this view
    assert torch.allclose(out["image"][hit], torch.full_like(out["image"][hit], 0.25), atol=1e-3)
    sr = SuperResolution(channels=8, blocks=1, up_channels=8)
    img = torch.rand(1, 3, 8, 8)
    assert torch.allclose(sr(img), F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False))


def test_alpha_mask_loss_known_values():
    ws = torch.tensor([1.0, 0.0, 0.5, 0.25])
    assert float(L.alpha_mask_loss(ws, torch.tensor([1.0, 0.0, 0.5, 0.25]))) == 0.0
    assert float(L.alpha_mask_loss(ws, torch.tensor([0.0, 1.0, 0.5, 0.75]))) == pytest.approx((1 + 1 + 0 + 0.25) / 4)
    assert float(L.alpha_mask_loss(ws, torch.ones(2, 2))) == pytest.approx((0 + 1 + 0.25 + 0.5625) / 4)
