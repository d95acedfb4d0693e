"""The head stage on the tiny synthetic subject: the loss falls, resume is exact, checkpoints rebuild the head,
bad datasets fail with the preprocess command, and (slow) the default CPU profile beats a zero-density render."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures.stages import HEAD_TINY, head_subject_overrides
from tests.helpers import compose_train, run_stage


def _metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _series(rows, key):
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


def test_head_overfits_tiny_subject(tiny_subject, tmp_path):
    """60 steps on 4 training frames: the photometric loss falls well below its start (measured: 0.031 -> 0.021 at
    lr 2e-3); the adaptive ambient weight stays finite; validation writes metrics and images; every loss and
    weight is logged."""
    metrics, run_dir = run_stage([*HEAD_TINY, *head_subject_overrides(tiny_subject), "data.train_frames=4",
                                  "model.optimizer.lr=5e-3", "trainer.max_steps=60", "trainer.val_check_interval=60"],
                                 tmp_path)
    rows = _metric_rows(run_dir)
    loss = _series(rows, "train/loss_rgb")
    assert len(loss) >= 50
    first, last = np.mean(loss[:5]), np.mean(loss[-5:])
    assert last < 0.75 * first, (first, last)
    for name in ("rgb", "rgb_sr", "entropy", "ambient"):
        assert _series(rows, f"train/loss_{name}") and _series(rows, f"train/lambda_{name}")
    lam = _series(rows, "train/lambda_ambient")
    assert all(math.isfinite(v) and 1e-4 <= v <= 1e3 for v in lam)
    for key in ("val/psnr", "val/psnr_face", "val/ssim", "val/psnr_face_zero_density"):
        assert math.isfinite(metrics[key]), key
    assert list((run_dir / "media").rglob("*.png"))
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    sd = ckpt["state_dict"]
    for key in ("renderer.grid.density_grid", "renderer.grid.bitfield", "renderer.grid.sample_counts",
                "log10_lambda_ambient", "motion_stats", "field.codes.num_train"):
        assert key in sd, key
    assert int(sd["renderer.grid.step"]) > 0 and ckpt["talkfield"]["stage"] == "head"


def test_head_resume_is_exact(tiny_subject, tmp_path):
    """N=6 steps, resume for M=6 more == 12 uninterrupted steps, bit for bit on CPU (the occupancy grid updates
    inside both halves)."""
    base = [*HEAD_TINY, *head_subject_overrides(tiny_subject), "trainer.val_check_interval=100",
            "validate_at_end=false", "model.grid_warmup_steps=2", "model.grid_update_interval=3"]
    _, first = run_stage([*base, "trainer.max_steps=6"], tmp_path, "first")
    _, resumed = run_stage([*base, "trainer.max_steps=12", f"ckpt_path={first}"], tmp_path, "resumed")
    _, straight = run_stage([*base, "trainer.max_steps=12"], tmp_path, "straight")
    load = lambda d: torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)  # noqa: E731
    a, b, c = load(resumed), load(straight), load(first)
    assert a["global_step"] == b["global_step"] == 12
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), f"{k} differs after resume"
    assert not torch.equal(c["state_dict"]["field.position_grid.embeddings"],
                           b["state_dict"]["field.position_grid.embeddings"])  # the test can fail


def test_load_head_rebuilds_from_checkpoint(tiny_head_ckpt, tiny_subject):
    """Inference and the torso stage rebuild the head from the checkpoint alone and render with it."""
    from datamodules.nerf_video import NerfVideoDataModule
    from lightning_modules.head_nerf import load_head
    from talkfield.runs import CheckpointError

    data_dir, name = tiny_subject
    dm = NerfVideoDataModule(str(data_dir), name, render_size=32)
    dm.setup()
    head = load_head(tiny_head_ckpt, subject=name, fingerprint=dm.fingerprint)
    assert int(head.field.codes.num_train) == dm.num_train
    assert torch.equal(head.motion_stats, dm.motion_stats)
    b = dm.item(int(dm.val_idx[0]))
    with torch.no_grad():
        out = head.render_head(b["c2w"], b["K"], b["motion"], b["eye"], frame=-1, bg=b["bg"])
        sr = head.super_resolve(out["image"])
    assert out["image"].shape == (32, 32, 3) and out["alpha"].shape == (32, 32) and sr.shape == (64, 64, 3)
    assert float(out["alpha"].max()) > 0.1  # the tiny run learned some head
    with pytest.raises(CheckpointError, match="belongs to subject"):
        load_head(tiny_head_ckpt, subject="someone_else")


def test_missing_dataset_names_subject_and_command(tmp_path):
    from talkfield.dataset import DatasetError
    from talkfield.training import run

    cfg = compose_train([*HEAD_TINY, "logger=csv", f"paths.data_dir={tmp_path}", "subject.name=nobody",
                         "subject.synthetic=null"], tmp_path)
    with pytest.raises(DatasetError, match=r"nobody.*preprocess\.py video=.*subject\.name=nobody"):
        run(cfg)


def test_train_items_travel_as_bytes(tiny_subject):
    """Training items keep their images uint8 (4x fewer bytes to the device, no host-side conversion); the
    datamodule's on_after_batch_transfer turns them into the same float32 [0, 1] images `item` gives."""
    from datamodules.nerf_video import NerfVideoDataModule

    data_dir, name = tiny_subject
    dm = NerfVideoDataModule(str(data_dir), name, render_size=32)
    dm.setup()
    raw = next(iter(dm.train_dataloader()))
    t = int(raw["frame"])
    assert all(raw[k].dtype == torch.uint8 for k in dm.UINT8_KEYS)
    got, ref = dm.on_after_batch_transfer(dict(raw), 0), dm.item(t)
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    assert ref["target"].dtype == torch.float32 and float(ref["target"].max()) <= 1.0


