"""Every experiment composes and its objects instantiate; `--cfg job` prints a resolved config for each."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.helpers import CONFIGS, ROOT, compose_train

EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


def test_experiment_folder_not_empty():
    assert EXPERIMENTS, "configs/experiment/ is empty"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_instantiates(name, tmp_path):
    cfg = compose_train([f"experiment={name}", "logger=csv"], tmp_path)
    assert cfg.stage in ("head", "torso", "audio2motion", "fit_image", "lipsync"), cfg.stage
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert resolved["stage"] == cfg.stage
    # cheap constructors only: nothing reads a dataset or trains here
    instantiate(cfg.data, _convert_="partial")
    if not OmegaConf.missing_keys(cfg.model):
        instantiate(cfg.model, _convert_="partial")
    instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    for cb in (cfg.get("callbacks") or {}).values():
        instantiate(cb)


def test_default_experiment_is_head_nerf_once_it_exists():
    cfg = compose_train([])
    if (CONFIGS / "experiment" / "head_nerf.yaml").is_file():
        assert cfg.stage == "head"


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_cli_prints_resolved_config(name):
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), f"experiment={name}", "--cfg", "job",
                          "--resolve"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "stage:" in out.stdout
