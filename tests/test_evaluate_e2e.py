"""evaluate.py end to end on the tiny subject (slow): motion-oracle + self-driven, JSON + markdown + renders +
video, the landmark pass added later from the saved renders, run= mode, SyncNet LSE, and a study through
experiments/run_study.py with evaluate: true collected into the tables."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.fixtures.stages import HEAD_TINY, head_subject_overrides
from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def _evaluate(args: list[str], tmp_path: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "TALKFIELD_OUTPUTS": str(tmp_path / "outputs")}
    return subprocess.run([sys.executable, "evaluate.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_evaluate_head_and_a2m_end_to_end(tiny_subject, tiny_head_ckpt, tiny_a2m_ckpt, tmp_path):
    data_dir, name = tiny_subject
    out = tmp_path / "eval"
    proc = _evaluate([f"subject.name={name}", f"paths.data_dir={data_dir}", f"head={tiny_head_ckpt}",
                      f"a2m={tiny_a2m_ckpt}", f"out={out}", "lpips=stlpips", "logger=wandb",
                      "compute_landmarks=false"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((out / "eval.json").read_text())
    T = res["frames"][1]
    assert res["frames"][0] == (T * 10) // 11 and res["n_frames"] == T - (T * 10) // 11  # the last 1/11
    assert res["modes"] == ["oracle", "self"] and res["audio_features"] == "mel"
    assert res["lpips_variant"] == "stlpips-alex" and res["ground_truth"].startswith("head-stage target")
    m = res["metrics"]
    for mode in ("oracle", "self"):
        for k in ("psnr", "psnr_face", "ssim", "lpips"):
            assert np.isfinite(m[f"{mode}/{k}"]), (mode, k)
        pngs = sorted((out / "eval_renders" / mode).glob("*.png"))
        assert len(pngs) == res["n_frames"] and pngs[0].name == f"{res['frames'][0]:06d}.png"
        assert np.load(out / "eval_renders" / mode / "motion.npy").shape == (res["n_frames"], 68, 3)
    assert 0 < m["oracle/ssim"] <= 1 and m["oracle/psnr"] > 5
    assert any("landmark metrics skipped" in n and "landmarks=" in n for n in res["notes"])
    md = (out / "eval.md").read_text()
    assert "LPIPS (stlpips-alex)" in md and "| motion-oracle |" in md and "| self-driven |" in md
    assert (out / "eval_side_by_side.mp4").stat().st_size > 0
    assert list((out / "wandb").glob("offline-run-*")), "W&B offline run missing"

    # the scores are the rendered tensors': re-scoring the saved PNGs against the targets gives the same PSNR
    from talkfield import evaluation as ev
    from talkfield.dataset import open_subject

    ds = open_subject(data_dir, name)
    frames = np.arange(*res["frames"])
    real, face = ev.targets(ds, frames, res["resolution"], False)
    again = ev.image_metrics(ev.to_float(ev.load_renders(out, "oracle", frames)), ev.to_float(real),
                             torch.from_numpy(face))
    assert again["psnr"].mean() == pytest.approx(m["oracle/psnr"], abs=1e-6)

    # the CPU landmark pass, later, from the saved renders only. A "render" identical to the ground truth must
    # score LMD 0 and the detector's own error against the sample's truth (the tiny head's renders hold no face)
    ev.save_renders(out, "oracle", frames, real)
    proc = _evaluate([f"landmarks={out}", f"paths.data_dir={data_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res2 = json.loads((out / "eval.json").read_text())
    m2 = res2["metrics"]
    for mode in ("oracle", "self"):
        assert f"{mode}/lmd" in m2 and isinstance(m2[f"{mode}/lmd_frames"], int)
        assert f"{mode}/sample_mouth_mae" in m2  # the tiny subject is a generated sample with ground truth
    assert res2["landmarks"]["sample_truth"].endswith("ground_truth")
    assert res2["landmarks"]["real_detected"] == res["n_frames"] and m2["oracle/lmd_frames"] == res["n_frames"]
    assert m2["oracle/lmd"] == pytest.approx(0.0, abs=1e-6)
    assert m2["oracle/sample_mouth_mae"] == pytest.approx(m2["real/sample_mouth_mae"], abs=1e-9)
    assert not any("landmark metrics skipped" in n for n in res2["notes"])
    assert m2["oracle/psnr"] == m["oracle/psnr"]


def test_evaluate_run_dir_mode_writes_eval_json_into_the_run(tiny_subject, tiny_head_ckpt, tmp_path):
    run = tmp_path / "head_run"
    shutil.copytree(Path(tiny_head_ckpt).parents[1], run, ignore=shutil.ignore_patterns("media", "csv", "wandb"))
    proc = _evaluate([f"run={run}", "a2m=none", "logger=none", "lpips=off", "video=false"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((run / "eval.json").read_text())
    assert res["subject"] == "tiny" and res["checkpoints"]["head"].endswith("last.ckpt")
    assert res["modes"] == ["oracle"] and res["lpips_variant"] is None
    assert any("self-driven mode skipped" in n for n in res["notes"])
    assert "oracle/lmd" in res["metrics"]  # mediapipe is installed here: the landmark pass ran in the same call
    assert not (run / "eval_side_by_side.mp4").exists()


def test_evaluate_refuses_another_subjects_checkpoint_and_a_missing_subject(tiny_subject, tiny_head_ckpt, tmp_path):
    data_dir, name = tiny_subject
    other = tmp_path / "data"
    shutil.copytree(data_dir / name, other / "other")
    man = json.loads((other / "other" / "manifest.json").read_text())
    man["subject"] = "other"
    (other / "other" / "manifest.json").write_text(json.dumps(man))
    proc = _evaluate([f"subject.name=other", f"paths.data_dir={other}", f"head={tiny_head_ckpt}", "a2m=none",
                      "logger=none"], tmp_path)
    assert proc.returncode == 2 and "belongs to subject 'tiny'" in proc.stdout + proc.stderr
    proc = _evaluate([f"paths.data_dir={other}", f"head={tiny_head_ckpt}"], tmp_path)
    assert proc.returncode == 2 and "subject.name=<name>" in proc.stdout + proc.stderr


def test_syncnet_lse_on_renders_with_a_saved_model(tiny_subject, tiny_head_ckpt, tmp_path):
    from networks.syncnet_lse import SyncNetS

    torch.manual_seed(0)
    weights = tmp_path / "syncnet_v2.model"
    torch.save(SyncNetS().state_dict(), weights)
    data_dir, name = tiny_subject
    out = tmp_path / "eval"
    proc = _evaluate([f"subject.name={name}", f"paths.data_dir={data_dir}", f"head={tiny_head_ckpt}", "a2m=none",
                      f"syncnet={weights}", f"out={out}", "logger=none", "lpips=off", "video=false",
                      "compute_landmarks=false"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((out / "eval.json").read_text())
    m = res["metrics"]
    assert np.isfinite(m["oracle/lse_d"]) and m["oracle/lse_c"] >= 0 and isinstance(m["oracle/offset"], int)
    assert any("not S3FD" in n for n in res["notes"])
    bad = tmp_path / "bad.model"
    torch.save({"x": torch.zeros(1)}, bad)
    proc = _evaluate([f"subject.name={name}", f"paths.data_dir={data_dir}", f"head={tiny_head_ckpt}", "a2m=none",
                      f"syncnet={bad}", "logger=none"], tmp_path)
    assert proc.returncode == 2 and "not a SyncNet" in proc.stdout + proc.stderr


def test_run_study_trains_evaluates_and_collects_both_rows(tiny_subject, tmp_path):
    data_dir, name = tiny_subject
    study = {"study": "tiny_eval", "seeds": [1],
             "base": [*HEAD_TINY, *head_subject_overrides(tiny_subject), "logger=csv", "trainer.max_steps=6",
                      "trainer.val_check_interval=6"],
             "sweep": {"model.network.hidden": [16, 32]}, "evaluate": True,
             "evaluate_args": ["logger=none", "video=false", "a2m=none", "lpips=off", "compute_landmarks=false"]}
    spec = tmp_path / "tiny_eval.yaml"
    spec.write_text(yaml.safe_dump(study))
    out = tmp_path / "RESULTS.md"
    env = {**os.environ, "TALKFIELD_OUTPUTS": str(tmp_path / "outputs"), "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "experiments.run_study", str(spec), "--results", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = sorted((tmp_path / "outputs" / name / "head").glob("*/eval.json"))
    assert len(runs) == 2
    text = out.read_text()
    assert "| hidden 16 | model.network.hidden=16 |" in text and "| hidden 32 | model.network.hidden=32 |" in text
    assert "eval/oracle/psnr" in text and "eval/oracle/ssim" in text
