"""bench/diag_infer_render.py end to end on CPU (the PyTorch twins) with the tiny subject's torso + Audio2Motion runs:
every section runs, and the counts describe the march/composite loop (slow: it trains the tiny runs)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_diag_infer_render_on_the_tiny_subject(tiny_subject, tiny_torso_ckpt, tiny_a2m_ckpt, tmp_path):
    data_dir, name = tiny_subject
    ck = tmp_path / "ckpt"
    ck.mkdir()
    shutil.copy(tiny_torso_ckpt, ck / "torso.ckpt")
    shutil.copy(tiny_a2m_ckpt, ck / "a2m.ckpt")
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(ROOT / "bench" / "diag_infer_render.py"), "--data-dir", str(data_dir),
                    "--subject", name, "--ckpt-dir", str(ck), "--out", str(out), "--batch-frames", "2,1",
                    "--iters", "1", "--cpu-threads", "1"], check=True, cwd=ROOT, timeout=300)
    R = json.loads((out / "diag_infer_render.json").read_text())
    assert R["errors"] == {} and R["torso"] and R["motion"].startswith("pipeline motion stage")
    for B in ("2", "1"):
        b = R["batches"][B]
        c = b["counts"]
        assert c["rays_per_call"] == int(B) * R["render_size"] ** 2
        assert c["passes_per_call"] == len(c["n_step_one_call"]) == len(c["alive_one_call"]) > 0
        assert c["samples_per_call"] == sum(a * n for a, n in zip(c["alive_one_call"], c["n_step_one_call"]))
        assert {"head+torso", "render_heads", "render_inference", "render_torsos", "sr"} <= set(b["parts_ms"])
        assert {"march_rays", "field", "composite_rays"} <= set(b["passes_ms"])
    p = R["profile"]
    assert p["batch_frames"] == 2
    assert p["stages"]["field"]["count_per_call"] == p["stages"]["march_rays"]["count_per_call"] > 0
    assert R["field"]["samples"] > 0 and R["field"]["ms_per_1M_samples"] > 0
    assert "top 25 ops by self CPU time" in (out / "diag_infer_render.txt").read_text()
