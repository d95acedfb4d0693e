"""CPU tests: every PyTorch twin against a naive implementation, on random inputs, compared per ray."""

import math

import numpy as np
import pytest
import torch

import cuda_ext
from cuda_ext import _torch_impl as ti
from tests.cuda_ext._naive import (
    AABB, composite_naive, grid_encode_naive, march_naive, morton_py, near_far_naive, per_ray_samples,
    random_bitfield, random_rays,
)

AABB_T = torch.tensor(AABB)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------- box
def test_near_far_matches_naive():
    o, d = random_rays(300, gen(0))
    d = d * (0.5 + torch.rand(300, 1, generator=gen(1)))  # non-unit directions too
    d[:5, 1] = 0.0  # axis-parallel rays
    nears, fars = ti._near_far_from_aabb(o, d, AABB_T, 0.05)
    rn, rf = near_far_naive(o, d, AABB, 0.05)
    hit = torch.isfinite(rn)
    assert 0.5 < hit.float().mean() < 1.0  # the factory makes both hits and misses
    assert torch.equal(torch.isfinite(nears), hit) and torch.equal(torch.isfinite(fars), hit)
    torch.testing.assert_close(nears[hit].double(), rn[hit], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fars[hit].double(), rf[hit], rtol=1e-5, atol=1e-5)


def test_near_far_min_near_from_inside():
    o = torch.zeros(4, 3) + torch.rand(4, 3, generator=gen(2)) * 0.2  # inside the box
    d = torch.nn.functional.normalize(torch.randn(4, 3, generator=gen(3)), dim=1)
    nears, fars = ti._near_far_from_aabb(o, d, AABB_T, 0.05)
    assert torch.all(nears == 0.05) and torch.all(fars > 0.05)


# ---------------------------------------------------------------------------------------------------- grid
def test_morton_round_trip_and_bit_order():
    res = 64
    codes = torch.randperm(res ** 3, generator=gen(4))[:5000]
    ijk = ti._morton3d_invert(codes)
    assert torch.equal(ti._morton3d(ijk), codes)
    for c, (x, y, z) in zip(codes[:50].tolist(), ijk[:50].tolist()):
        assert morton_py(x, y, z) == c
    # a bijection on the full grid
    full = ti._morton3d_invert(torch.arange(16 ** 3))
    assert full.max() == 15 and len({tuple(v) for v in full.tolist()}) == 16 ** 3


def test_packbits_matches_numpy():
    grid = torch.rand(32 ** 3, generator=gen(5)) * 20 - 5
    thresh = 3.7
    bits = ti._packbits(grid, thresh)
    ref = np.packbits((grid.numpy() > thresh), bitorder="little")
    assert bits.dtype == torch.uint8 and np.array_equal(bits.numpy(), ref)


def test_dilation_matches_dense_neighbour_max():
    res = 16
    dense = torch.rand(res, res, res, generator=gen(6))  # indexed [x, y, z]
    codes = ti._morton3d(torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), -1).reshape(-1, 3))
    grid = torch.empty(res ** 3)
    grid[codes] = dense.reshape(-1)
    out = ti._morton3d_dilation(grid)
    padded = torch.nn.functional.pad(dense, (1, 1, 1, 1, 1, 1), value=-math.inf)
    ref = dense.clone()
    for ax in range(3):
        for s in (-1, 1):
            sl = [slice(1, res + 1)] * 3
            sl[ax] = slice(1 + s, res + 1 + s)
            ref = torch.maximum(ref, padded[tuple(sl)])
    assert torch.equal(out[codes].reshape(res, res, res), ref)


