"""Camera conventions: rays and projection agree, intrinsics scale with the pixel grid, poses smooth."""

from __future__ import annotations

import numpy as np
import torch

from talkfield.camera import (get_rays, intrinsics_matrix, invert_pose, project, rotation_angle_deg,
                              rotation_matrix, scale_intrinsics, smooth_poses)


def _pose(yaw=0.2, pitch=-0.1, roll=0.05, dist=6.0):
    c2w = np.eye(4)
    c2w[:3, :3] = rotation_matrix(yaw, pitch, roll)
    c2w[:3, 3] = c2w[:3, :3] @ np.array([0.0, 0.0, -dist])
    return c2w


def test_rays_hit_projected_points():
    rng = np.random.default_rng(0)
    K = intrinsics_matrix(700.0, 700.0, 256.0, 256.0)
    c2w = _pose()
    pts = rng.uniform(-1, 1, (50, 3))
    uv, z = project(pts, c2w, K)
    assert (z > 0).all()
    H = W = 512
    rays_o, rays_d = get_rays(torch.tensor(c2w), torch.tensor(K), H, W)
    for p, (u, v), d in zip(pts[:10], uv[:10], z[:10]):
        # the ray through the pixel whose centre is nearest passes within a pixel's width of the point
        i, j = int(v), int(u)
        o, r = rays_o[i * W + j].double().numpy(), rays_d[i * W + j].double().numpy()
        t = (p - o) @ r
        miss = np.linalg.norm(o + t * r - p)
        assert miss < 1.5 * d / 700.0


def test_principal_point_ray_is_optical_axis():
    K = intrinsics_matrix(500.0, 500.0, 2.0, 2.0)
    rays_o, rays_d = get_rays(torch.eye(4), torch.tensor(K), 4, 4)
    centre = rays_d.reshape(4, 4, 3)
    # pixel centres at +0.5: pixels (1,1),(1,2),(2,1),(2,2) surround the principal point symmetrically
    s = centre[1, 1] + centre[2, 2] + centre[1, 2] + centre[2, 1]
    assert torch.allclose(s[:2], torch.zeros(2), atol=1e-6) and s[2] > 0


def test_scale_intrinsics_matches_resampled_projection():
    K = intrinsics_matrix(900.0, 900.0, 256.0, 250.0)
    K2 = scale_intrinsics(K, 512, 256)
    pts = np.random.default_rng(1).uniform(-1, 1, (20, 3))
    uv, _ = project(pts, _pose(), K)
    uv2, _ = project(pts, _pose(), K2)
    assert np.allclose(uv2, uv * 0.5)
    Kt = scale_intrinsics(torch.tensor(K), 512, 256)
    assert np.allclose(Kt.numpy(), K2)


def test_invert_and_smooth():
    c2w = _pose()
    assert np.allclose(invert_pose(invert_pose(c2w)), c2w)
    assert torch.allclose(invert_pose(torch.tensor(c2w)), torch.tensor(invert_pose(c2w)))
    rng = np.random.default_rng(2)
    track = np.stack([_pose(0.1 * np.sin(t / 5) + rng.normal(0, 0.01), 0, 0) for t in range(40)])
    smooth = smooth_poses(track, 7)
    jitter = lambda a: np.abs(np.diff(a[:, :3, 3], 2, axis=0)).mean()  # noqa: E731
    assert jitter(smooth) < 0.5 * jitter(track)
    assert np.allclose(np.linalg.det(smooth[:, :3, :3]), 1.0)
    assert rotation_angle_deg(rotation_matrix(0.1, 0, 0), rotation_matrix(0.1, 0, 0)) < 1e-4
    assert abs(rotation_angle_deg(np.eye(3), rotation_matrix(np.radians(10), 0, 0)) - 10) < 1e-6


def test_rays_and_projection_stay_float32_under_bf16_autocast():
    """bf16-mixed training and bf16 inference run these inside autocast; a bf16 matmul would move rays ~1 px."""
    K = torch.from_numpy(intrinsics_matrix(507.0, 507.0, 128.0, 128.0)).float()
    c2w = torch.from_numpy(_pose()).float()
    pts = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (20, 3))).float()
    o, d = get_rays(c2w, K, 64, 64)
    uv, z = project(pts, c2w, K)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o2, d2 = get_rays(c2w, K, 64, 64)
        uv2, z2 = project(pts.bfloat16().float(), c2w, K)
        uv3, _ = project(pts.bfloat16(), c2w, K)
    assert d2.dtype == o2.dtype == uv2.dtype == uv3.dtype == torch.float32
    torch.testing.assert_close(d2, d)
    torch.testing.assert_close(o2, o)
    torch.testing.assert_close(uv2, project(pts.bfloat16().float(), c2w, K)[0])
    assert (uv3 - uv).abs().max() < 5.0  # only the bf16 input points' own rounding
