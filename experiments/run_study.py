"""Run a study (a sweep or an ablation) as Hydra multiruns, evaluate each run, and regenerate the tables.

    python -m experiments.run_study experiments/ablations/perceptual.yaml [extra overrides ...] [--dry-run]

A study file names the rows (each a config delta, or a grid over one key), the seeds, and the overrides shared by
every row. Each row becomes one `python train.py -m <base> <delta> seed=<s1>,<s2> study=<name> row=<row>` multirun;
runs land in outputs/<subject>/<stage>/ like any other, and `experiments/collect.py` turns their
`run_summary.json` (and `eval.json` where evaluate.py ran) into experiments/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def load_study(path: Path) -> dict:
    study = yaml.safe_load(Path(path).read_text())
    for key in ("study", "seeds"):
        if key not in study:
            raise ValueError(f"{path}: a study needs `{key}`")
    if not study.get("rows") and not study.get("sweep"):
        raise ValueError(f"{path}: a study needs `rows` (name -> overrides) or `sweep` (key -> values)")
    return study


def study_rows(study: dict) -> dict[str, list[str]]:
    """Row name -> config delta. A `sweep: {key: [v1, v2]}` adds one row per value."""
    rows = {name: list(delta or []) for name, delta in (study.get("rows") or {}).items()}
    for key, values in (study.get("sweep") or {}).items():
        for v in values:
            rows[f"{key.split('.')[-1]} {v}"] = [f"{key}={v}"]
    return rows


def commands(study: dict, extra: list[str], rows: list[str] | None = None) -> list[list[str]]:
    """The train.py multirun command of every row (or of the named `rows`). Each row gets its own run id
    (<time>_<study>_r<row index>), so rows of any study that start in the same second (one process per GPU or per
    row, several studies at once) never share a run directory."""
    seeds = ",".join(str(s) for s in study["seeds"])
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}_{study['study']}"
    all_rows = study_rows(study)
    unknown = sorted(set(rows or []) - set(all_rows))
    if unknown:
        raise ValueError(f"study {study['study']!r} has no rows {unknown}; its rows: {sorted(all_rows)}")
    out = []
    for i, (row, delta) in enumerate(all_rows.items()):
        if rows is not None and row not in rows:
            continue
        out.append([sys.executable, str(ROOT / "train.py"), "-m", *study.get("base", []), *delta, *extra,
                    f"seed={seeds}", f"study={study['study']}", f"row='{row}'", f"run_id={stamp}_r{i}"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", type=Path)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (e.g. subject.name=katie)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    ap.add_argument("--no-collect", action="store_true")
    ap.add_argument("--rows", default=None, help="comma-separated row names to run (default: all); lets several "
                    "processes share one study, e.g. one per GPU or several on one large GPU")
    ap.add_argument("--results", type=Path, default=None, help="tables file (default experiments/RESULTS.md)")
    args = ap.parse_args(argv)
    study = load_study(args.study)
    rows = [r.strip() for r in args.rows.split(",")] if args.rows else None
    for cmd in commands(study, args.overrides, rows):
        print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
        if not args.dry_run:
            subprocess.run(cmd, cwd=ROOT, check=True)
    if not args.dry_run and study.get("evaluate"):
        from experiments.collect import find_runs

        for run in find_runs(study["study"]):
            row = json.loads((run / "run_summary.json").read_text()).get("row")
            if rows is not None and row not in rows:
                continue  # another process runs (and evaluates) that row
            if not (run / "eval.json").is_file():
                cmd = [sys.executable, str(ROOT / "evaluate.py"), f"run={run}", *study.get("evaluate_args", [])]
                print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
                subprocess.run(cmd, cwd=ROOT, check=True)
    if not args.dry_run and not args.no_collect:
        from experiments.collect import main as collect

        collect(["--out", str(args.results)] if args.results else [])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