def test_occupancy_update_with_callback_and_state_dict():
    g = cuda_ext.OccupancyGrid(AABB, resolution=16, decay=0.9, density_thresh=8.0)
    assert g.occupied_fraction() == 1.0  # all set before the first update
    calls = []

    def density(xyz):
        calls.append(xyz.shape[0])
        return 30.0 * torch.exp(-((xyz / 0.4) ** 2).sum(-1))  # a blob in the middle

    g.update(density, jitter=False, dilate=False, chunk=1000)
    assert sum(calls) == 16 ** 3 and max(calls) <= 1000
    centres = g.cell_centers(torch.arange(16 ** 3))
    torch.testing.assert_close(g.density_grid, density(centres))
    thr = min(float(density(centres).clamp(min=0).mean()), 8.0)
    torch.testing.assert_close(g.threshold(), torch.tensor(thr))
    assert np.array_equal(g.bitfield.numpy(), np.packbits(g.density_grid.numpy() > thr, bitorder="little"))
    assert 0 < g.occupied_fraction() < 0.5
    # second update: exponential-max with dilation and jitter
    old = g.density_grid.clone()
    g.update(lambda x: torch.zeros(x.shape[0]), jitter=True, dilate=True, generator=gen(7))
    torch.testing.assert_close(g.density_grid, old * 0.9)
    assert int(g.step) == 2
    g.record_samples(1000)
    g.record_samples(1300)
    assert g.buffer_size() == 1152
    g2 = cuda_ext.OccupancyGrid(AABB, resolution=16)
    g2.load_state_dict(g.state_dict())
    for k, v in g.state_dict().items():
        assert torch.equal(v, g2.state_dict()[k]), k
    assert g2.buffer_size() == g.buffer_size()


def test_occupancy_update_dilates():
    g = cuda_ext.OccupancyGrid(AABB, resolution=8)
    g.density_grid.zero_()
    target = g.cell_centers(torch.tensor([ti._morton3d(torch.tensor([3, 4, 5])).item()]))[0]

    def spike(xyz):
        return ((xyz - target).abs() < 1e-4).all(-1).float() * 50.0

    g.update(spike, jitter=False, dilate=True)
    ijk = ti._morton3d_invert(torch.arange(8 ** 3))
    dist = (ijk - torch.tensor([3, 4, 5])).abs().sum(-1)
    assert torch.equal(g.density_grid > 0, dist <= 1)


def test_mark_untrained_before_first_update_keeps_seen_cells_occupied():
    g = cuda_ext.OccupancyGrid(AABB, resolution=16)
    pose = torch.eye(4)
    pose[:3, 3] = torch.tensor([0.0, 0.0, -3.0])
    g.mark_untrained(pose[None], torch.tensor([300.0, 300.0, 64.0, 64.0]), 128, 128)
    seen = (g.density_grid >= 0).numpy()
    assert 0.1 < seen.mean() < 0.95
    assert np.array_equal(g.bitfield.numpy(), np.packbits(seen, bitorder="little"))


def test_mark_untrained_hides_cells_behind_camera():
    g = cuda_ext.OccupancyGrid(AABB, resolution=16)
    g.update(lambda x: torch.full((x.shape[0],), 20.0), jitter=False, dilate=False)
    pose = torch.eye(4)
    pose[:3, 3] = torch.tensor([0.0, 0.0, -3.0])  # at z=-3 looking along +z (OpenCV)
    g.mark_untrained(pose[None], torch.tensor([300.0, 300.0, 64.0, 64.0]), 128, 128)
    c = g.cell_centers(torch.arange(16 ** 3))
    cam = c - pose[:3, 3]
    u = 300 * cam[:, 0] / cam[:, 2] + 64
    v = 300 * cam[:, 1] / cam[:, 2] + 64
    clearly_in = (u >= 0) & (u <= 128) & (v >= 0) & (v <= 128)
    clearly_out = (u < -30) | (u > 158) | (v < -30) | (v > 158)  # beyond the half-diagonal margin (< 15 px)
    hidden = g.density_grid < 0
    assert clearly_in.any() and clearly_out.any()
    assert not hidden[clearly_in].any() and hidden[clearly_out].all()
    g.update(lambda x: torch.full((x.shape[0],), 50.0), jitter=False, dilate=False)
    assert torch.equal(g.density_grid < 0, hidden)  # stays untrained


