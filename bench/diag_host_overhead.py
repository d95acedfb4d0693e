"""Host-side (Python + op dispatch) cost of one head training step, measured on CPU. The H100 head run trains at
~41 ms/step while its kernels take ~15 ms, and torch.profiler put ~30 ms of Python self time inside the optimizer
closure (training_step + backward) and Lightning's loop (bench/diag_head_step.py): the step is bound by the host.
A tiny render on the PyTorch twins keeps the arithmetic small, so this measures the per-step host work that the GPU
run pays as well.

    python bench/diag_host_overhead.py [--data-dir data --subject sample] [--render-size 16] [--steps 60]
        [--profile-steps 10] [--cprofile-steps 20] [--by-line-steps 0] [--parents aten::item,...] [key=value ...]

Trains `experiment=head_nerf` with the tests' tiny overrides (tests.fixtures.stages.HEAD_TINY) at `--render-size` px
on 8 training frames: `--warmup` steps, then `--steps` timed, `--profile-steps` under torch.profiler,
`--cprofile-steps` under cProfile and `--by-line-steps` counted by line, then stops. Reports, as JSON on stdout and
in OUT/host_overhead.json:

- ms per step over the timed steps (median, mean; the time between consecutive on_train_batch_start calls: data item,
  training_step, backward, optimizer, logging, every Lightning hook), and the median of the same less the time spent
  inside the march/composite/grid-encode twins, which the GPU run replaces by a few CUDA kernels;
- aten ops per step (torch.profiler key_averages, CPU): all, those outside the twins (what a CUDA step dispatches
  itself), aten::_local_scalar_dense calls outside the twins (each .item() / float(t) / int(t): a host sync on the
  GPU; Adam's per-parameter step counters are read this way too, but they live on the host), autograd nodes, and
  the top ops and nodes by count; with --parents, the profiler ranges that enclose the given ops;
- the top Python functions by tottime (cProfile; the whole profile in OUT/host_overhead.pstats);
- with --by-line-steps: aten ops per step by the line of this repository that dispatched them (a dispatch mode;
  composite ops count as the ops they decompose into, so these totals differ from the profiler's).

The occupancy grid updates every 4 steps (the tiny config); the median skips those steps. Adam runs with
foreach=True, which torch picks for CUDA parameters (on CPU it would loop over the parameters one by one), and the
loggers write every 10 steps (trainer.log_every_n_steps, its default). The numbers move by ~10% from run to run on
a shared 2-core machine: compare medians of several runs, alternating the variants.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import pstats
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

TWIN_TAG = "twin::"
TWINS = ("_march_rays_train", "_composite_rays_train", "_composite_rays_train_backward", "_grid_encode",
         "_grid_encode_backward", "_near_far_from_aabb")
_twin_s = [0.0]  # seconds spent inside the twins so far


def tag_twins() -> None:
    """Wrap the twins that stand in for CUDA kernels in a profiler range (so their ops can be told apart from the
    step's own) and add up the time spent in them."""
    from cuda_ext import _torch_impl as ti

    for name in TWINS:
        fn = getattr(ti, name)
        if getattr(fn, "_tagged", False):
            continue

        @functools.wraps(fn)
        def wrapped(*args, _fn=fn, _name=name, **kwargs):
            t0 = time.perf_counter()
            try:
                with torch.profiler.record_function(TWIN_TAG + _name):
                    return _fn(*args, **kwargs)
            finally:
                _twin_s[0] += time.perf_counter() - t0

        wrapped._tagged = True
        setattr(ti, name, wrapped)


def _parents(ev) -> list[str]:
    names, p = [], ev.cpu_parent
    while p is not None:
        names.append(p.name)
        p = p.cpu_parent
    return names


def _per_step(counts: dict[str, int], n: int, top: int) -> list[tuple[str, float]]:
    return [(k, round(v / n, 1)) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:top]]


class _OpsByLine(TorchDispatchMode):
    """Counts aten ops by the innermost line of this repository on the Python stack (twin ops as 'twin', autograd's
    backward as 'backward'); ops that Lightning or torch.optim dispatch carry their innermost function too."""

    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        lib = where = None
        f = sys._getframe(1)
        while f is not None and where is None:
            name = f.f_code.co_filename
            if name.endswith("_torch_impl.py"):
                lib, where = None, "twin"
            elif name.endswith("autograd/graph.py"):
                lib, where = None, "backward"
            elif name.startswith(str(ROOT)) and "/bench/" not in name:
                where = f"{Path(name).relative_to(ROOT)}:{f.f_lineno} {f.f_code.co_name}"
            elif lib is None and ("/lightning/" in name or "/torch/optim/" in name):
                lib = f"{'/'.join(Path(name).parts[-2:])}:{f.f_code.co_name}"
            f = f.f_back
        key = f"{lib} <- {where}" if lib else (where or "other")
        self.counts[key] = self.counts.get(key, 0) + 1
        return func(*args, **(kwargs or {}))


