"""CPU tests of the cuda_ext custom operators (cuda_ext._ops, twin path): torch.library.opcheck, the closed-form
backward twins against autograd through the forward twins, float64 gradcheck through the public wrappers, and
torch.compile(fullgraph=True) of a small HeadField forward + backward against eager."""

import pytest
import torch
import torch.nn.functional as F

import cuda_ext
from cuda_ext import _ops
from cuda_ext import _torch_impl as ti
from tests.cuda_ext.test_twins import _packed_inputs, gen


def _encoder(dim=3, gridtype="hash", log2=6, levels=3):
    return cuda_ext.GridEncoder(dim, num_levels=levels, level_dim=2, base_resolution=2, desired_resolution=12,
                                log2_hashmap_size=log2, gridtype=gridtype, bound=1.5)


def _meta(enc):
    return (enc.offsets, enc.resolutions, [float(s) for s in enc.scales], enc.hashed, enc.bound)


def _points(b, dim, seed, dtype=torch.float32):
    x = (torch.rand(b, dim, generator=gen(seed), dtype=dtype) * 2 - 1) * 1.6  # some points outside [-1.5, 1.5]
    assert ((x.abs() > 1.5).any(1)).any()
    return x


def test_ops_are_registered_under_talkfield():
    for name in ("grid_encode", "grid_encode_backward", "composite_rays_train", "composite_rays_train_backward"):
        assert hasattr(torch.ops.talkfield, name)


@pytest.mark.parametrize("dim,gridtype,dtype,storage,need_x", [
    (3, "hash", torch.float32, torch.float32, True), (3, "tiled", torch.float64, torch.float64, True),
    (2, "hash", torch.float32, torch.float16, False), (2, "tiled", torch.float32, torch.float32, False)])
def test_grid_encode_opcheck(dim, gridtype, dtype, storage, need_x):
    enc = _encoder(dim, gridtype)
    emb = torch.rand(enc.offsets[-1], 2, generator=gen(1), dtype=torch.float64).to(storage).requires_grad_(True)
    x = _points(30, dim, 2, dtype).requires_grad_(need_x)
    torch.library.opcheck(_ops.grid_encode, (x, emb, *_meta(enc), "auto"))
    gy = torch.randn(30, 6, generator=gen(3), dtype=dtype)
    torch.library.opcheck(_ops.grid_encode_backward, (gy, x.detach(), emb.detach(), *_meta(enc), need_x, "auto"))


@pytest.mark.parametrize("dim,gridtype,storage", [(3, "hash", torch.float32), (3, "tiled", torch.float32),
                                                  (2, "hash", torch.float32), (3, "hash", torch.bfloat16)])
def test_grid_encode_backward_twin_matches_autograd_of_forward_twin(dim, gridtype, storage):
    enc = _encoder(dim, gridtype, log2=8, levels=4)
    emb = (torch.rand(enc.offsets[-1], 2, generator=gen(10)) * 2 - 1).to(storage).requires_grad_(True)
    x = _points(500, dim, 11).requires_grad_(True)
    gy = torch.randn(500, 8, generator=gen(12))
    ref_x, ref_e = torch.autograd.grad(ti._grid_encode(x, emb, *_meta(enc)), (x, emb), gy)
    g_e, g_x = ti._grid_encode_backward(gy, x.detach(), emb.detach(), *_meta(enc), need_input_grad=True)
    assert g_e.dtype == storage and g_x.dtype == torch.float32 and ref_x.abs().max() > 0.1
    tol = dict(rtol=1e-4, atol=1e-5) if storage == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(g_x, ref_x, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_e.float(), ref_e.float(), **tol)
    # the public op (twin path) gives the same, with and without d/dx
    with cuda_ext.backend("torch"):
        y = cuda_ext.grid_encode(x, emb, *_meta(enc))
        op_x, op_e = torch.autograd.grad(y, (x, emb), gy)
        op_e2, = torch.autograd.grad(cuda_ext.grid_encode(x.detach(), emb, *_meta(enc)), (emb,), gy)
    torch.testing.assert_close(op_x, g_x)
    torch.testing.assert_close(op_e, g_e)
    torch.testing.assert_close(op_e2, g_e)


@pytest.mark.gradcheck
@pytest.mark.parametrize("gridtype", ["tiled", "hash"])
def test_grid_encode_op_gradcheck_float64(gridtype):
    enc = _encoder(3, gridtype, log2=5, levels=2)
    emb = torch.rand(enc.offsets[-1], 2, generator=gen(20), dtype=torch.float64, requires_grad=True)
    x = (torch.rand(5, 3, generator=gen(21), dtype=torch.float64) * 2.7 - 1.35).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda xx, ee: cuda_ext.grid_encode(xx, ee, *_meta(enc)), (x, emb),
                                    eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("k,T_thresh", [(1, 1e-4), (3, 1e-2), (2, 0.0)])
