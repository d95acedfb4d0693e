"""The frame itself: fit_image trains, resumes bit-for-bit, checkpoints carry metadata, the CLI behaves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, run_stage
from talkfield.runs import CheckpointError, latest_run, load_checkpoint

FIT = ["experiment=fit_image", "data.size=32", "data.batch_size=256", "trainer.val_check_interval=10"]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_fit_image_psnr_rises(tmp_path):
    """150 steps on a 32x32 astronaut crop: PSNR must pass 22 dB (an untrained net gives ~11 dB)."""
    metrics, run_dir = run_stage(FIT + ["data.size=32", "trainer.max_steps=150", "trainer.val_check_interval=150"],
                                 tmp_path)
    assert metrics["val/psnr"] > 22.0, metrics
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "media").rglob("*.png")), "validation images must also be written as files"
    assert latest_run(tmp_path / "outputs", "astronaut", "fit_image") is None  # run_dir is outside runs_dir here
    assert (run_dir.parent / "latest").read_text().strip() == run_dir.name


def test_resume_is_bit_exact(tmp_path):
    """Train 20 steps, resume for 20 more == 40 uninterrupted steps, bit for bit on CPU."""
    _, first = run_stage(FIT + ["trainer.max_steps=20"], tmp_path, "first")
    _, resumed = run_stage(FIT + ["trainer.max_steps=40", f"ckpt_path={first}"], tmp_path, "resumed")
    _, straight = run_stage(FIT + ["trainer.max_steps=40"], tmp_path, "straight")
    a, b = _weights(resumed), _weights(straight)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    c = _weights(first)
    assert not torch.equal(c["network.net.0.weight"], b["network.net.0.weight"])  # the test can fail


def test_last_checkpoint_is_the_end_of_training(tmp_path):
    """max_steps not a multiple of val_check_interval: last.ckpt must still hold the final step."""
    _, run_dir = run_stage(FIT + ["trainer.max_steps=13"], tmp_path)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 13


def test_seed_changes_and_repeats(tmp_path):
    _, r1 = run_stage(FIT + ["trainer.max_steps=10", "seed=7"], tmp_path, "s7a")
    _, r2 = run_stage(FIT + ["trainer.max_steps=10", "seed=7"], tmp_path, "s7b")
    _, r3 = run_stage(FIT + ["trainer.max_steps=10", "seed=8"], tmp_path, "s8")
    w1, w2, w3 = _weights(r1), _weights(r2), _weights(r3)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert not all(torch.equal(w1[k], w3[k]) for k in w1)


def test_checkpoint_metadata_and_refusal(tmp_path):
    _, run_dir = run_stage(FIT + ["trainer.max_steps=5"], tmp_path)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    loaded = load_checkpoint(ckpt, stage="fit_image", subject=None, fingerprint_=None, allow_generic=True)
    meta = loaded["talkfield"]
    assert meta["stage"] == "fit_image" and meta["format_version"] == 1
    assert meta["config"]["data"]["size"] == 32
    with pytest.raises(CheckpointError, match="'fit_image' checkpoint; a 'head' checkpoint"):
        load_checkpoint(ckpt, stage="head", subject="alice", fingerprint_=None)


def _cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", **(env_extra or {})}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_help_lists_groups():
    out = _cli("--help")
    assert out.returncode == 0, out.stderr
    for group in ("subject", "data", "model", "callbacks", "logger", "trainer", "paths", "hydra", "debug", "experiment"):
        assert f"{group}:" in out.stdout, f"group {group} missing from --help"


def test_cli_unknown_key_fails_naming_it():
    out = _cli("experiment=fit_image", "trainer.max_stepz=3", "--cfg", "job")
    assert out.returncode != 0
    assert "max_stepz" in out.stderr


def test_cli_unknown_group_option_fails_naming_it():
    out = _cli("experiment=does_not_exist", "--cfg", "job")
    assert out.returncode != 0
    assert "does_not_exist" in out.stderr


def test_missing_required_value_names_key_and_fix(tmp_path):
    from omegaconf import open_dict

    from talkfield.training import ConfigError, run
    from tests.helpers import compose_train

    cfg = compose_train(["experiment=fit_image", "logger=csv"], tmp_path)
    with open_dict(cfg):
        cfg.model.network.hidden = "???"
    with pytest.raises(ConfigError, match=r"model\.network\.hidden.*model\.network\.hidden=<value>"):
        run(cfg)


@pytest.mark.slow
def test_cli_fit_image_end_to_end(tmp_path):
    """The real command line: train.py with the CPU profile, then resume with ckpt_path=latest."""
    env = {"TALKFIELD_OUTPUTS": str(tmp_path)}
    out = _cli("experiment=fit_image", "logger=csv", "trainer.max_steps=40", "trainer.val_check_interval=20",
               env_extra=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "no GPU found: using the CPU profile" in out.stdout + out.stderr
    out = _cli("experiment=fit_image", "logger=csv", "trainer.max_steps=60", "trainer.val_check_interval=20",
               "ckpt_path=latest", env_extra=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming from" in out.stdout + out.stderr
    runs = sorted(p for p in (tmp_path / "astronaut" / "fit_image").iterdir() if p.is_dir())
    assert len(runs) == 2
    assert torch.load(runs[-1] / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 60
