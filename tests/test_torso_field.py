"""The torso field and its 2D occupancy grid (networks/nerf/torso_field.py), and the torch projection it relies on."""

from __future__ import annotations

import numpy as np
import torch

from networks.nerf.torso_field import ImageOccupancy, TorsoField, pixel_coords, pose_features
from talkfield.camera import project

TINY = dict(grid=dict(num_levels=4, desired_resolution=64, log2_hashmap_size=10), deform_hidden=32, hidden=16)


def _cond(field: TorsoField, B: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    jaw = torch.rand(B, 7, 2, generator=g) * 2 - 1
    pose = torch.randn(B, 9, generator=g)
    field.codes.set_num_train(10)
    return field.encode_condition(jaw, pose, field.codes(torch.arange(B)))


def test_shapes_ranges_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    f = TorsoField(**TINY)
    xy = pixel_coords(12)
    assert xy.shape == (144, 2) and float(xy.abs().max()) < 1.0
    cond = _cond(f)
    assert cond.shape == (1, f.cond_dim)
    head = torch.rand(144, 4)
    alpha, rgb, dx = f(xy, cond, head)
    assert alpha.shape == (144,) and rgb.shape == (144, 3) and dx.shape == (144, 2)
    assert alpha.dtype == torch.float32 and 0 < float(alpha.detach().min()) and float(alpha.detach().max()) < 1
    assert float(dx.detach().abs().max()) < 0.05, "the deformation starts near the identity"
    target = torch.rand(144, 3)
    loss = ((rgb * alpha[:, None] - target) ** 2).mean() + dx.pow(2).mean()
    loss.backward()
    no_grad = [n for n, p in f.named_parameters() if p.grad is None or float(p.grad.abs().sum()) == 0]
    assert no_grad == [], f"parameters without gradient: {no_grad}"
    # only the code of the frame in use moves
    assert float(f.codes.table.grad[1:].abs().sum()) == 0


def test_head_aware_code_and_condition_change_the_output():
    torch.manual_seed(0)
    f = TorsoField(**TINY)
    xy = pixel_coords(8)
    c0 = _cond(f, seed=0)
    with torch.no_grad():
        a0 = f(xy, c0, torch.zeros(64, 4))[0]
        a1 = f(xy, c0, torch.ones(64, 4))[0]
        a2 = f(xy, _cond(f, seed=1), torch.zeros(64, 4))[0]
    assert not torch.allclose(a0, a1) and not torch.allclose(a0, a2)
    # head_dim 0: not head-aware, the head input is ignored
    g = TorsoField(**{**TINY, "head_dim": 0, "pose_freqs": -1})
    cg = _cond(g)
    with torch.no_grad():
        assert torch.equal(g(xy, cg, torch.rand(64, 4))[0], g(xy, cg, None)[0])


def test_occupancy_grid_masks_empty_pixels_and_dilates():
    occ = ImageOccupancy(resolution=16, decay=0.5, threshold=0.01, dilation=3)
    xy = pixel_coords(16)
    assert occ.mask(xy).all(), "before the first update every pixel is evaluated"
    # alpha 1 in one cell (row 4, col 10), 0 elsewhere
    centre = pixel_coords(16)[4 * 16 + 10]
    occ.update(lambda p: ((p - centre).abs().max(-1).values < 1.0 / 16).float())
    m = occ.mask(xy).reshape(16, 16)
    assert m[4, 10] and m[3, 9] and m[5, 11], "dilated to the 3x3 neighbourhood"
    assert not m[0, 0] and not m[12, 3] and int(m.sum()) < 40
    # decayed max: an empty update halves the grid, it does not erase it
    before = occ.grid.clone()
    occ.update(lambda p: torch.zeros(p.shape[0]))
    assert torch.allclose(occ.grid, before * 0.5)
    assert set(dict(occ.named_buffers())) == {"grid", "step"} and int(occ.step) == 2


def test_pose_features_and_torch_projection():
    rng = np.random.default_rng(0)
    c2w = np.tile(np.eye(4), (3, 1, 1))
    c2w[:, :3, 3] = rng.normal(size=(3, 3)) * 0.2 + np.array([0, 0, -6.0])
    pts = rng.normal(size=(3, 7, 3)) * 0.5
    K = np.array([[400.0, 0, 128], [0, 400.0, 128], [0, 0, 1]])
    uv_np, z_np = project(pts, c2w, K)
    uv_t, z_t = project(torch.tensor(pts), torch.tensor(c2w), torch.tensor(K))
    np.testing.assert_allclose(uv_t.numpy(), uv_np, atol=1e-9)
    np.testing.assert_allclose(z_t.numpy(), z_np, atol=1e-9)
    feats = pose_features(torch.tensor(c2w, dtype=torch.float32))
    assert feats.shape == (3, 9)
    # identity rotation: the head sits at -t in the camera
    np.testing.assert_allclose(feats[:, 6:].numpy(), -c2w[:, :3, 3], atol=1e-6)
