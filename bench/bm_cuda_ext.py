"""Benchmarks of cuda_ext on one GPU (never a test). Medians of CUDA-event timings after warm-up.

    python bench/bm_cuda_ext.py --out OUTDIR [--only a,b,c,d] [--compile field:default,...] [--bucket 16384]

(a) march + composite, forward + backward, on nerfacc's workload (65,536 rays, 128^3 grid with ~12% occupied
    cells, step 2*sqrt(3)/128, trivial field), beside nerfacc 0.5.3 when it imports;
(b) grid encoder: 2^20 3D points, 16 levels x 2 features, 2^19 entries per level (hash), forward + backward;
(c) a head-field training step: 65,536 rays (one 256x256 image) through a synthetic head occupancy, the field
    (networks.nerf.head_field.HeadField when it imports, else GridEncoders + MLPs of GeneFace++ sizes built
    here), compositing, loss, backward;
(d) the PyTorch twins on the same workloads (and torch.compile of the grid encoder twin), reported, not gated.

Part c also times compiled variants (--compile, default field:default,field:reduce-overhead,render:reduce-overhead):
the field ('field') or field + compositing + loss ('render') under torch.compile(fullgraph=True), possible because
the cuda_ext ops are custom operators; the sample count is padded to a multiple of --bucket (default 16384) so the
CUDA-graph mode replays one graph per bucket (networks/nerf/compiled.py).

Writes OUTDIR/bench.json and OUTDIR/results_rows.md (rows for bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cuda_ext  # noqa: E402
from cuda_ext import _torch_impl as ti  # noqa: E402

DEV = "cuda"
IMAGE_SIZE = 256  # part c renders one IMAGE_SIZE^2 image (65,536 rays)
DATE = "2026-11-25"
CMD = "python bench/bm_cuda_ext.py"
RESULTS: dict = {}
ROWS: list = []
ARGS = argparse.Namespace(compile="field:default,field:reduce-overhead,render:reduce-overhead", bucket=16384,
                          deadline_s=1e9, out=".")
T_START = time.time()


def flush():
    out = Path(ARGS.out)
    (out / "bench.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    (out / "results_rows.md").write_text("\n".join(ROWS) + "\n")


def timeit(fn, warmup: int = 10, iters: int = 50) -> dict:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for s, e in ev:
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    ms = sorted(s.elapsed_time(e) for s, e in ev)
    return {"median_ms": statistics.median(ms), "p10_ms": ms[len(ms) // 10], "p90_ms": ms[(9 * len(ms)) // 10],
            "iters": iters}


def record(key: str, value, figure: str | None = None, unit: str = "ms"):
    RESULTS[key] = value
    if figure is not None:
        v = value["median_ms"] if isinstance(value, dict) else value
        ROWS.append(f"| {figure} | {v:.4g} | {unit} | {torch.cuda.get_device_name()} | {DATE} | `{CMD}` |")
    print(f"{key}: {value}", flush=True)


def morton_to_dense(bitfield: torch.Tensor, res: int) -> torch.Tensor:
    """Morton bitfield [R^3/8] -> bool [R, R, R] indexed [x, y, z] (nerfacc's binaries layout)."""
    bits = ((bitfield.long()[:, None] >> torch.arange(8, device=bitfield.device)) & 1).reshape(-1).bool()
    ijk = cuda_ext.morton3d_invert(torch.arange(res ** 3, device=bitfield.device))
    dense = torch.zeros(res, res, res, dtype=torch.bool, device=bitfield.device)
    dense[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = bits
    return dense


# ================================================================================================ (a)
def nerfacc_workload(seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    n, res = 65536, 128
    o = torch.randn(n, 3, generator=g)
    o = o / o.norm(dim=1, keepdim=True) * 3.0
    target = (torch.rand(n, 3, generator=g) * 2 - 1) * 0.3
    d = F.normalize(target - o, dim=1)
    occ = (torch.rand(res ** 3, generator=g) < 0.12)
    bitfield = ti._packbits(occ.float(), 0.5)
    return o.to(DEV), d.to(DEV), bitfield.to(DEV), res


class TrivialField(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([[0.3], [-0.2], [0.1]]))
        self.b = torch.nn.Parameter(torch.tensor([0.2]))
        self.c = torch.nn.Parameter(torch.randn(3, 3, generator=torch.Generator().manual_seed(1)))

    def forward(self, x):
        return F.softplus(x @ self.w + self.b)[:, 0], torch.sigmoid(x @ self.c)


def bench_a():
    o, d, bitfield, res = nerfacc_workload()
    aabb = torch.tensor([-1.0, -1, -1, 1, 1, 1], device=DEV)
    dt = 2 * math.sqrt(3) / res
    field = TrivialField().to(DEV)
    gen = torch.Generator(device=DEV).manual_seed(0)
    record("a_occupied_fraction", float(((bitfield.long()[:, None] >> torch.arange(8, device=DEV)) & 1).float().mean()))

    def ours(backend="cuda", perturb=False):
        def step():
            with cuda_ext.backend(backend):
                nears, fars = cuda_ext.near_far_from_aabb(o, d, aabb, 0.0)
                xyzs, dirs, deltas, rays = cuda_ext.march_rays_train(o, d, bitfield, aabb, nears, fars, resolution=res,
                                                                     dt=dt, max_steps=1024, perturb=perturb,
                                                                     generator=gen)
                sig, rgb = field(xyzs)
                ws, _, depth, img = cuda_ext.composite_rays_train(sig, rgb, torch.zeros_like(sig), deltas, rays, 1e-4)
                (img.sum() + ws.sum()).backward()
            return xyzs.shape[0]
        return step

    m = ours()()
    record("a_ours_samples", m)
    record("a_ours_march_composite_fwd_bwd", timeit(ours()),
           figure="march+composite fwd+bwd, 65,536 rays, 128^3 grid 12% occupied, trivial field (ours, CUDA)")
    record("a_ours_perturb", timeit(ours(perturb=True)))
    # parts
    with cuda_ext.backend("cuda"):
        nears, fars = cuda_ext.near_far_from_aabb(o, d, aabb, 0.0)
        record("a_part_march_train", timeit(lambda: cuda_ext.march_rays_train(
            o, d, bitfield, aabb, nears, fars, resolution=res, dt=dt, max_steps=1024)))
        xyzs, dirs, deltas, rays = cuda_ext.march_rays_train(o, d, bitfield, aabb, nears, fars, resolution=res, dt=dt,
                                                             max_steps=1024)
        sig = torch.rand(xyzs.shape[0], device=DEV, requires_grad=True)
        rgb = torch.rand(xyzs.shape[0], 3, device=DEV, requires_grad=True)
        amb = torch.zeros_like(sig)

        def comp():
            ws, _, depth, img = cuda_ext.composite_rays_train(sig, rgb, amb, deltas, rays, 1e-4)
            (img.sum() + ws.sum()).backward()
        record("a_part_composite_fwd_bwd", timeit(comp))
    # (d) the twins on the same workload
    record("d_twin_march_composite_fwd_bwd", timeit(ours("torch"), warmup=2, iters=5),
           figure="march+composite fwd+bwd, nerfacc workload, PyTorch twins on GPU (not gated)")
    # nerfacc beside it
    try:
        so = os.environ.get("NERFACC_SO")
        if so and os.path.isfile(so) and "nerfacc.csrc" not in sys.modules:  # reuse a carried build of nerfacc
            loader = importlib.machinery.ExtensionFileLoader("nerfacc_cuda", so)
            mod = importlib.util.module_from_spec(importlib.util.spec_from_file_location("nerfacc_cuda", so, loader=loader))
            loader.exec_module(mod)
            sys.modules["nerfacc.csrc"] = mod
        import nerfacc
        record("a_nerfacc_version", nerfacc.__version__)
        est = nerfacc.OccGridEstimator(roi_aabb=[-1.0, -1, -1, 1, 1, 1], resolution=res, levels=1).to(DEV)
        est.binaries.copy_(morton_to_dense(bitfield, res)[None])

        def nerfacc_step():
            ray_indices, t_starts, t_ends = est.sampling(o, d, render_step_size=dt, near_plane=0.0,
                                                         early_stop_eps=1e-4, alpha_thre=0.0, stratified=False)

            def rgb_sigma_fn(ts, te, ri):
                x = o[ri] + d[ri] * ((ts + te) / 2.0)[:, None]
                s, c = field(x)
                return c, s
            rgb, acc, depth, _ = nerfacc.rendering(t_starts, t_ends, ray_indices, n_rays=o.shape[0],
                                                   rgb_sigma_fn=rgb_sigma_fn)
            (rgb.sum() + acc.sum()).backward()
            return t_starts.shape[0]

        mn = nerfacc_step()
        record("a_nerfacc_samples", mn)
        record("a_samples_ratio_ours_over_nerfacc", m / mn)
        record("a_nerfacc_march_composite_fwd_bwd", timeit(nerfacc_step),
               figure="march+composite fwd+bwd, same workload, nerfacc 0.5.3 (measured beside ours)")
    except Exception as exc:  # report, keep going
        record("a_nerfacc_error", f"{type(exc).__name__}: {exc}")
        traceback.print_exc()


# ================================================================================================ (b)
def bench_b():
    torch.manual_seed(0)
    enc = cuda_ext.GridEncoder(3, num_levels=16, level_dim=2, base_resolution=16, desired_resolution=2048,
                               log2_hashmap_size=19, gridtype="hash").to(DEV)
    x = torch.rand(2 ** 20, 3, device=DEV) * 2 - 1
    gy = torch.randn(2 ** 20, 32, device=DEV)
    record("b_table_entries", enc.offsets[-1])

    def fwd():
        with torch.no_grad(), cuda_ext.backend("cuda"):
            enc(x)

    def fwd_bwd(xin, backend="cuda"):
        def step():
            enc.embeddings.grad = None
            with cuda_ext.backend(backend):
                y = enc(xin)
            y.backward(gy)
        return step

    # schedules: all levels in one launch (TALKFIELD_GRID_GROUP_MB=0, the kernels before level groups) or level groups
    # of at most N MB of table (default 16), x the backward kernels; the figure rows below use the defaults
    for mb in ("0", "8", "16", "32"):
        os.environ["TALKFIELD_GRID_GROUP_MB"] = mb
        record(f"b_ours_fwd_groups{mb}mb", timeit(fwd))
        for kernel in ("agg", "aggpair", "lane", "lanepair"):
            os.environ["TALKFIELD_GRID_BWD"] = kernel
            record(f"b_ours_fwd_bwd_groups{mb}mb_{kernel}", timeit(fwd_bwd(x)))
    del os.environ["TALKFIELD_GRID_GROUP_MB"]
    for kernel in ("agg", "aggpair", "lane", "lanepair"):
        os.environ["TALKFIELD_GRID_BWD"] = kernel
        record(f"b_ours_fwd_bwd_with_input_grad_{kernel}_kernel", timeit(fwd_bwd(x.clone().requires_grad_(True))))
    del os.environ["TALKFIELD_GRID_BWD"]  # the defaults from here on (level groups <= 16 MB, agg)
    record("b_ours_fwd", timeit(fwd))
    record("b_ours_fwd_bwd", timeit(fwd_bwd(x)),
           figure="grid encoder fwd+bwd, 2^20 3D pts, 16 levels x 2, 2^19 entries/level, hash (ours, CUDA)")
    xg = x.clone().requires_grad_(True)
    record("b_ours_fwd_bwd_with_input_grad", timeit(fwd_bwd(xg)),
           figure="grid encoder fwd+bwd incl. d/dx, same config (ours, CUDA)")
    os.environ["TALKFIELD_GRID_SCALAR_ATOMICS"] = "1"
    record("b_ours_fwd_bwd_scalar_atomics", timeit(fwd_bwd(x)))
    del os.environ["TALKFIELD_GRID_SCALAR_ATOMICS"]
    # the same points in Morton order (spatially coherent, like samples marched along rays)
    q = ((x + 1) / 2 * 1023).long().clamp(0, 1023)
    xs = x[torch.argsort(cuda_ext.morton3d(q))].contiguous()
    record("b_ours_fwd_bwd_morton_sorted_points", timeit(fwd_bwd(xs)))
    for kernel in ("aggpair", "lanepair"):
        os.environ["TALKFIELD_GRID_BWD"] = kernel
        record(f"b_ours_fwd_bwd_morton_sorted_points_{kernel}_kernel", timeit(fwd_bwd(xs)))
    del os.environ["TALKFIELD_GRID_BWD"]
    for dt_name, dt_ in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        enc_h = cuda_ext.GridEncoder(3, num_levels=16, level_dim=2, base_resolution=16, desired_resolution=2048,
                                     log2_hashmap_size=19, gridtype="hash", storage_dtype=dt_).to(DEV)

        def step_h():
            enc_h.embeddings.grad = None
            with cuda_ext.backend("cuda"):
                y = enc_h(x)
            y.backward(gy)
        record(f"b_ours_fwd_bwd_{dt_name}_storage", timeit(step_h))
    record("d_twin_grid_fwd_bwd", timeit(fwd_bwd(x, "torch"), warmup=2, iters=10),
           figure="grid encoder fwd+bwd, same config, PyTorch twin on GPU (not gated)")


def bench_d_compile():
    enc = cuda_ext.GridEncoder(3, num_levels=16, level_dim=2, base_resolution=16, desired_resolution=2048,
                               log2_hashmap_size=19, gridtype="hash").to(DEV)
    x = torch.rand(2 ** 20, 3, device=DEV) * 2 - 1
    gy = torch.randn(2 ** 20, 32, device=DEV)
    meta = (enc.offsets, enc.resolutions, enc.scales, enc.hashed, 1.0)
    compiled = torch.compile(lambda xx, ee: ti._grid_encode(xx, ee, *meta))

    def step():
        enc.embeddings.grad = None
        compiled(x, enc.embeddings).backward(gy)
    t0 = time.time()
    step()
    torch.cuda.synchronize()
    record("d_compile_seconds", time.time() - t0)
    record("d_twin_grid_fwd_bwd_compiled", timeit(step, warmup=3, iters=20),
           figure="grid encoder fwd+bwd, same config, PyTorch twin + torch.compile (not gated)")


# ================================================================================================ (c)
def head_density(x):
    """Synthetic head: an ellipsoid skull + a neck cylinder, density 40 inside (head units, HEAD_AABB-like box)."""
    head = ((x[:, 0] / 0.85) ** 2 + ((x[:, 1] - 0.3) / 1.1) ** 2 + (x[:, 2] / 0.95) ** 2) < 1
    neck = (x[:, 0] ** 2 + x[:, 2] ** 2 < 0.45 ** 2) & (x[:, 1] < -0.5)
    return (head | neck).float() * 40.0


def bench_c():
    torch.manual_seed(0)
    aabb_list = (-1.5, -2.0, -1.2, 1.5, 1.8, 1.5)
    source = "networks.nerf.head_field.HeadField(hidden=128, geo_dim=128, ambient_dim=3)"
    try:
        from networks.nerf.head_field import HeadField
        field = HeadField(aabb=aabb_list, hidden=128, geo_dim=128, ambient_dim=3).to(DEV)
        motion = torch.randn(1, 3, 204, device=DEV)
        eye = torch.rand(1, 3, device=DEV)
        code = torch.randn(1, 4, device=DEV) * 0.1

        def field_fn(xyzs, dirs):
            cond, _ = field.encode_condition(motion, eye)
            sigma, rgb, ambient = field(xyzs, dirs, cond, code)
            return sigma, rgb, ambient.float().abs().sum(-1)
    except Exception as exc:
        source = f"bench-built GridEncoders + MLPs (HeadField unavailable: {type(exc).__name__}: {exc})"
        field, field_fn = _bench_field(aabb_list)
    record("c_field_source", source)
    grid = cuda_ext.OccupancyGrid(aabb_list, resolution=128).to(DEV)
    grid.update(head_density, jitter=False, dilate=True)
    record("c_occupied_fraction", grid.occupied_fraction())
    # one 256x256 pinhole image looking at the head along -z (OpenCV camera at z=+4.5)
    H = W = IMAGE_SIZE
    f = IMAGE_SIZE / 2 / math.tan(math.radians(22))
    j, i = torch.meshgrid(torch.arange(H, device=DEV), torch.arange(W, device=DEV), indexing="ij")
    dirs_cam = torch.stack([(i + 0.5 - W / 2) / f, (j + 0.5 - H / 2) / f, torch.ones_like(i, dtype=torch.float)], -1)
    R = torch.tensor([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]], device=DEV)  # camera looks along world -z, y up
    rays_d = F.normalize(dirs_cam.reshape(-1, 3) @ R.T, dim=-1)
    rays_o = torch.tensor([0.0, 0.0, 4.5], device=DEV).expand_as(rays_d).contiguous()
    target = torch.rand(H * W, 3, device=DEV)
    bg = torch.rand(H * W, 3, device=DEV)
    dt = float(grid.cell_size.norm())
    gen = torch.Generator(device=DEV).manual_seed(0)
    opt = torch.optim.Adam(field.parameters(), lr=5e-4, eps=1e-15, fused=True)
    state = {}

    def render_loss(xyzs, dirs, deltas, rays, fn=None):
        sigma, rgb, amb = (fn or field_fn)(xyzs, dirs)
        ws, amb_sum, depth, img = cuda_ext.composite_rays_train(sigma.float(), rgb.float(), amb.float(), deltas,
                                                                rays, 1e-4)
        image = img + (1 - ws)[:, None] * bg
        wsc = ws.clamp(1e-5, 1 - 1e-5)
        entropy = -(wsc * torch.log2(wsc) + (1 - wsc) * torch.log2(1 - wsc)).mean()
        return F.mse_loss(image, target) + 1e-4 * entropy + 1e-3 * amb_sum.mean()

    def make_step(amp: bool, optimizer: bool, backend="cuda", fn=None, loss_fn=None):
        """fn replaces the field function; loss_fn(xyzs, dirs, deltas, rays) -> loss replaces field + composite
        + loss (the compiled 'render' scope)."""
        def step():
            with cuda_ext.backend(backend), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                nears, fars = cuda_ext.near_far_from_aabb(rays_o, rays_d, grid.aabb, 0.05)
                xyzs, dirs, deltas, rays = cuda_ext.march_rays_train(
                    rays_o, rays_d, grid.bitfield, grid.aabb, nears, fars, resolution=128, dt=dt, max_steps=16,
                    perturb=True, generator=gen, buffer_size=grid.buffer_size())
                grid.record_samples(xyzs.shape[0])
                if loss_fn is not None:
                    loss = loss_fn(xyzs, dirs, deltas, rays)
                else:
                    loss = render_loss(xyzs, dirs, deltas, rays, fn)
            loss.backward()
            if optimizer:
                opt.step()
                opt.zero_grad(set_to_none=True)
            else:
                field.zero_grad(set_to_none=True)
            state["samples"] = xyzs.shape[0]
            state.setdefault("sample_counts", set()).add(xyzs.shape[0])
        return step

    make_step(False, False)()
    record("c_samples", state["samples"])
    record("c_step_fp32_fwd_bwd", timeit(make_step(False, False), iters=30),
           figure="head-field training step fwd+bwd, 65,536 rays, fp32 (ours, CUDA)")
    record("c_step_bf16_fwd_bwd", timeit(make_step(True, False), iters=30),
           figure="head-field training step fwd+bwd, 65,536 rays, bf16 autocast (ours, CUDA)")
    record("c_step_bf16_fwd_bwd_adam", timeit(make_step(True, True), iters=30))
    profile_step(make_step(True, False), "c_profile_bf16")
    for kernel in ("agg", "aggpair", "lane", "lanepair"):
        os.environ["TALKFIELD_GRID_BWD"] = kernel
        record(f"c_step_bf16_fwd_bwd_{kernel}_kernel", timeit(make_step(True, False), iters=30))
        record(f"c_step_fp32_fwd_bwd_{kernel}_kernel", timeit(make_step(False, False), iters=30))
    del os.environ["TALKFIELD_GRID_BWD"]
    # compiled variants: the cuda_ext ops are custom ops, so the field (scope 'field') or field + composite + loss
    # (scope 'render') compile as one graph; the sample count is padded to a multiple of ARGS.bucket
    for variant in [v for v in ARGS.compile.split(",") if v]:
        compile_variant(variant, field_fn, render_loss, make_step, state)
    record("d_twin_head_step_fp32", timeit(make_step(False, False, "torch"), warmup=2, iters=5),
           figure="head-field training step fwd+bwd, fp32, PyTorch twins on GPU (not gated)")


def compile_variant(variant: str, field_fn, render_loss, make_step, state: dict):
    """variant = '<scope>:<mode>' with scope field|render and mode default|reduce-overhead|max-autotune-no-cudagraphs."""
    from networks.nerf.compiled import BucketedCompile

    scope, _, mode = variant.partition(":")
    key = f"c_compiled_{scope}_{mode.replace('-', '_')}"
    if time.time() - T_START > ARGS.deadline_s:
        record(f"{key}_skipped", f"past --deadline-s {ARGS.deadline_s}")
        return
    torch._dynamo.reset()
    try:
        t0 = time.time()
        kw = dict(mode=None if mode == "default" else mode, bucket=ARGS.bucket)
        if scope == "field":
            step = make_step(True, False, fn=BucketedCompile(field_fn, n_per_sample=2, **kw))
        elif scope == "render":
            step = make_step(True, False, loss_fn=BucketedCompile(render_loss, n_per_sample=3,
                                                                  outputs_per_sample=False, **kw))
        else:
            raise ValueError(f"compile scope {scope!r}: field or render")
        step()
        torch.cuda.synchronize()
        record(f"{key}_compile_seconds", time.time() - t0)
        state["sample_counts"] = set()
        res = timeit(step, iters=30)
        record(key, res, figure=f"head-field training step fwd+bwd, bf16 autocast, {scope} compiled fullgraph "
                                f"(mode {mode}, samples padded to x{ARGS.bucket}) (ours, CUDA)")
        counts = sorted(state["sample_counts"])
        record(f"{key}_samples_min_max_buckets", [counts[0], counts[-1], len({-(-m // max(ARGS.bucket, 1))
                                                                             for m in counts})])
        profile_step(step, f"c_profile_{scope}_{mode.replace('-', '_')}")
    except Exception as exc:
        traceback.print_exc()
        record(f"{key}_error", f"{type(exc).__name__}: {str(exc)[:400]}")
    flush()


def profile_step(step, key: str, steps: int = 5):
    """Kernel-time breakdown of a step: top CUDA kernels, summed kernel time per step vs the step's wall time."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / steps * 1e3
    evs = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    rows = sorted(evs, key=lambda e: -getattr(e, "self_device_time_total", 0))
    kernel_ms = sum(getattr(e, "self_device_time_total", 0) for e in rows) / 1e3 / steps
    record(f"{key}_kernel_ms_per_step", kernel_ms)
    record(f"{key}_wall_ms_per_step_profiled", wall)
    top = [(e.key[:90], round(getattr(e, "self_device_time_total", 0) / 1e3 / steps, 4), e.count // steps)
           for e in rows[:25]]
    record(f"{key}_top_kernels_ms_per_step", top)
    record(f"{key}_launches_per_step", sum(e.count for e in rows) // steps)


def _bench_field(aabb_list):
    """GeneFace++ sizes (geneface_pp.md 3.2) built from cuda_ext.GridEncoder + MLPs, if HeadField is unavailable."""
    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            kw = dict(num_levels=16, level_dim=2, base_resolution=16, desired_resolution=2048, log2_hashmap_size=16)
            self.pos = cuda_ext.GridEncoder(3, **kw)
            self.amb = cuda_ext.GridEncoder(3, **kw)
            self.amb_mlp = torch.nn.Sequential(torch.nn.Linear(32 + 64, 128, bias=False), torch.nn.ReLU(),
                                               torch.nn.Linear(128, 128, bias=False), torch.nn.ReLU(),
                                               torch.nn.Linear(128, 3, bias=False))
            self.sigma = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                                             torch.nn.ReLU(), torch.nn.Linear(128, 129))
            self.color = torch.nn.Sequential(torch.nn.Linear(16 + 128 + 4, 128), torch.nn.ReLU(), torch.nn.Linear(128, 3))
            self.register_buffer("aabb", torch.tensor(aabb_list))

    field = Field().to(DEV)
    cond = torch.randn(1, 64, device=DEV)
    code = torch.randn(1, 4, device=DEV)

    def field_fn(xyzs, dirs):
        x = (xyzs - field.aabb[:3]) / (field.aabb[3:] - field.aabb[:3]) * 2 - 1
        p = field.pos(x)
        a = torch.tanh(field.amb_mlp(torch.cat([p, cond.expand(p.shape[0], -1).to(p.dtype)], -1)))
        h = field.sigma(torch.cat([p, field.amb(a.float())], -1))
        sh = torch.cat([dirs, dirs ** 2, dirs[:, :1] * dirs[:, 1:], torch.ones_like(dirs), dirs[:, :1] * 0], -1)[:, :16]
        rgb = torch.sigmoid(field.color(torch.cat([sh.to(h.dtype), h[:, 1:], code.expand(h.shape[0], -1).to(h.dtype)], -1)))
        return torch.exp(h[:, 0].float().clamp(-15, 15)), rgb.float(), a.float().abs().sum(-1)
    return field, field_fn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--only", default="a,b,c,d")
    ap.add_argument("--compile", default=ARGS.compile,
                    help="part c compiled variants, comma-separated <scope>:<mode>, scope field|render, mode "
                         "default|reduce-overhead|max-autotune-no-cudagraphs ('' for none)")
    ap.add_argument("--bucket", type=int, default=ARGS.bucket, help="pad the sample count to a multiple of this")
    ap.add_argument("--deadline-s", type=float, default=ARGS.deadline_s,
                    help="skip compiled variants that would start after this many seconds")
    args = ap.parse_args()
    ARGS.__dict__.update(vars(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record("device", torch.cuda.get_device_name())
    record("torch", torch.__version__)
    cuda_ext._backend.load()
    record("extension", cuda_ext._backend.loaded_from())
    parts = {"a": bench_a, "b": bench_b, "c": bench_c, "d": bench_d_compile}
    for key in args.only.split(","):
        try:
            parts[key]()
        except Exception as exc:
            record(f"{key}_error", f"{type(exc).__name__}: {exc}")
            traceback.print_exc()
        flush()
    print("\n".join(ROWS))


if __name__ == "__main__":
    main()
