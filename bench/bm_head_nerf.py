"""Benchmark of the head stage on one GPU (never a test): train `experiment=head_nerf` on a preprocessed subject for a
fixed wall-time budget counted from the first optimizer step (data loading and the cuda_ext build excluded), and
record the PSNR-vs-wall-time curve, iterations/s at render_size^2 rays, and the final val metrics.

    python bench/bm_head_nerf.py --data-dir data --subject katie --minutes 10 --out OUTDIR [key=value ...]

Runs with logger=csv, no perceptual network (not installed on the GPU machine) and no val video (no PyAV there).
Writes OUTDIR/curve.json, OUTDIR/results_rows.md (rows for bench/RESULTS.md) and the run under OUTDIR/run/.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # so the config can name bm_head_nerf.BenchCallback
DATE = "2026-11-25"


class BenchCallback(Callback):
    """Stops training `budget_s` after the first optimizer step began; records val metrics against wall time
    and the training throughput (validation time excluded)."""

    def __init__(self, budget_s: float, out_json: str,
                 val_keys=("val/psnr", "val/psnr_face", "val/psnr_render", "val/ssim")):
        self.budget_s, self.out_json, self.val_keys = float(budget_s), Path(out_json), tuple(val_keys)
        self.t0: float | None = None
        self.val_time = 0.0
        self.curve: list[dict] = []
        self.marks: list[tuple[int, float]] = []  # (step, train-only seconds since t0)

    def _now(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.t0 is None:
            self.t0 = self._now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % 50 == 0 or step < 5:
            now = self._now()
            self.marks.append((step, now - self.t0 - self.val_time))
            if now - self.t0 >= self.budget_s:
                trainer.should_stop = True

    def on_validation_start(self, trainer, pl_module):
        self._v0 = self._now()

    def on_validation_end(self, trainer, pl_module):
        now = self._now()
        if self.t0 is not None and not trainer.sanity_checking:
            self.val_time += now - self._v0
            row = {"wall_s": round(self._v0 - self.t0, 2), "step": trainer.global_step}
            for k in self.val_keys:
                if k in trainer.callback_metrics:
                    row[k] = round(float(trainer.callback_metrics[k]), 3)
            self.curve.append(row)
            print("curve:", json.dumps(row), flush=True)
            self.save()

    def on_train_end(self, trainer, pl_module):
        self.save()

    def save(self) -> None:
        state = {"curve": self.curve, "marks": self.marks, "iterations_per_s": self.iterations_per_s(),
                 "steps": self.marks[-1][0] if self.marks else 0}
        self.out_json.write_text(json.dumps(state, indent=2))

    def iterations_per_s(self, skip: int = 200) -> float | None:
        """Training steps per second after `skip` warm-up steps (validation excluded)."""
        pts = [(s, t) for s, t in self.marks if s >= skip]
        if len(pts) < 2:
            pts = self.marks[1:]
        if len(pts) < 2:
            return None
        (s0, t0), (s1, t1) = pts[0], pts[-1]
        return (s1 - s0) / max(t1 - t0, 1e-9)


def prepare(out_dir: str) -> Path:
    """Logging, the output folder, and the cuda_ext kernels built or loaded before any clock starts."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if torch.cuda.is_available():
        import cuda_ext._backend as backend

        t = time.perf_counter()
        backend.load()
        print(f"cuda_ext ready in {time.perf_counter() - t:.1f} s ({backend.loaded_from()})", flush=True)
    return out


def head_overrides(data_dir: str, subject: str, *extra: str) -> list[str]:
    """The head-stage overrides of the GPU benchmarks and diagnostics: csv logging, no perceptual network (not on
    the GPU machine), no val video (no PyAV there), no progress bar or top-k checkpoints; then `extra`."""
    return ["experiment=head_nerf", f"subject.name={subject}", "subject.synthetic=null",
            f"paths.data_dir={Path(data_dir).resolve()}", "logger=csv", "model.perceptual.enabled=false",
            "model.val_video=false", "trainer.max_steps=1000000", "trainer.val_check_interval=500",
            "trainer.enable_progress_bar=false", "callbacks.model_checkpoint.save_top_k=0", *extra]


def run_with_callbacks(overrides: list[str], out: Path, callbacks: dict[str, dict]):
    """Train the configured stage in out/run with extra callbacks (name -> Hydra `_target_` config) added to the
    config's; returns (cfg, final metrics)."""
    from omegaconf import open_dict

    from talkfield.training import run
    from tests.helpers import compose_train

    cfg = compose_train(overrides, out)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out / "run")
        for name, cb in callbacks.items():
            cfg.callbacks[name] = cb
    return cfg, run(cfg, overrides=overrides)


def timed_run(overrides: list[str], out: Path, minutes: float, val_keys=None):
    """Train the configured stage in out/run with a BenchCallback stopping it `minutes` after the first step.
    Returns (cfg, final metrics, the callback's state: curve, marks, iterations_per_s, steps)."""
    state_path = out / "bench_state.json"
    bench = {"_target_": "bm_head_nerf.BenchCallback", "budget_s": minutes * 60.0, "out_json": str(state_path)}
    if val_keys is not None:
        bench["val_keys"] = list(val_keys)
    cfg, metrics = run_with_callbacks(overrides, out, {"bench": bench})
    return cfg, metrics, json.loads(state_path.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--subject", default="katie")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = ap.parse_args()
    out = prepare(args.out)
    from talkfield.training import device_name
    overrides = head_overrides(args.data_dir, args.subject, *args.overrides)
    cfg, metrics, state = timed_run(overrides, out, args.minutes)
    its = state["iterations_per_s"]
    rays = int(cfg.data.render_size) ** 2
    card = device_name()
    result = {"card": card, "subject": args.subject, "minutes": args.minutes, "rays_per_step": rays,
              "iterations_per_s": its, "steps": state["steps"], "curve": state["curve"],
              "final": {k: v for k, v in metrics.items() if k.startswith("val/")}, "overrides": overrides}
    (out / "curve.json").write_text(json.dumps(result, indent=2))
    cmd = f"python bench/bm_head_nerf.py --subject {args.subject} --minutes {args.minutes:g}"
    if args.overrides:
        cmd += " " + " ".join(args.overrides)
    fin = result["final"]
    rows = []
    for key, unit in (("val/psnr_face", "dB"), ("val/psnr", "dB"), ("val/psnr_render", "dB"), ("val/ssim", "")):
        if key in fin:
            rows.append(f"| head_nerf {args.subject} {key} after {args.minutes:g} min (motion oracle, {2 * int(cfg.data.render_size)} px SR) "
                        f"| {fin[key]:.2f} | {unit} | {card} | {DATE} | `{cmd}` |")
    if its is not None:
        rows.append(f"| head_nerf training iterations/s at {rays} rays (val excluded) | {its:.1f} | it/s | {card} | "
                    f"{DATE} | `{cmd}` |")
    for row in state["curve"]:
        rows.append(f"| head_nerf {args.subject} val/psnr_face at {row['wall_s']:.0f} s (step {row['step']}) | "
                    f"{row.get('val/psnr_face', float('nan')):.2f} | dB | {card} | {DATE} | `{cmd}` |")
    (out / "results_rows.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