class HostOverhead(Callback):
    """Times, profiles and counts consecutive phases of steps (see the module docstring), then stops the run."""

    def __init__(self, warmup: int, steps: int, profile_steps: int, cprofile_steps: int, by_line_steps: int,
                 out_json: str, parents: str = ""):
        tag_twins()  # here: Hydra imports this file as a module of its own, apart from __main__
        self.steps, self.profile_steps = int(steps), int(profile_steps)
        self.cprofile_steps, self.by_line_steps = int(cprofile_steps), int(by_line_steps)
        bounds = [int(warmup)]
        for n in (self.steps, self.profile_steps, self.cprofile_steps, self.by_line_steps):
            bounds.append(bounds[-1] + n)
        self.bounds = bounds
        self.out_json = Path(out_json)
        self.parents = [s for s in parents.split(",") if s]
        self.stamps: list[tuple[float, float]] = []  # (wall, twin seconds) at each timed step's start
        self.prof = self.cprof = self.by_line = None
        self.rep: dict = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        a, b, c, d, e = self.bounds
        if a <= step <= b:
            self.stamps.append((time.perf_counter(), _twin_s[0]))
        if step == b:
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.prof.__enter__()
        if step == c:
            self.prof.__exit__(None, None, None)
            self._profile_report()
            self.cprof = cProfile.Profile()
            self.cprof.enable()
        if step == d:
            self.cprof.disable()
            self._cprofile_report()
            self.by_line = _OpsByLine()
            self.by_line.__enter__()
        if step == e:
            self.by_line.__exit__(None, None, None)
            if self.by_line_steps:
                self.rep["aten_ops_by_line"] = _per_step(self.by_line.counts, self.by_line_steps, 10 ** 6)
            self.out_json.write_text(json.dumps(self.rep, indent=1))
            print(json.dumps(self.rep, indent=1), flush=True)
            trainer.should_stop = True

    def _profile_report(self) -> None:
        n = self.profile_steps
        wall = [1e3 * (t1 - t0) for (t0, _), (t1, _) in zip(self.stamps, self.stamps[1:])]
        rest = [w - 1e3 * (s1 - s0) for w, (_, s0), (_, s1) in zip(wall, self.stamps, self.stamps[1:])]
        events = self.prof.events()
        ops = [e for e in events if e.name.startswith("aten::")]
        outside = [e for e in ops if not any(p.startswith(TWIN_TAG) for p in _parents(e))]
        counts: dict[str, int] = {}
        for e in outside:
            counts[e.name] = counts.get(e.name, 0) + 1
        nodes: dict[str, int] = {}
        for e in events:
            if e.name.startswith("autograd::engine::evaluate_function: "):
                k = e.name.split(": ", 1)[1]
                nodes[k] = nodes.get(k, 0) + 1
        self.rep.update({
            "ms_per_step_median": round(statistics.median(wall), 3),
            "ms_per_step_mean": round(statistics.mean(wall), 3),
            "ms_per_step_outside_twins_median": round(statistics.median(rest), 3),
            "timed_steps": len(wall),
            "aten_ops_per_step": round(len(ops) / n, 1),
            "aten_ops_per_step_outside_twins": round(len(outside) / n, 1),
            "host_syncs_per_step": round(counts.get("aten::_local_scalar_dense", 0) / n, 2),
            "autograd_nodes_per_step": round(sum(nodes.values()) / n, 1),
            "top_aten_outside_twins": _per_step(counts, n, 25),
            "top_autograd_nodes": _per_step(nodes, n, 25),
        })
        for op in self.parents:
            where: dict[str, int] = {}
            for e in outside:
                if e.name == op:
                    key = " <- ".join(_parents(e)[:6])
                    where[key] = where.get(key, 0) + 1
            self.rep[f"parents_{op}"] = _per_step(where, n, 15)

    def _cprofile_report(self) -> None:
        s = io.StringIO()
        st = pstats.Stats(self.cprof, stream=s)
        st.dump_stats(str(self.out_json.with_suffix(".pstats")))
        st.sort_stats("tottime").print_stats(30)
        self.rep["cprofile_steps"] = self.cprofile_steps
        self.rep["cprofile_top_tottime"] = s.getvalue().splitlines()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(ROOT / "data"))
    ap.add_argument("--subject", default="sample")
    ap.add_argument("--out", default="diag_host_out")
    ap.add_argument("--render-size", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--profile-steps", type=int, default=10)
    ap.add_argument("--cprofile-steps", type=int, default=20)
    ap.add_argument("--by-line-steps", type=int, default=0)
    ap.add_argument("--parents", default="", help="comma-separated aten ops whose enclosing ranges to report")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    from bm_head_nerf import run_with_callbacks
    from tests.fixtures.stages import HEAD_TINY

    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    shutil.rmtree(out / "run", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    total = args.warmup + args.steps + args.profile_steps + args.cprofile_steps + args.by_line_steps
    overrides = [*HEAD_TINY, f"subject.name={args.subject}", "subject.synthetic=null",
                 f"paths.data_dir={Path(args.data_dir).resolve()}", "logger=csv",
                 f"data.render_size={args.render_size}", "data.train_frames=8", f"trainer.max_steps={total + 5}",
                 "trainer.val_check_interval=100000", "validate_at_end=false", "trainer.enable_progress_bar=false",
                 "callbacks.model_checkpoint.save_top_k=0", "trainer.log_every_n_steps=10",
                 "+model.optimizer.foreach=true", *args.overrides]
    host = {"_target_": "diag_host_overhead.HostOverhead", "warmup": args.warmup, "steps": args.steps,
            "profile_steps": args.profile_steps, "cprofile_steps": args.cprofile_steps,
            "by_line_steps": args.by_line_steps, "out_json": str(out / "host_overhead.json"), "parents": args.parents}
    run_with_callbacks(overrides, out, {"host_overhead": host})


if __name__ == "__main__":
    main()
