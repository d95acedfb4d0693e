"""Where a head training step's time goes on the GPU (issue 6/5: the run trains at ~24 it/s = ~41 ms/step while the
field + composite alone take ~14 ms eager, 7.3 ms compiled; the data loader fix took 6 ms of host time off a step
and the rate did not move, so the step waits on something else).

    python bench/diag_head_step.py --data-dir <data> --subject katie [--start 300 --steps 20] [key=value ...]

Trains `experiment=head_nerf` (as bm_head_nerf does) and profiles steps [start, start + steps) with torch.profiler:
wall time per step, GPU kernel time per step (the sum over kernels: the step is GPU bound when they are close),
kernel launches per step, the top CUDA kernels and the top host-side ops by self CPU time. Then stops.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepProfiler(Callback):
    def __init__(self, start: int, steps: int, out_json: str):
        self.start, self.steps, self.out_json = int(start), int(steps), Path(out_json)
        self.prof = None
        self.t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.start and self.prof is None:
            _sync()
            acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            self.prof = torch.profiler.profile(activities=acts)
            self.prof.__enter__()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.prof is None or trainer.global_step < self.start + self.steps:
            return
        _sync()
        wall = (time.perf_counter() - self.t0) / self.steps
        self.prof.__exit__(None, None, None)
        ev = self.prof.key_averages()
        n = self.steps
        # CUDA-side records of CPU annotations (e.g. "Optimizer.step#Adam.step") span a range of the GPU timeline:
        # not kernels, and counting them would double the sum (the first H100 run reported 58.7 ms this way)
        cpu_keys = {e.key for e in ev if getattr(e, "device_type", None) == torch.autograd.DeviceType.CPU}
        kernels = [e for e in ev if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA
                   and e.key not in cpu_keys]
        gpu_ms = sum(e.self_device_time_total for e in kernels) / 1e3 / n
        launches = sum(e.count for e in kernels) / n
        top_k = sorted(kernels, key=lambda e: -e.self_device_time_total)[:25]
        cpu = [e for e in ev if getattr(e, "device_type", None) == torch.autograd.DeviceType.CPU]
        top_c = sorted(cpu, key=lambda e: -e.self_cpu_time_total)[:25]
        rep = {"wall_ms_per_step_profiled": 1e3 * wall, "gpu_kernel_ms_per_step": gpu_ms,
               "kernel_launches_per_step": launches,
               "top_kernels_ms_per_step": [(e.key[:90], round(e.self_device_time_total / 1e3 / n, 3), e.count // n)
                                           for e in top_k],
               "top_cpu_self_ms_per_step": [(e.key[:60], round(e.self_cpu_time_total / 1e3 / n, 3), e.count // n)
                                            for e in top_c]}
        self.out_json.write_text(json.dumps(rep, indent=1))
        print(json.dumps(rep, indent=1), flush=True)
        trainer.should_stop = True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--subject", default="katie")
    ap.add_argument("--out", default="diag_head_out")
    ap.add_argument("--start", type=int, default=300)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    from bm_head_nerf import head_overrides, prepare, run_with_callbacks

    out = prepare(args.out)
    profiler = {"_target_": "diag_head_step.StepProfiler", "start": args.start, "steps": args.steps,
                "out_json": str(out / "head_step_profile.json")}
    run_with_callbacks(head_overrides(args.data_dir, args.subject, "trainer.val_check_interval=100000",
                                      *args.overrides), out, {"step_profiler": profiler})


if __name__ == "__main__":
    main()
