"""Where one inference render call's time goes (issue 9: ~9.3 ms/frame batched on the H100, and 70-80 ms per render
call in streaming even for 3-4 frames, which looks host-bound).

    python bench/diag_infer_render.py --data-dir <data> --subject katie --ckpt-dir <dir with torso.ckpt, a2m.ckpt> \
        --out OUTDIR [--batch-frames 8,4] [--iters 5] [--seconds 4] [--trace]
    python bench/diag_infer_render.py ... --head H.ckpt --torso T.ckpt --a2m A.ckpt      # explicit checkpoints

The call measured is the file mode's render step, `FrameRenderer.render` (head rays of all B frames in one
march/composite loop, torso, super-resolution, uint8), on real motion: the pipeline's motion stage on the subject's
own recording (its tracked offsets if that stage fails), poses of the training video, the default Knobs (bf16).
For each batch size, after 3 warm-up calls:
  wall     `--iters` calls, CUDA-synchronized at the end only: ms per call, and host ms (until the call returns,
           before the final synchronize: when it is close to the wall time, the host is the bottleneck);
  parts    `--iters` calls with a synchronize around each stage (head render, its march/composite loop, torso
           condition, torso field, composite, SR, uint8); inclusive times, "(self)" = the rest of the parent;
  passes   `--iters` calls with a synchronize around each op of the loop as well (near/far, march, field,
           composite); also counts per call: loop passes, rays, samples evaluated, n_step per pass.
Then, at the first batch size, torch.profiler over 3 calls (each stage a record_function range, no extra
synchronize): CUDA kernel time vs wall time per call, kernel launches, host syncs (cudaStreamSynchronize,
D2H copies, aten::item / nonzero), CPU and CUDA time per stage, the top 25 ops by self CPU and by self CUDA time.
Last, the head field alone on the samples of the largest pass of one call: ms per 1M samples.
Writes OUTDIR/diag_infer_render.json and OUTDIR/diag_infer_render.txt (OUTDIR/trace.json with --trace); every
section is guarded (a failure is printed and recorded, the others still run) and the files are rewritten after each.
Runs on CPU too (the PyTorch twins; tests/test_diag_infer_render.py on the tiny subject). On the machine of
bench/gpu_session2.sh it finds that script's wheels and prebuilt cuda_ext itself (`gpu_session_defaults`); the
checkpoints must be in --ckpt-dir (its `run` copies them to /tmp/tf/ckpt):
    python bench/diag_infer_render.py --data-dir /tmp/tf/data --subject katie --ckpt-dir /tmp/tf/ckpt \
        --out $OUT/diag_render
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# stage -> parent in the call tree (a tuple: the first parent present); the render's own StageTimer gives
# head+torso (or head, head-only), sr, to_uint8; the rest are the wrapped methods (Probe)
PARENT = {"head+torso": "call", "head": "call", "sr": "call", "to_uint8": "call", "background": "head",
          "render_heads": ("head+torso", "head"), "torso_conditions": "head+torso", "render_torsos": "head+torso",
          "composite": "head+torso", "sr_net": "sr", "render_inference": "render_heads",
          "near_far": "render_inference", "march_rays": "render_inference", "field": "render_inference",
          "composite_rays": "render_inference"}
LOOP = ("near_far", "march_rays", "field", "composite_rays")
LAUNCH = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpyAsync", "cudaMemcpy",
         "aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::masked_select")


def gpu_session_defaults() -> list[str]:
    """On the machine of bench/gpu_session2.sh, when run without its exports: its wheels (/tmp/tf/site, from `setup`)
    on sys.path and its prebuilt cuda_ext (.carry/s2b, when carried) as $TALKFIELD_CUDA_EXT_SO. Returns what was set."""
    done = []
    site = Path("/tmp/tf/site")
    if site.is_dir() and str(site) not in sys.path:
        sys.path.insert(2, str(site))
        done.append(f"sys.path: {site}")
    so = ROOT / ".carry" / "s2b" / "cuda_ext" / "talkfield_cuda_ext.so"
    if "TALKFIELD_CUDA_EXT_SO" not in os.environ and so.is_file():
        os.environ["TALKFIELD_CUDA_EXT_SO"] = str(so)
        done.append(f"TALKFIELD_CUDA_EXT_SO={so}")
    return done


def sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


class Probe:
    """Wraps the methods a render call goes through (installed only inside `with probe.on(mode)`, which also resets
    the counts and times).

    Every wrapper counts (passes, alive rays and n_step per pass, rays); mode "parts" synchronizes CUDA around the
    coarse stages and adds their wall time to `ms`, "passes" also around each op of the march/composite loop,
    "label" opens a torch.profiler record_function range "diag::<stage>" instead. capture=True keeps a copy of the
    head field's inputs of the largest loop pass (for the field-alone timing)."""

    def __init__(self, pipe, cuda: bool):
        import cuda_ext
        import cuda_ext._wrapper as W

        r, head, torso = pipe.renderer, pipe.head, pipe.torso
        self.cuda, self.mode, self.capture, self.captured = cuda, None, False, None
        self.targets = [] if torso is not None else [(r, "background", "background")]
        self.targets += [(head, "render_heads", "render_heads"), (cuda_ext, "render_inference", "render_inference"),
                         (W, "near_far_from_aabb", "near_far"), (W, "march_rays", "march_rays"),
                         (head, "_field_call", "field"), (W, "composite_rays", "composite_rays")]
        if torso is not None:
            self.targets += [(torso, "torso_conditions", "torso_conditions"),
                             (torso, "render_torsos", "render_torsos"), (torso, "composite", "composite")]
        self.targets.append((r, "sr", "sr_net"))
        self.reset()

    def reset(self) -> None:
        self.ms: dict[str, float] = defaultdict(float)
        self.calls: list[dict] = []

    def new_call(self) -> None:
        self.calls.append({"rays": 0, "passes": 0, "samples": 0, "alive": [], "n_step": []})

    def _count(self, label: str, a, k) -> None:
        c = self.calls[-1] if self.calls else None
        if c is None:
            return
        if label == "render_inference":
            c["rays"] += int(a[1].shape[0])
        elif label == "march_rays":
            alive, n_step = int(a[5].shape[0]), int(k["n_step"])
            c["passes"] += 1
            c["samples"] += alive * n_step
            c["alive"].append(alive)
            c["n_step"].append(n_step)
        elif label == "field" and self.capture and (self.captured is None or a[0].shape[0] > self.captured[0].shape[0]):
            self.captured = tuple(x.detach().clone() for x in a)

    def _wrap(self, fn, label: str):
        fine = label in LOOP

        def wrapper(*a, **k):
            self._count(label, a, k)
            if self.mode == "label":
                with torch.profiler.record_function("diag::" + label):
                    return fn(*a, **k)
            if self.mode == "passes" or (self.mode == "parts" and not fine):
                sync(self.cuda)
                t = time.perf_counter()
                out = fn(*a, **k)
                sync(self.cuda)
                self.ms[label] += 1000 * (time.perf_counter() - t)
                return out
            return fn(*a, **k)
        return wrapper

    @contextmanager
    def on(self, mode: str | None, capture: bool = False):
        saved = [(obj, name, name in vars(obj), getattr(obj, name)) for obj, name, _ in self.targets]
        for (obj, name, label), (*_, fn) in zip(self.targets, saved):
            setattr(obj, name, self._wrap(fn, label))
        self.mode, self.capture = mode, capture
        self.reset()
        try:
            yield self
        finally:
            self.mode, self.capture = None, False
            for obj, name, own, fn in saved:
                if own:
                    setattr(obj, name, fn)
                else:
                    delattr(obj, name)