def test_composite_opcheck(k, T_thresh):
    counts = torch.randint(0, 9, (40,), generator=gen(30))
    sig, rgb, amb, dl, rays = _packed_inputs(counts, gen(31), k=k, shuffle=True)
    for t in (sig, rgb, amb):
        t.requires_grad_(True)
    torch.library.opcheck(_ops.composite_rays_train, (sig, rgb, amb, dl, rays, T_thresh, "auto"))
    ws, amb_sum, depth, image = _ops.composite_rays_train(sig, rgb, amb, dl, rays, T_thresh, "auto")
    g = [torch.randn(t.shape, generator=gen(32)) for t in (ws, amb_sum, depth, image)]
    torch.library.opcheck(_ops.composite_rays_train_backward,
                          (*g, sig.detach(), rgb.detach(), dl, rays, ws.detach(), depth.detach(), image.detach(),
                           T_thresh, "auto"))


@pytest.mark.parametrize("k,T_thresh,used", [(None, 1e-4, "all"), (3, 1e-2, "all"), (None, 0.0, "image")])
def test_composite_backward_twin_matches_autograd_of_forward_twin(k, T_thresh, used):
    counts = torch.randint(0, 25, (200,), generator=gen(40))
    sig, rgb, amb, dl, rays = _packed_inputs(counts, gen(41), k=k, shuffle=True)
    sig = sig * 3  # dense enough that rays terminate early
    ins = [t.clone().requires_grad_(True) for t in (sig, rgb, amb)]
    ref_out = ti._composite_rays_train(*ins, dl, rays, T_thresh)
    with cuda_ext.backend("torch"):
        out = cuda_ext.composite_rays_train(*ins, dl, rays, T_thresh)
    for a, b in zip(out, ref_out):
        torch.testing.assert_close(a, b)
    if T_thresh == 1e-4:
        assert (ref_out[0] > 1 - 1e-4).any()
    gy = [torch.randn(v.shape, generator=gen(42)) for v in out]
    pick = slice(None) if used == "all" else slice(3, 4)  # only the image: the other grads arrive as None
    ref = torch.autograd.grad(ref_out[pick], ins, gy[pick], allow_unused=True)
    got = torch.autograd.grad(out[pick], ins, gy[pick], allow_unused=True)
    for a, b in zip(got, ref):
        if b is None:
            assert a is None or torch.all(a == 0)
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.gradcheck
def test_composite_op_gradcheck_float64():
    counts = torch.tensor([3, 0, 5, 1, 4])
    sig, rgb, amb, dl, rays = _packed_inputs(counts, gen(60), k=2, dtype=torch.float64, shuffle=True)
    sig, rgb, amb = (t.requires_grad_(True) for t in (sig, rgb, amb))
    with cuda_ext.backend("torch"):
        assert torch.autograd.gradcheck(lambda s, c, a: cuda_ext.composite_rays_train(s, c, a, dl, rays, 0.0),
                                        (sig, rgb, amb))


# ------------------------------------------------------------------------------------------------ torch.compile
def _field_setup():
    from networks.nerf.head_field import HeadField

    torch.manual_seed(0)
    field = HeadField(grid=dict(num_levels=4, desired_resolution=64, log2_hashmap_size=12),
                      ambient_grid=dict(num_levels=2, desired_resolution=32, log2_hashmap_size=10),
                      hidden=32, geo_dim=16, motion_hidden=32, landmark_dim=16, latent_max_frames=8)
    field.codes.set_num_train(5)
    with torch.no_grad():
        for g in (field.position_grid, field.ambient_grid):
            g.embeddings.uniform_(-0.5, 0.5, generator=gen(70))
    motion, eye = torch.randn(1, 3, 204, generator=gen(71)), torch.rand(1, 3, generator=gen(72))

    def fn(xyz, dirs, code):
        cond, _ = field.encode_condition(motion, eye)
        sigma, rgb, ambient = field(xyz, dirs, cond, code)
        return sigma, rgb, ambient.float().abs().sum(-1)

    def step(f, m, seed):
        g = gen(seed)
        xyz = (torch.rand(m, 3, generator=g) * 2 - 1) * 1.2  # some samples outside the box
        dirs = F.normalize(torch.randn(m, 3, generator=g), dim=-1)
        field.zero_grad()
        sigma, rgb, amb = f(xyz, dirs, field.codes(torch.tensor([2])))
        loss = (sigma.tanh() * 0.3).sum() + (rgb * torch.arange(3.0)).sum() + 0.1 * amb.sum()
        loss.backward()
        grads = [p.grad.clone() for p in field.parameters() if p.grad is not None]
        assert len(grads) == len([p for p in field.parameters()])  # every parameter is trained through the ops
        return [sigma.detach(), rgb.detach(), amb.detach()] + grads

    return fn, step