# ---------------------------------------------------------------------------------------------------- march
def _setup(n, res, frac, seed):
    o, d = random_rays(n, gen(seed))
    bitfield = random_bitfield(res, frac, gen(seed + 1))
    nears, fars = ti._near_far_from_aabb(o, d, AABB_T, 0.05)
    return o, d, bitfield, nears, fars


def _assert_rays_match(ours, ref, min_share=0.99):
    """Per ray: same number of samples and the same t's. Float32 lattice vs float64 lattice may disagree for
    a sample within rounding of a cell face, so a tiny share of rays may differ (never more than one sample)."""
    same = 0
    for a, b in zip(ours, ref):
        if len(a) == len(b) and np.allclose(a, b, atol=1e-4):
            same += 1
        else:
            assert abs(len(a) - len(b)) <= 1
    assert same >= min_share * len(ref), f"{len(ref) - same} of {len(ref)} rays differ"


@pytest.mark.parametrize("res,frac,max_steps", [(16, 0.3, 16), (32, 0.12, 1024), (8, 1.0, 5)])
def test_march_rays_train_matches_naive(res, frac, max_steps):
    o, d, bitfield, nears, fars = _setup(400, res, frac, seed=10 + res)
    dt = 2 * math.sqrt(3) / res * 0.7
    xyzs, dirs, deltas, rays = ti._march_rays_train(o, d, bitfield, AABB_T, nears, fars, resolution=res, dt=dt,
                                                    max_steps=max_steps)
    ref = march_naive(o, d, bitfield, AABB, nears, fars, res, dt, max_steps)
    assert sum(map(len, ref)) > 200
    _assert_rays_match(per_ray_samples(deltas, rays), ref)
    # packed layout: offsets tile [0, M), xyz = o + t d, dirs = d, dt column
    assert rays.dtype == torch.int32 and int(rays[:, 2].sum()) == xyzs.shape[0]
    assert torch.all(rays[:, 2] <= max_steps)
    ray_of = torch.repeat_interleave(rays[:, 0].long(), rays[:, 2].long())
    torch.testing.assert_close(xyzs, o[ray_of] + deltas[:, 1:2] * d[ray_of])
    torch.testing.assert_close(dirs, d[ray_of])
    assert torch.all(deltas[:, 0] == torch.tensor(dt, dtype=torch.float32))


def test_march_rays_train_perturb_uses_generator():
    o, d, bitfield, nears, fars = _setup(200, 16, 0.3, seed=30)
    dt = 2 * math.sqrt(3) / 16
    kw = dict(resolution=16, dt=dt, max_steps=32, perturb=True)
    a = ti._march_rays_train(o, d, bitfield, AABB_T, nears, fars, generator=gen(5), **kw)
    b = ti._march_rays_train(o, d, bitfield, AABB_T, nears, fars, generator=gen(5), **kw)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    noise = torch.rand(200, generator=gen(5))
    ref = march_naive(o, d, bitfield, AABB, nears, fars, 16, dt, 32, t0=nears + noise * dt)
    _assert_rays_match(per_ray_samples(a[2], a[3]), ref)


def test_march_rays_inference_blocks_equal_training_march():
    o, d, bitfield, nears, fars = _setup(300, 16, 0.25, seed=40)
    dt, max_steps = 2 * math.sqrt(3) / 16, 12
    _, _, deltas, rays = ti._march_rays_train(o, d, bitfield, AABB_T, nears, fars, resolution=16, dt=dt,
                                              max_steps=max_steps)
    train = per_ray_samples(deltas, rays)
    rays_t = nears.clone()
    rays_n = torch.zeros(300, dtype=torch.int32)
    alive = torch.nonzero(torch.isfinite(rays_t)).squeeze(1).int()
    got = [[] for _ in range(300)]
    for _ in range(max_steps + 1):
        if alive.numel() == 0:
            break
        xyzs, dirs, dl = ti._march_rays(o, d, rays_t, rays_n, fars, alive, bitfield, AABB_T, resolution=16, dt=dt,
                                        n_step=3, max_steps=max_steps)
        assert xyzs.shape == (alive.numel(), 3, 3)
        for row, r in enumerate(alive.tolist()):
            got[r] += [t for dtv, t in dl[row].tolist() if dtv > 0]
        alive = alive[torch.isfinite(rays_t[alive.long()])]
    assert alive.numel() == 0
    assert got == train