def tree(ms: dict[str, float]) -> list[tuple[int, str, float]]:
    """(depth, stage, ms) rows of the call tree; a parent with children gets a "(self)" row: its time not in them."""
    def parent(k):
        p = PARENT.get(k)
        return next((x for x in p if x in ms), None) if isinstance(p, tuple) else p

    kids: dict[str, list[str]] = defaultdict(list)
    for k in ms:
        if k != "call":
            kids[parent(k)].append(k)
    rows: list[tuple[int, str, float]] = []

    def walk(k, d):
        rows.append((d, k, ms[k]))
        if kids[k]:
            for c in kids[k]:
                walk(c, d + 1)
            rows.append((d + 1, "(self)", ms[k] - sum(ms[c] for c in kids[k])))
    walk("call", 0)
    return rows


def profile_summary(prof, calls: int, walls: list[float], cuda: bool, labels: list[str]) -> tuple[dict, str]:
    """Per call: wall, CUDA kernel time and busy time, kernel launches, sync-type calls, aten ops, and per stage
    CPU / CUDA time (record_function ranges, children included); the two top-25 tables."""
    from torch.autograd import DeviceType

    ka = prof.key_averages()
    by = {e.key: e for e in ka}
    n = lambda name: by[name].count / calls if name in by else 0.0  # noqa: E731
    evs = prof.events()
    # device events, less the GPU-side copies of record_function ranges (kineto's gpu_user_annotation)
    dev = [e for e in evs if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
           and not e.name.startswith("diag::")]
    kern = [e for e in dev if not e.name.startswith(("Memcpy", "Memset"))]
    spans = sorted((e.time_range.start, e.time_range.end) for e in dev)
    busy, end = 0.0, -np.inf
    for a, b in spans:  # union of device intervals (busy time)
        busy += max(0.0, b - max(a, end))
        end = max(end, b)
    d2h = [e for e in dev if "DtoH" in e.name or "Device -> Pageable" in e.name or "Device -> Pinned" in e.name]
    S = {"calls": calls, "wall_ms_per_call": 1000 * float(np.mean(walls)),
         "kernel_ms_per_call": sum(e.time_range.elapsed_us() for e in kern) / 1000 / calls,
         "device_busy_ms_per_call": busy / 1000 / calls, "kernels_per_call": len(kern) / calls,
         "memcpy_memset_per_call": (len(dev) - len(kern)) / calls, "d2h_copies_per_call": len(d2h) / calls,
         "kernel_launch_calls_per_call": sum(n(x) for x in LAUNCH),
         "sync_type_calls_per_call": {x: n(x) for x in SYNCS if x in by},
         "aten_ops_per_call": sum(e.count for e in ka if e.key.startswith("aten::")) / calls,
         "stages": {}}
    for lb in labels:
        rng = [e for e in evs if e.name == "diag::" + lb and e.device_type == DeviceType.CPU]
        if rng:
            S["stages"][lb] = {"count_per_call": len(rng) / calls,
                               "cpu_ms_per_call": sum(e.cpu_time_total for e in rng) / 1000 / calls,
                               "cuda_ms_per_call": sum(getattr(e, "device_time_total", 0) for e in rng) / 1000 / calls}
    kw = dict(row_limit=25, max_name_column_width=70)
    text = "top 25 ops by self CPU time (3 calls)\n" + ka.table(sort_by="self_cpu_time_total", **kw)
    if cuda:
        text += "\n\ntop 25 ops by self CUDA time (3 calls)\n" + ka.table(sort_by="self_cuda_time_total", **kw)
    return S, text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--subject", default="katie")
    ap.add_argument("--ckpt-dir", default=None, help="folder with torso.ckpt (or head.ckpt) and a2m.ckpt")
    ap.add_argument("--runs-dir", default=None, help="runs root for 'latest' (default: <ckpt-dir>/runs, else outputs)")
    ap.add_argument("--head", default=None)
    ap.add_argument("--torso", default=None, help="torso checkpoint, or 'none' for head-only")
    ap.add_argument("--a2m", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="diag_infer_render_out")
    ap.add_argument("--batch-frames", default="8,4", help="comma list of frames per render call")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=4.0, help="speech through the motion stage (frames cycled)")
    ap.add_argument("--cpu-threads", type=int, default=4, help="as infer.py's infer.cpu_threads (0: one per core)")
    ap.add_argument("--trace", action="store_true", help="also write the profiler's chrome trace (large)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = gpu_session_defaults()
    try:  # checkpoints rebuild their modules with hydra (on the GPU machine: the wheels under /tmp/tf/site)
        import hydra  # noqa: F401
        import lightning.pytorch  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"diag_infer_render: {e}; put the wheels' site folder on PYTHONPATH "
                         "(bench/gpu_session2.sh installs them under /tmp/tf/site)") from e
    import talkfield.inference as inf
    from talkfield.poses import PoseDriver
    from talkfield.threads import cap_cpu_threads

    cap_cpu_threads(args.cpu_threads)
    from bm_infer import checkpoint_args, mel_filters_shim, pkg_resources_shim, render_settings, speech

    pkg_resources_shim()  # pyworld 0.3.5 on Python 3.12
    ck = checkpoint_args(args)
    runs = Path(args.runs_dir or (Path(args.ckpt_dir) / "runs" if args.ckpt_dir else "outputs"))
    t = time.perf_counter()
    pipe = inf.TalkingHeadPipeline.from_subject(args.subject, data_dir=args.data_dir, runs_dir=runs,
                                                device=args.device, head=ck["head"], torso=ck["torso"], a2m=ck["a2m"])
    mel_filters_shim()  # without librosa (the GPU machine) log-mel uses torchaudio's identical filterbank
    cuda = pipe.device.type == "cuda"
    knobs = inf.Knobs()
    r = pipe.renderer
    R: dict = {"command": "python bench/diag_infer_render.py " + " ".join(sys.argv[1:]),
               "card": torch.cuda.get_device_name() if cuda else f"CPU {torch.get_num_threads()} threads",
               "torch": torch.__version__, "device": str(pipe.device), "load_s": time.perf_counter() - t,
               "checkpoints": pipe.checkpoints, "torso": pipe.torso is not None, "render_size": r.size,
               "out_size": r.out_size, "knobs": dict(vars(knobs)),
               "precision": "bf16" if knobs.bf16 and cuda else "fp32",
               "gpu_session_defaults": env, "batches": {}, "errors": {}}
    lines: list[str] = []

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    def save() -> None:
        R["total_s"] = time.perf_counter() - t_start
        (out / "diag_infer_render.json").write_text(json.dumps(R, indent=1, default=str))
        (out / "diag_infer_render.txt").write_text("\n".join(lines) + "\n")

    def guarded(name: str, fn) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001  (one short device call: keep every number that can be measured)
            tb = traceback.format_exc()
            say(f"!! section {name} failed:\n{tb}")
            R["errors"][name] = tb
        save()

    guarded("settings", lambda: R.update(renderer=render_settings(pipe)))
    say(f"{R['card']}, torch {torch.__version__}, {R['precision']}; render {r.size} px -> SR {r.out_size} px, "
        f"{'head+torso' if R['torso'] else 'head-only'}; renderer {R.get('renderer')}")

    # real motion: the pipeline's motion stage on the subject's recording (else its tracked offsets)
    try:
        off = pipe.motion(speech(pipe.ds, None, args.seconds), knobs)
        R["motion"] = f"pipeline motion stage on {args.seconds:g} s of the subject's recording"
    except Exception:  # noqa: BLE001
        say(f"!! motion stage failed, using the tracked offsets:\n{traceback.format_exc()}")
        off = np.asarray(pipe.ds.array("offsets"), np.float32)[: max(1, int(args.seconds * 25))]
        R["motion"] = "tracked offsets of the dataset (motion stage failed)"
    driver = PoseDriver.from_poses(pipe.c2w, knobs.pose, knobs.pose_smooth)
    T = len(off)

    def inputs(B: int, i: int):
        ts = (i * B + np.arange(B)) % T
        return pipe._frames(off, ts, driver, T)

    def call(x, timer=None) -> torch.Tensor:
        return r.render(*x, knobs.bf16, timer)

    probe = Probe(pipe, cuda)
    sizes = [int(b) for b in args.batch_frames.split(",") if b.strip()]
    n = args.iters

    def per_batch(B: int) -> None:
        xs = [inputs(B, i) for i in range(3 + 3 * n)]
        res = R["batches"][str(B)] = {}
        for x in xs[:3]:  # warm-up (cuDNN autotuning per batch size, allocator)
            call(x)
        sync(cuda)
        walls, hosts, downs = [], [], []
        for x in xs[3:3 + n]:
            sync(cuda)
            t = time.perf_counter()
            img = call(x)
            hosts.append(time.perf_counter() - t)
            sync(cuda)
            walls.append(time.perf_counter() - t)
            t = time.perf_counter()
            img.cpu()
            downs.append(time.perf_counter() - t)
        res["wall_ms"] = [1000 * w for w in walls]
        res["wall_ms_mean"], res["host_ms_mean"] = 1000 * float(np.mean(walls)), 1000 * float(np.mean(hosts))
        res["ms_per_frame"], res["download_ms_mean"] = res["wall_ms_mean"] / B, 1000 * float(np.mean(downs))
        say(f"\n== batch {B}: {res['wall_ms_mean']:.2f} ms/call ({res['ms_per_frame']:.2f} ms/frame; min "
            f"{min(res['wall_ms']):.2f}), host until return {res['host_ms_mean']:.2f} ms, download "
            f"{res['download_ms_mean']:.2f} ms (plain calls, {n})")
        for mode, sl in (("parts", slice(3 + n, 3 + 2 * n)), ("passes", slice(3 + 2 * n, 3 + 3 * n))):
            timer = inf.StageTimer(sync=True)
            with probe.on(mode, capture=mode == "passes" and B == sizes[0]):
                for x in xs[sl]:
                    probe.new_call()
                    sync(cuda)
                    t = time.perf_counter()
                    call(x, timer)
                    sync(cuda)
                    probe.ms["call"] += 1000 * (time.perf_counter() - t)
            ms = {k: v / n for k, v in probe.ms.items()}
            ms.update({k: 1000 * v / n for k, v in timer.seconds.items()})
            res[mode + "_ms"] = ms
            say(f"-- {mode}: CUDA-synchronized around {'each stage' if mode == 'parts' else 'each stage and loop op'}"
                f" (ms per call, inclusive; mean of {n})")
            for d, k, v in tree(ms):
                say(f"  {'  ' * d}{k:<{24 - 2 * d}} {v:9.3f}")
        c = probe.calls
        res["counts"] = {"rays_per_call": float(np.mean([x["rays"] for x in c])),
                         "passes_per_call": float(np.mean([x["passes"] for x in c])),
                         "samples_per_call": float(np.mean([x["samples"] for x in c])),
                         "n_step_one_call": list(c[-1]["n_step"]), "alive_one_call": list(c[-1]["alive"])}
        if res["counts"]["passes_per_call"] and "render_inference" in res["parts_ms"]:
            res["counts"]["loop_ms_per_pass"] = res["parts_ms"]["render_inference"] / res["counts"]["passes_per_call"]
        if pipe.torso is not None:
            res["counts"]["torso_pixels_per_call"] = B * int(pipe.torso._pixels(r.size)[1].shape[0])
        q = res["counts"]
        say(f"-- counts per call: {q['rays_per_call']:.0f} rays, {q['passes_per_call']:.1f} loop passes, "
            f"{q['samples_per_call']:.0f} samples ({q['samples_per_call'] / max(q['rays_per_call'], 1):.2f} per ray)"
            + (f", {q['loop_ms_per_pass']:.3f} ms per pass (parts)" if "loop_ms_per_pass" in q else "")
            + (f", {q['torso_pixels_per_call']} torso pixels" if "torso_pixels_per_call" in q else ""))
        say(f"   n_step per pass (one call): {q['n_step_one_call']}")
        say(f"   alive rays per pass (one call): {q['alive_one_call']}")
        if cuda:
            res["max_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30

    for B in sizes:
        guarded(f"batch_{B}", lambda B=B: per_batch(B))
    import cuda_ext._backend as cb

    R["cuda_ext"] = {"loaded": cb._source, "error": cb._error}  # which build ran (None on CPU: the twins)
    say(f"\ncuda_ext: {R['cuda_ext']}")

    def profile() -> None:
        from torch.profiler import ProfilerActivity, profile as tprofile

        B, calls = sizes[0], 3
        xs = [inputs(B, 100 + i) for i in range(calls)]
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        walls = []
        with probe.on("label"), tprofile(activities=acts) as prof:
            for x in xs:
                sync(cuda)
                t = time.perf_counter()
                call(x)
                sync(cuda)
                walls.append(time.perf_counter() - t)
        S, text = profile_summary(prof, calls, walls, cuda, [lb for *_, lb in probe.targets])
        R["profile"] = {"batch_frames": B, **S}
        if args.trace:
            prof.export_chrome_trace(str(out / "trace.json"))
        say(f"\n== torch.profiler, batch {B}, {calls} calls (per call; the profiler adds host overhead)")
        say(f"  wall {S['wall_ms_per_call']:.2f} ms; CUDA kernels {S['kernel_ms_per_call']:.2f} ms, device busy "
            f"{S['device_busy_ms_per_call']:.2f} ms ({100 * S['device_busy_ms_per_call'] / S['wall_ms_per_call']:.0f}% "
            f"of wall)")
        say(f"  {S['kernels_per_call']:.0f} kernels ({S['kernel_launch_calls_per_call']:.0f} launch calls), "
            f"{S['memcpy_memset_per_call']:.0f} memcpy/memset ({S['d2h_copies_per_call']:.0f} D2H), "
            f"{S['aten_ops_per_call']:.0f} aten ops")
        say("  sync-type calls per call (two cudaDeviceSynchronize are this script's): "
            + ", ".join(f"{k} {v:.0f}" for k, v in S["sync_type_calls_per_call"].items()))
        say(f"  {'stage':<18} {'calls':>7} {'CPU ms':>9} {'CUDA ms':>9}   (record_function ranges, children included)")
        for k, v in S["stages"].items():
            say(f"  {k:<18} {v['count_per_call']:7.1f} {v['cpu_ms_per_call']:9.3f} {v['cuda_ms_per_call']:9.3f}")
        say("\n" + text)

    guarded("profile", profile)

    def field() -> None:
        if probe.captured is None:
            raise RuntimeError("no field inputs captured (the batch sections failed)")
        x = probe.captured
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if knobs.bf16 and cuda else nullcontext()
        ts = []
        with torch.no_grad(), amp:
            for i in range(3 + n):
                sync(cuda)
                t = time.perf_counter()
                pipe.head._field_call(*x)
                sync(cuda)
                ts.append(time.perf_counter() - t)
        k = int(x[0].shape[0])
        ms = 1000 * float(np.mean(ts[3:]))
        R["field"] = {"samples": k, "ms": ms, "ms_per_1M_samples": ms * 1e6 / k, "cond_dim": int(x[2].shape[-1]),
                      "code_dim": int(x[3].shape[-1])}
        say(f"\n== head field alone on the largest pass of one call ({k} samples, batch {sizes[0]}): {ms:.3f} ms, "
            f"{R['field']['ms_per_1M_samples']:.2f} ms per 1M samples")

    guarded("field", field)
    say(f"\ntotal {time.perf_counter() - t_start:.1f} s; wrote {out / 'diag_infer_render.json'} and .txt")
    save()


if __name__ == "__main__":
    main()
