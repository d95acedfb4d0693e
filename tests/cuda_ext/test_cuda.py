"""GPU tests: every CUDA op against its PyTorch twin (run on the same CUDA tensors), forward and gradients,
compared per ray; float64 gradcheck of the kernels; a race check. Run with ``pytest -m gpu tests/cuda_ext``."""

import math

import pytest
import torch

import cuda_ext
from cuda_ext import _torch_impl as ti
from tests.cuda_ext._naive import AABB, per_ray_samples, random_bitfield, random_rays

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DEV = "cuda"
AABB_T = torch.tensor(AABB)


def gen(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


@pytest.fixture(scope="module", autouse=True)
def _built():
    cuda_ext._backend.load()  # builds or loads once; a failure here is the real error
    yield


def _setup(n, res, frac, seed):
    o, d = random_rays(n, gen(seed), device=DEV)
    bits = random_bitfield(res, frac, gen(seed + 1), device=DEV)
    nears, fars = ti._near_far_from_aabb(o, d, AABB_T.to(DEV), 0.05)
    return o, d, bits, nears, fars


def test_near_far_cuda_vs_twin():
    o, d = random_rays(5000, gen(0), device=DEV)
    d = d * (0.5 + torch.rand(5000, 1, device=DEV))
    d[:10, 0] = 0
    with cuda_ext.backend("cuda"):
        n1, f1 = cuda_ext.near_far_from_aabb(o, d, AABB_T, 0.05)
    n2, f2 = ti._near_far_from_aabb(o, d, AABB_T.to(DEV), 0.05)
    assert torch.equal(torch.isfinite(n1), torch.isfinite(n2)) and torch.isfinite(n1).float().mean() > 0.5
    torch.testing.assert_close(n1, n2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(f1, f2, rtol=1e-6, atol=1e-6)


def test_packbits_and_dilation_cuda_vs_twin():
    grid = torch.rand(64 ** 3, device=DEV) * 10
    th = torch.tensor(6.5, device=DEV)
    with cuda_ext.backend("cuda"):
        b1 = cuda_ext.packbits(grid, th)
        d1 = cuda_ext.morton3d_dilation(grid)
    assert torch.equal(b1, ti._packbits(grid, th))
    assert torch.equal(d1, ti._morton3d_dilation(grid))


def test_occupancy_update_cuda_vs_cpu():
    def density(x):
        return 40 * torch.exp(-((x / 0.5) ** 2).sum(-1)) * (1 + torch.sin(7 * x[:, 0]))

    g_cpu = cuda_ext.OccupancyGrid(AABB, resolution=32)
    g_gpu = cuda_ext.OccupancyGrid(AABB, resolution=32).to(DEV)
    for g in (g_cpu, g_gpu):
        g.update(density, jitter=False, dilate=True)
    torch.testing.assert_close(g_gpu.density_grid.cpu(), g_cpu.density_grid, rtol=1e-5, atol=1e-5)
    mism = (g_gpu.bitfield.cpu() != g_cpu.bitfield).sum().item()
    assert mism <= 2  # only cells within rounding of the threshold may differ


@pytest.mark.parametrize("res,frac,max_steps,perturb", [(128, 0.12, 1024, False), (128, 0.3, 16, True),
                                                        (32, 0.5, 16, True)])
def test_march_rays_train_cuda_vs_twin(res, frac, max_steps, perturb):
    o, d, bits, nears, fars = _setup(4096, res, frac, seed=res + max_steps)
    dt = 2 * math.sqrt(3) / res
    kw = dict(resolution=res, dt=dt, max_steps=max_steps, perturb=perturb)
    with cuda_ext.backend("cuda"):
        x1, dir1, dl1, r1 = cuda_ext.march_rays_train(o, d, bits, AABB_T, nears, fars, generator=gen(3, DEV), **kw)
    x2, dir2, dl2, r2 = ti._march_rays_train(o, d, bits, AABB_T.to(DEV), nears, fars, generator=gen(3, DEV), **kw)
    assert x1.shape[0] > 4096 and x1.shape == x2.shape
    # per ray: same counts, same t's (the kernel mirrors the twin's float32 arithmetic op for op)
    s1, s2 = per_ray_samples(dl1, r1), per_ray_samples(dl2, r2)
    same = sum(a == b for a, b in zip(s1, s2))
    assert same == len(s1), f"{len(s1) - same} rays differ"
    ray_of = torch.repeat_interleave(r1[:, 0].long(), r1[:, 2].long())
    torch.testing.assert_close(x1, o[ray_of] + dl1[:, 1:2] * d[ray_of], rtol=0, atol=1e-6)
    torch.testing.assert_close(dir1, d[ray_of])
    assert torch.all(dl1[:, 0] == torch.tensor(dt, dtype=torch.float32))


def test_march_rays_train_buffer_regrows():
    o, d, bits, nears, fars = _setup(2048, 64, 0.3, seed=5)
    kw = dict(resolution=64, dt=2 * math.sqrt(3) / 64, max_steps=64)
    with cuda_ext.backend("cuda"):
        full = cuda_ext.march_rays_train(o, d, bits, AABB_T, nears, fars, **kw)
        small = cuda_ext.march_rays_train(o, d, bits, AABB_T, nears, fars, buffer_size=128, **kw)
        big = cuda_ext.march_rays_train(o, d, bits, AABB_T, nears, fars, buffer_size=10 ** 7, **kw)
    for out in (small, big):
        assert all(torch.equal(a, b) for a, b in zip(out, full))
    assert full[0].shape[0] > 128


def _composite_inputs(counts, k, dtype=torch.float32, seed=0):
    g = gen(seed, DEV)
    m = int(counts.sum())
    sig = torch.rand(m, generator=g, device=DEV, dtype=dtype) * 40 + 0.1
    rgb = torch.rand(m, 3, generator=g, device=DEV, dtype=dtype)
    amb = torch.rand(m, k, generator=g, device=DEV, dtype=dtype) * 2 - 1
    dl = torch.stack([torch.rand(m, generator=g, device=DEV, dtype=dtype) * 0.05 + 0.01,
                      torch.rand(m, generator=g, device=DEV, dtype=dtype) * 3], -1)
    n = counts.numel()
    order = torch.randperm(n, generator=g, device=DEV)  # rays laid out in a shuffled order
    offs = torch.zeros(n, dtype=torch.long, device=DEV)
    offs[order] = torch.cumsum(counts[order], 0) - counts[order]
    rays = torch.stack([torch.arange(n, device=DEV), offs, counts], -1).int()
    return sig, rgb, amb, dl, rays


@pytest.mark.parametrize("k,T_thresh", [(1, 1e-4), (3, 1e-2), (1, 0.0)])
def test_composite_rays_train_cuda_vs_twin(k, T_thresh):
    counts = torch.randint(0, 40, (3000,), device=DEV)
    sig, rgb, amb, dl, rays = _composite_inputs(counts, k, seed=k)
    amb_in = amb[:, 0] if k == 1 else amb
    outs, grads = [], []
    for name in ("cuda", "torch"):
        s, c, a = (t.clone().requires_grad_(True) for t in (sig, rgb, amb_in))
        with cuda_ext.backend(name):
            out = cuda_ext.composite_rays_train(s, c, a, dl, rays, T_thresh)
        gy = [torch.randn(v.shape, generator=gen(9, DEV), device=DEV) for v in out]
        grads.append(torch.autograd.grad(out, (s, c, a), gy))
        outs.append(out)
    for a, b in zip(outs[0], outs[1]):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads[0], grads[1]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    if T_thresh == 1e-4:
        assert (outs[0][0] > 1 - 1e-4).any()


@pytest.mark.gradcheck
def test_composite_rays_train_kernel_gradcheck_float64():
    counts = torch.tensor([4, 0, 6, 1, 3], device=DEV)
    sig, rgb, amb, dl, rays = _composite_inputs(counts, 2, dtype=torch.float64, seed=11)
    sig, rgb, amb = (t.requires_grad_(True) for t in (sig, rgb, amb))
    with cuda_ext.backend("cuda"):
        assert torch.autograd.gradcheck(lambda s, c, a: cuda_ext.composite_rays_train(s, c, a, dl, rays, 0.0),
                                        (sig, rgb, amb))


def test_inference_cuda_vs_twin_and_vs_training():
    o, d, bits, nears, fars = _setup(8192, 64, 0.2, seed=21)
    grid = cuda_ext.OccupancyGrid(AABB, resolution=64).to(DEV)
    grid.bitfield.copy_(bits)
    dt, max_steps, T = 2 * math.sqrt(3) / 64, 16, 1e-3

    def field(x, dirs):
        return 8.0 * (1.2 + torch.sin(3 * x).sum(-1)), torch.sigmoid(x * 2 + dirs)

    res = {}
    for name in ("cuda", "torch"):
        with cuda_ext.backend(name):
            res[name] = cuda_ext.render_inference(field, o, d, grid, dt=dt, max_steps=max_steps, T_thresh=T)
    for a, b in zip(res["cuda"], res["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with cuda_ext.backend("cuda"):
        xyzs, dirs, deltas, rays = cuda_ext.march_rays_train(o, d, bits, AABB_T, nears, fars, resolution=64, dt=dt,
                                                             max_steps=max_steps)
        s, c = field(xyzs, dirs)
        ws, _, depth, img = cuda_ext.composite_rays_train(s, c, torch.zeros_like(s), deltas, rays, T)
    assert (ws > 0.5).sum() > 500
    for a, b in zip(res["cuda"], (ws, depth, img)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.fixture(params=["agg", "aggpair", "lane", "lanepair", "agg/grouped", "aggpair/grouped", "lane/grouped",
                        "lanepair/grouped"])
def bwd_variant(request, monkeypatch):
    """The grid-encoder backward kernels (point-major with aggregated atomics, with and without the 16-byte atomics
    of aligned x-neighbour row pairs; level-fastest, with and without them), each with all levels in one launch and
    with the smallest level groups (one launch per sector-sized chunk of levels: the schedule large tables get),
    forward included."""
    kernel, _, grouped = request.param.partition("/")
    monkeypatch.setenv("TALKFIELD_GRID_BWD", kernel)
    monkeypatch.setenv("TALKFIELD_GRID_GROUP_MB", "1e-9" if grouped else "0")
    return request.param


@pytest.mark.parametrize("dim,gridtype,levels,storage,clustered", [
    (3, "tiled", 16, torch.float32, False), (3, "hash", 16, torch.float32, False), (2, "hash", 8, torch.float32, False),
    (3, "hash", 6, torch.float32, False), (3, "tiled", 16, torch.float16, False), (2, "tiled", 4, torch.bfloat16, False),
    (3, "tiled", 16, torch.float32, True), (2, "hash", 5, torch.float32, True)])
def test_grid_encoder_cuda_vs_twin(dim, gridtype, levels, storage, clustered, bwd_variant):
    enc = cuda_ext.GridEncoder(dim, num_levels=levels, level_dim=2, base_resolution=16, desired_resolution=512,
                               log2_hashmap_size=14, gridtype=gridtype, storage_dtype=storage).to(DEV)
    with torch.no_grad():
        enc.embeddings.uniform_(-1, 1)
    x = (torch.rand(20000, dim, device=DEV) * 2.1 - 1.05)  # a few outside the box
    if clustered:  # many points per cell: lanes of a warp share table rows (the aggregation path)
        x = 0.3 + torch.randn(20000, dim, device=DEV) * 0.02
    outs, grads = [], []
    for name in ("cuda", "torch"):
        xx = x.clone().requires_grad_(True)
        enc.zero_grad()
        with cuda_ext.backend(name):
            y = enc(xx)
        gy = torch.randn(y.shape, generator=gen(4, DEV), device=DEV)
        (y * gy).sum().backward()
        outs.append(y)
        grads.append((xx.grad, enc.embeddings.grad.float()))
    tol = dict(rtol=1e-4, atol=1e-4) if storage == torch.float32 else dict(rtol=1e-2, atol=2e-2)
    torch.testing.assert_close(outs[0], outs[1], **tol)
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-3, atol=1e-3)
    if storage == torch.float32:
        torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-3, atol=1e-3)
    else:  # the twin accumulates in the storage dtype, the kernel in float32: compare loosely
        rel = (grads[0][1] - grads[1][1]).norm() / grads[1][1].norm()
        assert rel < 2e-2


@pytest.mark.gradcheck
@pytest.mark.parametrize("gridtype,levels", [("tiled", 3), ("hash", 4)])
def test_grid_encode_kernel_gradcheck_float64(gridtype, levels, bwd_variant):
    enc = cuda_ext.GridEncoder(3, num_levels=levels, level_dim=2, base_resolution=3, desired_resolution=12,
                               log2_hashmap_size=6, gridtype=gridtype)
    emb = torch.rand(enc.offsets[-1], 2, device=DEV, dtype=torch.float64, requires_grad=True)
    x = (torch.rand(8, 3, device=DEV, dtype=torch.float64) * 1.8 - 0.9).requires_grad_(True)
    meta = (enc.offsets, enc.resolutions, enc.scales, enc.hashed, 1.0)
    with cuda_ext.backend("cuda"):
        assert torch.autograd.gradcheck(lambda xx, ee: cuda_ext.grid_encode(xx, ee, *meta), (x, emb), eps=1e-6,
                                        atol=1e-5)


def test_race_same_inputs_20_runs_identical():
    o, d, bits, nears, fars = _setup(16384, 128, 0.15, seed=31)
    enc = cuda_ext.GridEncoder(3, log2_hashmap_size=16).to(DEV)
    ref = None
    with cuda_ext.backend("cuda"):
        for _ in range(20):
            xyzs, dirs, deltas, rays = cuda_ext.march_rays_train(o, d, bits, AABB_T, nears, fars, resolution=128,
                                                                 dt=2 * math.sqrt(3) / 128, max_steps=1024,
                                                                 perturb=True, generator=gen(1, DEV))
            feats = enc(xyzs.clamp(-1, 1))
            sig = torch.nn.functional.softplus(feats[:, 0] * 100 + 5)
            out = cuda_ext.composite_rays_train(sig, torch.sigmoid(feats[:, 1:4]), feats[:, 4], deltas, rays)
            cur = (per_ray_samples(deltas, rays), [v.cpu() for v in out])
            if ref is None:
                ref = cur
            else:
                assert cur[0] == ref[0]
                assert all(torch.equal(a, b) for a, b in zip(cur[1], ref[1]))


def test_custom_ops_opcheck_cuda():
    """The kernel path of the torch.library custom ops: schema, fake tensors, autograd registration, AOT dispatch."""
    from cuda_ext import _ops

    enc = cuda_ext.GridEncoder(3, num_levels=4, level_dim=2, base_resolution=4, desired_resolution=64,
                               log2_hashmap_size=10, gridtype="hash")
    meta = (enc.offsets, enc.resolutions, [float(s) for s in enc.scales], enc.hashed, 1.0, "cuda")
    for dtype in (torch.float32, torch.float64):
        emb = torch.rand(enc.offsets[-1], 2, device=DEV, dtype=dtype, requires_grad=True)
        x = (torch.rand(500, 3, device=DEV, dtype=dtype) * 2.1 - 1.05).requires_grad_(True)
        torch.library.opcheck(_ops.grid_encode, (x, emb, *meta))
    counts = torch.randint(0, 20, (300,), device=DEV)
    sig, rgb, amb, dl, rays = _composite_inputs(counts, 3, seed=7)
    for t in (sig, rgb, amb):
        t.requires_grad_(True)
    torch.library.opcheck(_ops.composite_rays_train, (sig, rgb, amb, dl, rays, 1e-3, "cuda"))


def test_head_field_compiled_reduce_overhead_matches_eager():
    """HeadField fwd+bwd through the CUDA kernels, compiled fullgraph with CUDA graphs and bucketed sample counts,
    against eager (the grid backward's atomics reorder float sums: tolerances, not equality)."""
    from networks.nerf.compiled import BucketedCompile
    from networks.nerf.head_field import HeadField

    torch.manual_seed(0)
    field = HeadField(grid=dict(num_levels=8, desired_resolution=256, log2_hashmap_size=14),
                      ambient_grid=dict(num_levels=4, desired_resolution=64, log2_hashmap_size=12),
                      hidden=64, geo_dim=32, latent_max_frames=8).to(DEV)
    field.codes.set_num_train(5)
    with torch.no_grad():
        for g in (field.position_grid, field.ambient_grid):
            g.embeddings.uniform_(-0.5, 0.5)
    motion, eye = torch.randn(1, 3, 204, device=DEV), torch.rand(1, 3, device=DEV)

    def fn(xyz, dirs, code):
        cond, _ = field.encode_condition(motion, eye)
        sigma, rgb, ambient = field(xyz, dirs, cond, code)
        return sigma, rgb, ambient.float().abs().sum(-1)

    def step(f, m, seed):
        g = gen(seed, DEV)
        xyz = (torch.rand(m, 3, generator=g, device=DEV) * 2 - 1) * 1.2
        dirs = torch.nn.functional.normalize(torch.randn(m, 3, generator=g, device=DEV), dim=-1)
        field.zero_grad(set_to_none=True)
        sigma, rgb, amb = f(xyz, dirs, field.codes(torch.tensor([2], device=DEV)))
        loss = (sigma.tanh() * 0.3).sum() + (rgb * torch.arange(3.0, device=DEV)).sum() + 0.1 * amb.sum()
        loss.backward()
        return [t.detach().clone() for t in (sigma, rgb, amb)] + [p.grad.clone() for p in field.parameters()]

    compiled = BucketedCompile(fn, mode="reduce-overhead", bucket=4096)
    with cuda_ext.backend("cuda"):
        for m, seed in ((30000, 1), (31000, 2), (9000, 3), (30500, 4)):
            ref = step(fn, m, seed)
            for _ in range(2):  # recording run and a replay
                got = step(compiled, m, seed)
                for a, b in zip(ref[:3], got[:3]):  # outputs: elementwise
                    torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)
                # parameter gradients: a table row's gradient sums many samples whose terms the compiled kernels
                # round differently (Triton fusions vs cuBLAS, atomics in another order); rows where the terms
                # cancel differ elementwise by far more than their size (run 4 on the H100: 0.1% of the position
                # table's entries, max 1.7e-3 absolute), so each gradient is compared as a whole
                for a, b in zip(ref[3:], got[3:]):
                    err = (b - a).norm() / a.norm().clamp_min(1e-12)
                    assert err < 2e-3, f"relative gradient error {err:.2e} (shape {tuple(a.shape)})"