def _compare_compiled(backend):
    from networks.nerf.compiled import BucketedCompile

    fn, step = _field_setup()
    compiled = BucketedCompile(fn, bucket=64, n_per_sample=2, backend=backend)
    with cuda_ext.backend("torch"):
        for m, seed in ((300, 1), (333, 2), (100, 3)):  # 320, 384, 128 rows after padding; one compilation
            ref, got = step(fn, m, seed), step(compiled, m, seed)
            assert got[0].shape == (m,)
            for a, b in zip(ref, got):
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_head_field_compiles_fullgraph_aot_eager():
    """Dynamo + AOTAutograd trace the field with the custom ops as one graph (fake impls, registered autograd)."""
    torch._dynamo.reset()
    _compare_compiled("aot_eager")


@pytest.mark.slow
def test_head_field_compiles_fullgraph_inductor():
    """The same with Inductor's generated code (~50 s of compilation on 2 CPU cores)."""
    torch._dynamo.reset()
    _compare_compiled("inductor")


def test_kernel_path_plumbing_with_a_stand_in_extension(monkeypatch):
    """The ops' kernel branch, run on CPU against a stand-in module with the signatures of csrc/ext.cpp (each entry
    computes with the twins): argument order, the None d/dx of grid_encode_backward, output shapes and dtypes."""
    from types import SimpleNamespace

    from cuda_ext import _backend, _wrapper

    calls = []

    def gf(x, emb, offsets, res, scales, hashed, bound):
        calls.append("grid_encode_forward")
        return ti._grid_encode(x, emb, offsets, res, scales, hashed, bound)

    def gb(gy, x, emb, offsets, res, scales, hashed, bound, need):
        calls.append("grid_encode_backward")
        assert gy.dtype == x.dtype and gy.is_contiguous()
        return list(ti._grid_encode_backward(gy, x, emb, offsets, res, scales, hashed, bound, need))

    def cf(sig, rgb, amb, dl, rays, T):
        calls.append("composite_rays_train_forward")
        return list(ti._composite_rays_train(sig, rgb, amb, dl, rays, T))

    def cb(g_ws, g_amb, g_depth, g_image, sig, rgb, dl, rays, ws, depth, image, T, k):
        calls.append("composite_rays_train_backward")
        assert k == g_amb.shape[1]
        return list(ti._composite_rays_train_backward(g_ws, g_amb, g_depth, g_image, sig, rgb, dl, rays, ws, depth,
                                                      image, T))

    fake = SimpleNamespace(grid_encode_forward=gf, grid_encode_backward=gb, composite_rays_train_forward=cf,
                           composite_rays_train_backward=cb)
    monkeypatch.setattr(_backend, "load", lambda: fake)
    monkeypatch.setattr(_wrapper, "_use_cuda", lambda t, name=None: True)
    enc = _encoder(3, "hash")
    emb = torch.rand(enc.offsets[-1], 2, generator=gen(90), requires_grad=True)
    x = _points(20, 3, 91)
    for need_x in (True, False):
        xx = x.clone().requires_grad_(need_x)
        y = cuda_ext.grid_encode(xx, emb, *_meta(enc))
        grads = torch.autograd.grad(y.square().sum(), (xx, emb) if need_x else (emb,))
        assert grads[-1].shape == emb.shape and (not need_x or grads[0].shape == x.shape)
    counts = torch.randint(0, 9, (30,), generator=gen(92))
    sig, rgb, amb, dl, rays = _packed_inputs(counts, gen(93), k=None, shuffle=True)
    sig.requires_grad_(True)
    ws, amb_sum, depth, image = cuda_ext.composite_rays_train(sig, rgb, amb, dl, rays, 1e-3)
    assert amb_sum.shape == (30,) and image.shape == (30, 3)
    (g_sig,) = torch.autograd.grad(image.sum() + ws.sum(), (sig,))
    assert g_sig.shape == sig.shape
    assert calls == ["grid_encode_forward", "grid_encode_backward"] * 2 + ["composite_rays_train_forward",
                                                                           "composite_rays_train_backward"]
