"""The torso stage (lightning_modules/torso_nerf.py): init from a head run (weights only, frozen), refusals,
load_torso for inference, resume, and a short run that beats head-over-plate (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_modules.torso_nerf import TorsoNeRFModule, load_torso
from networks.nerf.torso_field import TorsoField
from talkfield.camera import scale_intrinsics
from talkfield.dataset import open_subject
from talkfield.runs import CheckpointError, save_weights_only
from tests.fixtures.stages import TORSO_TINY, head_subject_overrides
from tests.helpers import compose_train, run_stage

TINY_FIELD = dict(grid=dict(num_levels=4, desired_resolution=64, log2_hashmap_size=10), deform_hidden=32, hidden=16)


def _module(init_from, tiny_subject, runs_dir="/nonexistent", **kw) -> TorsoNeRFModule:
    data_dir, name = tiny_subject
    return TorsoNeRFModule(TorsoField(**TINY_FIELD), init_from=str(init_from), subject=name, data_dir=str(data_dir),
                           runs_dir=str(runs_dir), render_size=32, **kw)


def test_init_from_head_loads_every_key_and_the_head_stays_frozen(tiny_head_ckpt, tiny_torso_ckpt, tiny_subject):
    head = torch.load(tiny_head_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    torso = torch.load(tiny_torso_ckpt, map_location="cpu", weights_only=True)
    sd = torso["state_dict"]
    assert {k[len("head."):] for k in sd if k.startswith("head.")} == set(head), "head keys differ from the head's"
    changed = [k for k, v in head.items() if not torch.equal(sd["head." + k], v)]
    assert changed == [], f"frozen head changed during torso training: {changed[:5]}"
    # the optimizer holds exactly the torso field's parameters: none of the head's
    model = load_torso(tiny_torso_ckpt, subject=tiny_subject[1])
    n_field = len(list(model.field.parameters()))
    groups = torso["optimizer_states"][0]["param_groups"]
    assert sorted(g["name"] for g in groups) == ["grid", "mlp"]
    assert sum(len(g["params"]) for g in groups) == n_field
    assert all(not p.requires_grad for p in model.head.parameters())
    # the torso did train: occupancy updates ran, codes know the split, the field moved away from its init
    assert int(sd["occupancy.step"]) > 0
    assert int(sd["field.codes.num_train"]) == len(open_subject(*tiny_subject).split("train"))
    assert float(sd["field.deform_out.1.2.weight"].abs().max()) > 0


def test_missing_init_from_says_what_to_pass(tiny_subject, tmp_path):
    from talkfield.training import ConfigError, check_required

    cfg = compose_train(["experiment=torso_nerf"], tmp_path)
    with pytest.raises(ConfigError, match=r"model\.init_from=<a head checkpoint \(\.ckpt\), a head run directory, "
                                          r"or latest"):
        check_required(cfg)
    with pytest.raises(CheckpointError, match="a head checkpoint .*a head run directory, or `latest`"):
        TorsoNeRFModule(TorsoField(**TINY_FIELD), init_from=None, subject=tiny_subject[1])


def test_wrong_init_from_is_refused_with_the_reason(tiny_head_ckpt, tiny_torso_ckpt, tiny_subject, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        _module(tmp_path / "nope.ckpt", tiny_subject)
    with pytest.raises(CheckpointError, match="no head run for subject 'tiny'.*model.init_from"):
        _module("latest", tiny_subject, runs_dir=tmp_path / "outputs")
    with pytest.raises(CheckpointError, match="'torso' checkpoint.*ckpt_path="):
        _module(tiny_torso_ckpt, tiny_subject)
    ck = torch.load(tiny_head_ckpt, map_location="cpu", weights_only=True)
    other = {**ck, "talkfield": {**ck["talkfield"], "subject": "bob"}}
    torch.save(other, tmp_path / "bob.ckpt")
    with pytest.raises(CheckpointError, match="belongs to subject 'bob', not 'tiny'"):
        _module(tmp_path / "bob.ckpt", tiny_subject)
    moved = {**ck, "talkfield": {**ck["talkfield"], "fingerprint": "0" * 16}}
    torch.save(moved, tmp_path / "fp.ckpt")
    with pytest.raises(CheckpointError, match="another preprocessing"):
        _module(tmp_path / "fp.ckpt", tiny_subject)
    with pytest.raises(ValueError, match="pass data.render_size=32"):
        TorsoNeRFModule(TorsoField(**TINY_FIELD), init_from=str(tiny_head_ckpt), subject="tiny",
                        data_dir=str(tiny_subject[0]), render_size=48)


def test_load_torso_renders_from_a_weights_only_copy(tiny_torso_ckpt, tiny_subject, tmp_path):
    data_dir, name = tiny_subject
    ds = open_subject(data_dir, name)
    with pytest.raises(CheckpointError, match="belongs to subject 'tiny', not 'bob'"):
        load_torso(tiny_torso_ckpt, subject="bob")
    full = load_torso(tiny_torso_ckpt, subject=name, fingerprint=ds.fingerprint)
    slim = save_weights_only(torch.load(tiny_torso_ckpt, map_location="cpu", weights_only=True), tmp_path / "w.ckpt")
    model = load_torso(slim, subject=name, fingerprint=ds.fingerprint)
    t = int(ds.split("val")[0])
    K = torch.from_numpy(scale_intrinsics(np.asarray(ds.array("intrinsics"), np.float64), ds.size, 32)).float()
    c2w = torch.from_numpy(np.asarray(ds.array("c2w")[t], np.float32))
    motion = torch.from_numpy(np.asarray(ds.array("offsets")[t - 1:t + 2], np.float32).reshape(3, 204))
    eye = torch.from_numpy(np.asarray(ds.array("eye_open")[t - 1:t + 2], np.float32))
    import cv2

    plate = torch.from_numpy(cv2.resize(ds.background(), (32, 32), interpolation=cv2.INTER_AREA)).float() / 255
    img = model.render_frame(c2w, K, motion, eye, -1, plate, 32)
    assert img.shape == (32, 32, 3) and 0 <= float(img.min()) and float(img.max()) <= 1
    assert torch.equal(img, full.render_frame(c2w, K, motion, eye, -1, plate, 32))
    sr = model.super_resolve(img)
    assert sr.shape == (64, 64, 3)
    # the torso is there: the frame differs from the head over the bare plate
    head = model.head_rgba(c2w, K, motion, eye, -1, 32)
    bare = head[..., :3] + (1 - head[..., 3:]) * plate
    assert float((img - bare).abs().max()) > 1e-3


def test_jaw_condition_is_where_the_tracked_jaw_is(tiny_torso_ckpt, tiny_subject):
    """Projected canonical jaw (mean + offsets, pose, camera: what inference has) lands on the tracked 2D jaw."""
    from talkfield import landmarks as lmk

    data_dir, name = tiny_subject
    ds = open_subject(data_dir, name)
    model = load_torso(tiny_torso_ckpt, subject=name)
    n = ds.size
    K = torch.from_numpy(np.asarray(ds.array("intrinsics"), np.float32))
    frames = np.arange(0, ds.T, 10)
    off = torch.from_numpy(np.asarray(ds.array("offsets")[frames], np.float32))
    c2w = torch.from_numpy(np.asarray(ds.array("c2w")[frames], np.float32))
    jaw = model.jaw_points(off, c2w, K, n)
    tracked = np.asarray(ds.array("lms2d")[frames][:, lmk.JAW, :2]) / n * 2 - 1
    err_px = np.abs(jaw.numpy() - tracked).mean() * n / 2
    assert err_px < 3.0, f"projected jaw is {err_px:.1f} px from the tracked jaw on average"


@pytest.mark.slow
def test_resume_from_ckpt_path_matches_an_uninterrupted_run(tiny_head_ckpt, tiny_subject, tmp_path):
    base = [*TORSO_TINY, *head_subject_overrides(tiny_subject), f"model.init_from={tiny_head_ckpt}",
            "trainer.val_check_interval=100", "validate_at_end=false"]
    run_stage([*base, "trainer.max_steps=8"], tmp_path, "full")
    run_stage([*base, "trainer.max_steps=4"], tmp_path, "part")
    run_stage([*base, "trainer.max_steps=8", f"ckpt_path={tmp_path / 'part'}"], tmp_path, "resumed")
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


@pytest.mark.slow
def test_short_torso_run_beats_head_over_plate(tiny_head_ckpt, tiny_subject, tmp_path):
    metrics, run_dir = run_stage([*TORSO_TINY, *head_subject_overrides(tiny_subject),
                                  f"model.init_from={tiny_head_ckpt}", "trainer.max_steps=150",
                                  "trainer.val_check_interval=150", "model.val_video=true"], tmp_path, "torso")
    gain = metrics["val/psnr"] - metrics["val/psnr_head_over_plate"]
    assert gain >= 2.0, metrics
    assert metrics["val/psnr_neck"] > metrics["val/psnr_neck_head_over_plate"], metrics
    assert list((run_dir / "media").glob("val_video/*.mp4")), "no side-by-side val video"