# ---------------------------------------------------------------------------------------------------- composite
def _packed_inputs(counts, gen_, k=None, dtype=torch.float32, shuffle=False):
    m = int(counts.sum())
    sig = torch.rand(m, generator=gen_, dtype=dtype) * 40 + 0.1
    rgb = torch.rand(m, 3, generator=gen_, dtype=dtype)
    amb = torch.rand(m, generator=gen_, dtype=dtype) * 2 - 1 if k is None else torch.rand(m, k, generator=gen_, dtype=dtype)
    dl = torch.stack([torch.rand(m, generator=gen_, dtype=dtype) * 0.05 + 0.01,
                      torch.rand(m, generator=gen_, dtype=dtype) * 3], -1)
    n = counts.numel()
    order = torch.randperm(n, generator=gen_) if shuffle else torch.arange(n)
    # lay the rays out in `order` inside the packed buffer: offsets follow that order
    offs = torch.zeros(n, dtype=torch.long)
    offs[order] = torch.cumsum(counts[order], 0) - counts[order]
    rays = torch.stack([torch.arange(n), offs, counts], -1).int()
    return sig, rgb, amb, dl, rays


def _dense(v, rays, width):
    out = torch.zeros((rays.shape[0], width) + v.shape[1:], dtype=v.dtype)
    for i, off, cnt in rays.long().tolist():
        out[i, :cnt] = v[off:off + cnt]
    return out


@pytest.mark.parametrize("k,T_thresh,shuffle", [(None, 1e-4, False), (3, 1e-2, True), (None, 0.0, True)])
def test_composite_rays_train_matches_naive_forward_and_grad(k, T_thresh, shuffle):
    counts = torch.randint(0, 20, (150,), generator=gen(50))
    sig, rgb, amb, dl, rays = _packed_inputs(counts, gen(51), k=k, shuffle=shuffle)
    for t in (sig, rgb, amb):
        t.requires_grad_(True)
    out = ti._composite_rays_train(sig, rgb, amb, dl, rays, T_thresh)
    w = int(counts.max())
    amb2 = amb if k is not None else amb[:, None]
    dense = [_dense(v, rays, w) for v in (sig, rgb, amb2, dl)]
    ref = composite_naive(*dense, rays[:, 2].long(), T_thresh)
    if k is None:
        ref = (ref[0], ref[1][:, 0], ref[2], ref[3])
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if T_thresh == 1e-4:  # early termination actually happens on some rays
        assert (ref[0] > 1 - 1e-4).any()
    gy = [torch.randn(v.shape, generator=gen(52)) for v in out]
    g_ours = torch.autograd.grad(out, (sig, rgb, amb), gy)
    g_ref = torch.autograd.grad(ref, (sig, rgb, amb), gy)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.gradcheck
def test_composite_rays_train_gradcheck_float64():
    counts = torch.tensor([3, 0, 5, 1, 4])
    sig, rgb, amb, dl, rays = _packed_inputs(counts, gen(60), k=2, dtype=torch.float64, shuffle=True)
    sig, rgb, amb = (t.requires_grad_(True) for t in (sig, rgb, amb))
    assert torch.autograd.gradcheck(lambda s, c, a: ti._composite_rays_train(s, c, a, dl, rays, 0.0),
                                    (sig, rgb, amb))


def _inference_scene(n: int, seed: int):
    """Rays through a 16^3 grid 30% occupied, that grid as an OccupancyGrid, and a per-sample analytic field."""
    o, d, bitfield, nears, fars = _setup(n, 16, 0.3, seed=seed)
    grid = cuda_ext.OccupancyGrid(AABB, resolution=16)
    grid.bitfield.copy_(bitfield)

    def field(x, dirs):
        return 6.0 * (1.2 + torch.sin(3 * x).sum(-1)), torch.sigmoid(x * 2 + dirs)

    return o, d, bitfield, nears, fars, grid, field


