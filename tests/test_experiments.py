"""Studies: every sweep/ablation definition composes; a 2-point multirun on CPU is collected into both rows;
the W&B sweep's agent command line maps onto Hydra overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiments.collect import collect
from experiments.run_study import commands, load_study, study_rows
from tests.helpers import ROOT, compose_train

STUDIES = sorted((ROOT / "experiments").glob("*/*.yaml"))
STUDY_FILES = [p for p in STUDIES if "study" in (yaml.safe_load(p.read_text()) or {})]


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: p.stem)
def test_every_row_composes(path):
    study = load_study(path)
    for row, delta in study_rows(study).items():
        cfg = compose_train([*study.get("base", []), *delta, f"seed={study['seeds'][0]}",
                             f"study={study['study']}", f"row='{row}'"])
        assert cfg.study == study["study"] and cfg.row == row
        assert len(study["seeds"]) >= 2, "every row needs at least 2 seeds"


def test_two_point_multirun_is_collected(tmp_path):
    study = {"study": "tiny_grid", "base": ["experiment=fit_image", "logger=csv", "data.size=16",
                                            "data.batch_size=64", "trainer.max_steps=4",
                                            "trainer.val_check_interval=4"],
             "sweep": {"model.network.hidden": [16, 32]}, "seeds": [1]}
    spec = tmp_path / "tiny_grid.yaml"
    spec.write_text(yaml.safe_dump(study))
    out = tmp_path / "RESULTS.md"
    env = {**os.environ, "TALKFIELD_OUTPUTS": str(tmp_path / "outputs"), "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "experiments.run_study", str(spec), "--results", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "## tiny_grid" in text
    assert "| hidden 16 | model.network.hidden=16 |" in text
    assert "| hidden 32 | model.network.hidden=32 |" in text
    assert "val/psnr" in text
    assert text == collect(tmp_path / "outputs")  # regenerates identically


def test_wandb_agent_command_maps_to_hydra_overrides():
    """Build the trial command as `wandb agent` does (wandb_agent.Agent: its macro table from wandb's own
    create_sweep_command_args), then run it with --cfg job: train.py must accept it and set the values."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    sweep = yaml.safe_load((ROOT / "experiments" / "sweeps" / "lambda_lpips.yaml").read_text())
    command = {"program": sweep["program"], "args": {"model.loss.lambda_lpips": {"value": 0.01}, "seed": {"value": 2}}}
    sweep_vars = sweep_utils.create_sweep_command_args(command)
    sweep_vars.update(interpreter=["python"], program=[command["program"]], env=["/usr/bin/env"])
    argv = []
    for c in map(str, sweep["command"]):
        argv += (sweep_vars.get(c[2:-1]) or []) if c.startswith("${") and c.endswith("}") else [c]
    assert argv[:3] == ["/usr/bin/env", "python", "train.py"]
    assert "model.loss.lambda_lpips=0.01" in argv and "seed=2" in argv
    argv[1] = sys.executable
    proc = subprocess.run([*argv, "--cfg", "job"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["model"]["loss"]["lambda_lpips"] == pytest.approx(0.01)
    assert cfg["seed"] == 2 and cfg["study"] == "lambda_lpips_wandb" and cfg["stage"] == "head"


def test_dry_run_lists_one_multirun_per_row():
    study = load_study(ROOT / "experiments" / "sweeps" / "lambda_lpips_multirun.yaml")
    cmds = commands(study, ["subject.name=katie"])
    assert len(cmds) == 3
    assert all("-m" in c and "seed=1,2" in c and "subject.name=katie" in c for c in cmds)


def test_rows_option_selects_rows_and_rejects_unknown_ones():
    study = load_study(ROOT / "experiments" / "sweeps" / "lambda_lpips_multirun.yaml")
    names = list(study_rows(study))
    cmds = commands(study, [], rows=[names[1]])
    assert len(cmds) == 1 and f"row='{names[1]}'" in cmds[0] and cmds[0][-1].endswith("_r1")
    with pytest.raises(ValueError, match="no rows"):
        commands(study, [], rows=["no such row"])


def test_two_studies_started_together_never_share_run_ids():
    # seen on the H100: a sweep and an ablation launched in the same second shared <time>_r<i> run directories
    a = load_study(ROOT / "experiments" / "sweeps" / "lambda_lpips_multirun.yaml")
    b = load_study(ROOT / "experiments" / "ablations" / "ambient.yaml")
    ids = [c[-1] for c in commands(a, []) + commands(b, [])]
    assert len(set(ids)) == len(ids)


def test_launcher_gives_each_gpu_its_own_worker(monkeypatch, capsys):
    from experiments.launch_agents import main, study_jobs, visible_gpus, wandb_jobs

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus() == ["2", "5"]
    assert visible_gpus("0,1,3") == ["0", "1", "3"]
    jobs = wandb_jobs("me/talkfield/abc123", ["0", "1", "2"], count=4)
    assert [g for g, _ in jobs] == ["0", "1", "2"]
    assert all(cmd == ["wandb", "agent", "--count", "4", "me/talkfield/abc123"] for _, cmd in jobs)
    queues = study_jobs(ROOT / "experiments" / "sweeps" / "lambda_lpips_multirun.yaml", ["subject.name=katie"],
                        ["0", "1"])
    assert [len(q) for q in queues] == [2, 1]  # 3 rows over 2 GPUs
    assert {g for q in queues for g, _ in q} == {"0", "1"} and all(g == q[0][0] for q in queues for g, _ in q)
    assert main(["study", str(ROOT / "experiments" / "sweeps" / "lambda_lpips_multirun.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("[gpu 2]") == 2 and out.count("[gpu 5]") == 1


def test_launcher_subprocesses_see_one_gpu_each(tmp_path):
    """Run the launcher for real with a tiny CPU study: each worker's CUDA_VISIBLE_DEVICES is its own id."""
    study = {"study": "probe", "base": ["experiment=fit_image", "logger=csv", "data.size=8", "data.batch_size=16",
                                        "trainer.max_steps=2", "trainer.val_check_interval=2"],
             "sweep": {"model.network.hidden": [8, 16]}, "seeds": [1]}
    spec = tmp_path / "probe.yaml"
    spec.write_text(yaml.safe_dump(study))
    env = {**os.environ, "TALKFIELD_OUTPUTS": str(tmp_path / "out"), "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "experiments.launch_agents", "study", str(spec), "--gpus", "7,8"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = sorted((tmp_path / "out").rglob("run_summary.json"))
    assert len(summaries) == 2
