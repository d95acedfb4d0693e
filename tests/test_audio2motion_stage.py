"""The audio2motion stage through the training driver: checkpoints, loading, refusals, corpus, fine-tune."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.fixtures.a2m import A2M_TINY, subject_overrides


pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_run_loads_and_predicts(tiny_a2m_ckpt, tiny_subject):
    from lightning_modules.audio2motion import load_audio2motion
    from networks.audio2motion import postprocess, predict_motion
    from talkfield.dataset import open_subject
    from talkfield.runs import CheckpointError

    ds = open_subject(*tiny_subject)
    model = load_audio2motion(tiny_a2m_ckpt, "tiny", ds.fingerprint)
    assert model.features == "mel" and not model.generic
    assert model.meta["trained_on"][0]["subject"] == "tiny" and model.meta["audio_features"] == "mel"
    np.testing.assert_allclose(model.person.stats, np.asarray(ds.array("motion_stats")))
    T = 37  # not a multiple of the stride
    off = predict_motion(model, np.asarray(ds.array("mel"))[: 2 * T], np.asarray(ds.array("f0"))[: 2 * T],
                         temperature=0.5, mouth_amp=1.2)
    assert off.shape == (T, 68, 3) and np.isfinite(off).all()
    out = postprocess(off, model.person, lle_blend=0.2, blink="period")
    assert out.shape == (T, 68, 3)
    with pytest.raises(CheckpointError, match="belongs to subject 'tiny'"):
        load_audio2motion(tiny_a2m_ckpt, "alice", None)
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_audio2motion(tiny_a2m_ckpt, "tiny", "0000000000000000")


def test_inference_loads_the_weight_average(tiny_a2m_ckpt):
    from lightning_modules.audio2motion import load_audio2motion

    sd = torch.load(tiny_a2m_ckpt, map_location="cpu", weights_only=False)["state_dict"]
    net = load_audio2motion(tiny_a2m_ckpt, None, None).network.state_dict()
    avg = {k[len("network_ema."):]: v for k, v in sd.items() if k.startswith("network_ema.")}
    assert set(avg) == set(net) and all(torch.equal(net[k], avg[k]) for k in net)
    trained = sd["network.dec_out.weight"]
    assert not torch.equal(trained, avg["dec_out.weight"])  # an average of the iterates, not the last one
    assert torch.equal(sd["network.cond.feat_std"], avg["cond.feat_std"])  # buffers are copied


def test_training_logs_every_term_and_its_weight(tiny_a2m_ckpt):
    import csv

    rows = list(csv.DictReader(open(tiny_a2m_ckpt.parents[1] / "csv" / "metrics.csv")))
    keys = set(rows[0])
    for term in ("motion", "prior", "lms", "vel", "mouth", "smooth", "kl"):
        assert f"train/loss_{term}" in keys and f"train/lambda_{term}" in keys
    assert {"val/lmd", "val/mouth_r", "val/lip_width_r"} <= keys


def test_corpus_model_is_generic_and_a_person_finetunes_from_it(tiny_subject, a2m_corpus, tmp_path):
    from lightning_modules.audio2motion import load_audio2motion
    from networks.audio2motion import predict_motion
    from talkfield.dataset import open_subject
    from talkfield.runs import CheckpointError
    from tests.helpers import run_stage

    data_dir, name = tiny_subject
    _, run = run_stage([*A2M_TINY, "data=audio2motion_corpus", f"data.data_dir={a2m_corpus}", "subject.name=corpus",
                        "subject.synthetic=null", "trainer.max_steps=4", "trainer.val_check_interval=4"],
                       tmp_path, "corpus")
    ck = run / "checkpoints" / "last.ckpt"
    generic = load_audio2motion(ck, "tiny", None)
    assert generic.generic and generic.meta["subject"] is None
    assert [t["subject"] for t in generic.meta["trained_on"]] == ["high", "low", name]
    with pytest.raises(CheckpointError, match="generic"):
        load_audio2motion(ck, "tiny", None, allow_generic=False)
    ds = open_subject(data_dir, name)
    with pytest.raises(ValueError, match="stats="):
        predict_motion(generic, np.asarray(ds.array("mel"))[:40], np.asarray(ds.array("f0"))[:40])
    off = predict_motion(generic, np.asarray(ds.array("mel"))[:40], np.asarray(ds.array("f0"))[:40],
                         stats=np.asarray(ds.array("motion_stats")))
    assert off.shape == (20, 68, 3)
    # person fine-tune from the generic weights: step 0 of the new run equals the generic network
    _, run2 = run_stage([*A2M_TINY, *subject_overrides(tiny_subject), f"model.init_from={ck}", "trainer.max_steps=2",
                         "trainer.val_check_interval=2"], tmp_path, "person")
    person = load_audio2motion(run2 / "checkpoints" / "last.ckpt", name, ds.fingerprint)
    assert not person.generic
    g_sd, p_sd = generic.network.state_dict(), person.network.state_dict()
    assert torch.equal(g_sd["cond.feat_mean"], p_sd["cond.feat_mean"])  # kept from the generic model
    moved = max(float((g_sd[k] - p_sd[k]).abs().max()) for k in g_sd if g_sd[k].is_floating_point())
    assert 0 < moved < 0.05


def test_missing_feature_kind_is_named(tiny_subject, tmp_path):
    from talkfield.dataset import DatasetError
    from tests.helpers import run_stage

    with pytest.raises(DatasetError, match="no 'hubert' audio features"):
        run_stage([*A2M_TINY, *subject_overrides(tiny_subject), "audio_features=hubert", "trainer.max_steps=1"],
                  tmp_path)


def test_inserted_pauses_are_quiet_unvoiced_and_end_in_the_rest_pose(tiny_subject):
    from datamodules.audio2motion import Audio2MotionDataModule

    data_dir, name = tiny_subject
    dm = Audio2MotionDataModule(str(data_dir), [name], window=32, batch_size=4, pause_aug=1.0, pause_frames=(12, 12),
                                mel_norm="band", seed=3)
    dm.setup()
    plain = Audio2MotionDataModule(str(data_dir), [name], window=32, batch_size=4, pause_aug=0.0, mel_norm="band",
                                   seed=3)
    plain.setup()
    clip = dm.clips[0]
    b = dm._batch(0, 5)
    for i in range(4):
        assert int((b["f0"][i] == 0).sum()) >= 24  # the pause's 24 pitch rows are unvoiced
        at_rest = (b["motion"][i] - clip.rest).abs().amax(-1) < 1e-5
        assert at_rest.sum() >= 12 - 2 * 2  # the pause interior (ramps of 3 frames at each edge)
    assert b["features"].shape == plain._batch(0, 5)["features"].shape
    loud = clip.features.mean(-1)
    assert float(clip.features[clip.quiet_rows].mean(-1).mean()) < float(loud.median())


def test_corpus_subjects_differ_in_face_geometry_and_voice_pitch(a2m_corpus):
    from networks.audio2motion import lip_width68, median_f0
    from talkfield import landmarks as lmk
    from talkfield.dataset import open_subject

    width, pitch = {}, {}
    for name in ("tiny", "low", "high"):
        ds = open_subject(a2m_corpus, name)
        width[name] = float(lip_width68(lmk.to68(np.asarray(ds.array("mean_shape")))))
        pitch[name] = median_f0(np.asarray(ds.array("f0")))
    # the tracked mean shapes differ by more than tracking noise; the measured voices sit where they were asked to
    assert min(abs(width["low"] - width["tiny"]), abs(width["high"] - width["tiny"])) > 0.02, width
    assert pitch["low"] < 0.7 * pitch["tiny"] < pitch["tiny"] < 0.8 * pitch["high"], pitch


@pytest.mark.slow
def test_corpus_with_the_real_clip_trains_a_generic_model(tiny_subject, tmp_path):
    from lightning_modules.audio2motion import load_audio2motion
    from tests.fixtures.a2m import REAL_CLIP, build_corpus
    from tests.helpers import run_stage

    if not REAL_CLIP.is_file():
        pytest.skip(f"the real clip {REAL_CLIP} is not here")
    data = build_corpus(tmp_path / "corpus", tiny_subject, real=True)
    _, run = run_stage([*A2M_TINY, "data=audio2motion_corpus", f"data.data_dir={data}", "subject.name=corpus",
                        "subject.synthetic=null", "trainer.max_steps=4", "trainer.val_check_interval=4"],
                       tmp_path, "corpus")
    generic = load_audio2motion(run / "checkpoints" / "last.ckpt", None, None)
    assert [t["subject"] for t in generic.meta["trained_on"]] == ["high", "katie", "low", "tiny"]
