"""Start one sweep worker per visible GPU: a `wandb agent` per GPU for a W&B sweep, or one study row per GPU
for a Hydra-multirun study (no server needed). Each worker sees exactly one GPU through CUDA_VISIBLE_DEVICES.

    python -m experiments.launch_agents wandb <entity/project/sweep_id> [--count N] [--gpus 0,1,2,3]
    python -m experiments.launch_agents study experiments/sweeps/lambda_lpips_multirun.yaml [overrides ...]
    ... --dry-run   # print the commands and their GPU only
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from experiments.run_study import commands, load_study

ROOT = Path(__file__).resolve().parents[1]


def visible_gpus(spec: str | None = None) -> list[str]:
    """GPU ids to use: --gpus, else CUDA_VISIBLE_DEVICES, else every device torch sees."""
    if spec:
        return [g for g in spec.split(",") if g != ""]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:
        return [g for g in env.split(",") if g != ""]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def wandb_jobs(sweep: str, gpus: list[str], count: int | None) -> list[tuple[str, list[str]]]:
    """One `wandb agent` per GPU (all agents pull trials from the same sweep)."""
    extra = ["--count", str(count)] if count else []
    return [(g, ["wandb", "agent", *extra, sweep]) for g in gpus]


def study_jobs(study_path: Path, overrides: list[str], gpus: list[str]) -> list[list[tuple[str, list[str]]]]:
    """The study's row multiruns dealt round-robin to GPUs: queue per GPU, run one after another on it."""
    queues: list[list[tuple[str, list[str]]]] = [[] for _ in gpus]
    for i, cmd in enumerate(commands(load_study(study_path), overrides)):
        queues[i % len(gpus)].append((gpus[i % len(gpus)], cmd))
    return queues


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["wandb", "study"])
    ap.add_argument("target", help="W&B sweep path, or a study yaml")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--gpus", default=None, help="comma-separated GPU ids (default: all visible)")
    ap.add_argument("--count", type=int, default=None, help="trials per W&B agent")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    gpus = visible_gpus(args.gpus)
    if not gpus:
        ap.error("no GPU visible (set --gpus or CUDA_VISIBLE_DEVICES); a sweep on CPU runs with run_study instead")
    if args.kind == "wandb":
        queues = [[job] for job in wandb_jobs(args.target, gpus, args.count)]
    else:
        queues = [q for q in study_jobs(Path(args.target), args.overrides, gpus) if q]
    for q in queues:
        for gpu, cmd in q:
            print(f"[gpu {gpu}] $ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    if args.dry_run:
        return 0
    # one shell per GPU runs its queue in order; the GPUs run side by side
    procs = []
    for q in queues:
        gpu = q[0][0]
        script = " && ".join(" ".join(shlex.quote(c) for c in cmd) for _, cmd in q)
        procs.append(subprocess.Popen(["bash", "-c", script], cwd=ROOT, env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu}))
    return max(p.wait() for p in procs)


if __name__ == "__main__":
    raise SystemExit(main())