def test_incomplete_dataset_names_array(tiny_subject, tmp_path):
    import shutil

    from datamodules.nerf_video import NerfVideoDataModule
    from talkfield.dataset import DatasetError

    data_dir, name = tiny_subject
    broken = tmp_path / name
    shutil.copytree(data_dir / name, broken)
    (broken / "lms2d.npy").unlink()
    with pytest.raises(DatasetError, match=r"lms2d.*preprocess\.py"):
        NerfVideoDataModule(str(tmp_path), name, render_size=32).setup()


def test_experiment_config_composes():
    cfg = compose_train(["experiment=head_nerf"])
    assert cfg.stage == "head" and "render_size" in cfg.oom_hint
    assert cfg.model.network.window == cfg.data.window
    assert all("." in k for k in cfg.cpu_profile)


@pytest.mark.slow
def test_default_cpu_profile_beats_zero_density(tmp_path):
    """The default command's CPU profile on the sample subject: val face-region PSNR of the render beats the same
    compositing with zero density (the background alone) by >= 6 dB."""
    metrics, run_dir = run_stage(["experiment=head_nerf", f"paths.data_dir={tmp_path}/data"], tmp_path)
    gain = metrics["val/psnr_face_render"] - metrics["val/psnr_face_zero_density"]
    assert gain >= 6.0, metrics
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and list((run_dir / "media").rglob("*.png"))


def test_compiled_field_trains_like_eager(tiny_subject, tmp_path, monkeypatch):
    """model.compile_field (fullgraph torch.compile of the field, samples padded to a bucket) gives the same
    training trajectory as the eager field: aot_eager traces the same graph without code generation (fast on
    CPU); the CUDA-graph mode is the GPU's business (gpu tests, bench part c)."""
    base = [*HEAD_TINY, *head_subject_overrides(tiny_subject), "trainer.val_check_interval=100",
            "validate_at_end=false", "trainer.max_steps=4", "model.grid_warmup_steps=100"]
    from networks.nerf.compiled import BucketedCompile

    calls = []
    real_call = BucketedCompile.__call__
    monkeypatch.setattr(BucketedCompile, "__call__", lambda self, *a: calls.append(a[0].shape[0]) or real_call(self, *a))
    _, eager = run_stage(base, tmp_path, "eager")
    assert not calls
    _, comp = run_stage([*base, "model.compile_field.enabled=true", "model.compile_field.mode=null",
                         "model.compile_field.bucket=64", "+model.compile_field.backend=aot_eager"], tmp_path, "comp")
    assert len(calls) == 4 and all(m > 0 for m in calls)  # every training step went through the compiled field
    a = torch.load(eager / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(comp / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in ("field.position_grid.embeddings", "field.sigma_net.0.weight", "field.color_out.1.weight"):
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


def test_head_mask_item_and_mask_loss_pull_opacity_to_the_segmentation(tiny_subject, tmp_path):
    """Items carry the head segmentation at render size; with model.loss.lambda_mask the opacity error against it
    is logged and falls (20 steps, all-occupied grid)."""
    from datamodules.nerf_video import NerfVideoDataModule
    from talkfield.dataset import HEAD_LABELS, open_subject

    data_dir, name = tiny_subject
    dm = NerfVideoDataModule(str(data_dir), name, render_size=32)
    dm.setup()
    m = dm.item(3)["head_mask"]
    assert m.shape == (32, 32) and 0.0 <= float(m.min()) and float(m.max()) <= 1.0
    labels = open_subject(data_dir, name).labels(3)
    assert float(m.mean()) == pytest.approx(float(np.isin(labels, HEAD_LABELS).mean()), abs=0.02)
    _, run_dir = run_stage([*HEAD_TINY, *head_subject_overrides(tiny_subject), "model.loss.lambda_mask=1.0",
                            "model.optimizer.lr=5e-3", "data.train_frames=4", "trainer.max_steps=40",
                            "trainer.val_check_interval=100", "validate_at_end=false", "model.grid_warmup_steps=100"],
                           tmp_path)
    mask = _series(_metric_rows(run_dir), "train/loss_mask")
    assert len(mask) >= 30 and np.mean(mask[-5:]) < 0.7 * np.mean(mask[:5]), (mask[:5], mask[-5:])
