"""Helpers for tests: compose the training config like train.py does, and run a stage in a temp folder."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def compose_train(overrides: list[str], tmp_path: Path | None = None, config_name: str = "train") -> DictConfig:
    """Compose configs/train.yaml with overrides; with tmp_path, runs and the run dir go under it."""
    extra = []
    if tmp_path is not None:
        extra = [f"paths.runs_dir={tmp_path}/outputs", f"paths.output_dir={tmp_path}/run"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name, overrides=[*overrides, *extra])


def run_stage(overrides: list[str], tmp_path: Path, run_name: str = "run") -> tuple[dict, Path]:
    """Train a stage as train.py would (CSV logger), in tmp_path/<run_name>. Returns (metrics, run_dir)."""
    from talkfield.training import run

    cfg = compose_train(["logger=csv", *overrides], tmp_path)
    run_dir = tmp_path / run_name
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    return run(cfg, overrides=overrides), run_dir