def test_render_inference_equals_training_composite():
    o, d, bitfield, nears, fars, grid, field = _inference_scene(250, seed=70)
    dt, max_steps, T = 2 * math.sqrt(3) / 16, 10, 1e-3
    xyzs, dirs, deltas, rays = ti._march_rays_train(o, d, bitfield, AABB_T, nears, fars, resolution=16, dt=dt,
                                                    max_steps=max_steps)
    s, c = field(xyzs, dirs)
    ws, _, depth, img = ti._composite_rays_train(s, c, torch.zeros_like(s), deltas, rays, T)
    with cuda_ext.backend("torch"):
        ws2, depth2, img2 = cuda_ext.render_inference(field, o, d, grid, dt=dt, max_steps=max_steps, T_thresh=T)
    assert (ws > 0.5).sum() > 20
    torch.testing.assert_close(ws2, ws, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(depth2, depth, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(img2, img, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("every", [2, 3, 100])
def test_render_inference_lazy_compaction_same_result(every):
    """Finished rays retired in place between compactions: the same per-ray results as compacting every pass (the
    field is per sample, so bit for bit), fewer compactions, more padded samples."""
    o, d, _, _, _, grid, field = _inference_scene(300, seed=71)
    dt, max_steps, T = 2 * math.sqrt(3) / 16, 12, 1e-3
    out, stats = {}, {}
    for k in (1, every):
        stats[k] = {}
        with cuda_ext.backend("torch"):
            out[k] = cuda_ext.render_inference(field, o, d, grid, dt=dt, max_steps=max_steps, T_thresh=T,
                                               max_step_per_pass=4, stats=stats[k], compact_every=k)
    assert (out[1][0] > 0.5).sum() > 20 and (out[1][0] < 0.1).sum() > 20  # opaque and see-through rays
    for a, b in zip(out[1], out[every]):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="compact_every"):
        cuda_ext.render_inference(field, o, d, grid, dt=dt, max_steps=max_steps, compact_every=0)
    assert stats[1]["compactions"] == stats[1]["passes"]
    assert stats[every]["compactions"] == stats[every]["passes"] // every < stats[1]["compactions"]
    assert stats[every]["samples"] > stats[1]["samples"]


# ---------------------------------------------------------------------------------------------------- encoder
@pytest.mark.parametrize("dim,gridtype,log2", [(3, "tiled", 10), (3, "hash", 10), (2, "hash", 8), (2, "tiled", 12)])
def test_grid_encoder_matches_naive(dim, gridtype, log2):
    enc = cuda_ext.GridEncoder(dim, num_levels=5, level_dim=2, base_resolution=4, desired_resolution=64,
                               log2_hashmap_size=log2, gridtype=gridtype, bound=1.5)
    with torch.no_grad():
        enc.embeddings.uniform_(-1, 1, generator=gen(80))
    if gridtype == "hash":
        assert any(enc.hashed) and not all(enc.hashed)
    else:
        assert not any(enc.hashed) and any((r + 1) ** dim > 2 ** log2 for r in enc.resolutions)  # some wrap
    x = (torch.rand(40, dim, generator=gen(81)) * 2 - 1) * 1.5
    x[0] = 1.6  # outside: zeros
    with cuda_ext.backend("torch"):
        y = enc(x)
    ref = grid_encode_naive(x, enc.embeddings.detach(), enc.offsets, enc.resolutions, enc.scales, enc.hashed, 1.5)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    assert torch.all(y[0] == 0) and y[1:].abs().min() >= 0 and y[1:].abs().max() > 0.1


def test_grid_encoder_dense_level_matches_grid_sample():
    enc = cuda_ext.GridEncoder(3, num_levels=1, level_dim=3, base_resolution=9, log2_hashmap_size=14)
    res = enc.resolutions[0]
    with torch.no_grad():
        enc.embeddings.normal_(generator=gen(90))
    x = torch.rand(64, 3, generator=gen(91)) * 2 - 1
    with cuda_ext.backend("torch"):
        y = enc(x)
    n = res + 1
    vol = enc.embeddings.detach()[: n ** 3].reshape(n, n, n, 3).permute(3, 0, 1, 2)  # [C, z, y, x]
    p = (x + 1) / 2 * enc.scales[0] + 0.5
    coords = p / res * 2 - 1
    ref = torch.nn.functional.grid_sample(vol[None], coords[None, None, None], align_corners=True)[0, :, 0, 0].T
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)


def test_grid_encoder_geneface_table_sizes():
    enc = cuda_ext.GridEncoder(3, num_levels=16, level_dim=2, base_resolution=16, desired_resolution=2048,
                               log2_hashmap_size=16, gridtype="tiled")
    assert enc.offsets[-1] == 903480 and enc.embeddings.numel() == 1806960
    assert abs(enc.per_level_scale - 2 ** (7 / 15)) < 1e-9
    half = cuda_ext.GridEncoder(2, storage_dtype="float16")
    assert half.embeddings.dtype == torch.float16
    with cuda_ext.backend("torch"):
        assert half(torch.rand(5, 2) - 0.5).dtype == torch.float32


@pytest.mark.gradcheck
@pytest.mark.parametrize("gridtype", ["tiled", "hash"])
def test_grid_encode_gradcheck_float64(gridtype):
    enc = cuda_ext.GridEncoder(3, num_levels=2, level_dim=2, base_resolution=2, desired_resolution=6,
                               log2_hashmap_size=5, gridtype=gridtype)
    assert gridtype == "tiled" or any(enc.hashed)
    emb = torch.rand(enc.offsets[-1], 2, generator=gen(100), dtype=torch.float64, requires_grad=True)
    x = (torch.rand(4, 3, generator=gen(101), dtype=torch.float64) * 1.8 - 0.9).requires_grad_(True)
    meta = (enc.offsets, enc.resolutions, enc.scales, enc.hashed, 1.0)
    assert torch.autograd.gradcheck(lambda xx, ee: ti._grid_encode(xx, ee, *meta), (x, emb), eps=1e-6, atol=1e-5)


def test_backend_selection_and_errors():
    assert cuda_ext.get_backend() == "auto"
    with pytest.raises(ValueError, match="unknown"):
        cuda_ext.set_backend("magic")
    with cuda_ext.backend("cuda"):
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            cuda_ext.near_far_from_aabb(torch.zeros(1, 3), torch.ones(1, 3), AABB_T)
    assert cuda_ext.get_backend() == "auto"
    try:
        import tinycudann  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="tinycudann"):
            cuda_ext.GridEncoder(3, backend="tinycudann")
    with pytest.raises(ValueError, match="power of two"):
        cuda_ext.OccupancyGrid(AABB, resolution=100)


def test_import_does_not_build():
    import subprocess
    import sys

    code = ("import cuda_ext, cuda_ext._backend as b; assert b._C is None and b.loaded_from() is None; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_prebuilt_module_needs_matching_meta(tmp_path, monkeypatch):
    from cuda_ext import _backend

    so = tmp_path / "talkfield_cuda_ext.so"
    so.write_bytes(b"not an elf")
    monkeypatch.setenv("TALKFIELD_CUDA_EXT_SO", str(so))
    meta = so.with_suffix(".meta.json")
    meta.write_text('{"torch": "0.0.0", "sources": "x"}')
    notes = []
    assert _backend._try_prebuilt(notes) == (None, None)
    assert "built for torch 0.0.0" in notes[0]
    meta.write_text(__import__("json").dumps(_backend._meta()))  # matching meta: it is imported (and fails here)
    notes = []
    assert _backend._try_prebuilt(notes) == (None, None)
    assert str(so) in notes[0] and "built for" not in notes[0]
