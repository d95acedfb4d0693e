"""Our lip-sync expert: it learns to separate aligned from time-shifted pairs, and every number names its data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from networks.audio2motion.syncnet import LipSyncExpert, auc, contrastive_loss, sync_auc, sync_scores
from tests.fixtures.a2m import A2M_TINY, batch, phone_sequence, subject_overrides


pytestmark = pytest.mark.usefixtures("one_thread")


def test_auc_is_the_rank_statistic():
    assert auc([2, 3], [0, 1]) == 1.0 and auc([0, 1], [2, 3]) == 0.0
    assert auc([1, 1], [1, 1]) == 0.5
    rng = np.random.default_rng(0)
    p, n = rng.normal(1, 1, 300), rng.normal(0, 1, 400)
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in p for b in n])
    assert auc(p, n) == pytest.approx(brute)


def test_expert_separates_aligned_from_shifted_pairs_after_brief_training():
    torch.manual_seed(0)
    expert = LipSyncExpert(feat_dim=80, window=7, hidden=48, embed=32, layers=2)
    feats, _, motion = batch(64, 40, seed=5)
    expert.set_feature_stats(feats.reshape(-1, 80).mean(0), feats.reshape(-1, 80).std(0))
    opt = torch.optim.Adam(expert.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    f_te, _, m_te = phone_sequence(300, seed=777)  # held-out sequence
    seq = [(torch.from_numpy(f_te), torch.from_numpy(m_te))]
    expert.eval()
    before = auc(*sync_scores(expert, *seq[0], shifts=(-6, -4, 4, 6)))
    expert.train()
    for step in range(80):
        idx = torch.randint(0, 64, (16,), generator=g)
        out = contrastive_loss(expert, feats[idx], motion[idx], generator=g, min_shift=3, max_shift=8)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    expert.eval()
    expert.trained_on = [{"subject": "constructed phone sequences", "split": "train"}]
    res = sync_auc(expert, seq, shifts=(-6, -4, 4, 6), data="held-out constructed sequence")
    assert res["auc"] > 0.85 and res["auc"] > before + 0.2, (before, res["auc"])
    assert res["expert_trained_on"] == expert.trained_on and res["scored_on"] == "held-out constructed sequence"
    expert.trained_on = None
    with pytest.raises(ValueError, match="name the data it was trained on"):
        sync_auc(expert, seq)


def test_lipsync_stage_names_its_training_data_and_serves_as_a2m_loss(tiny_subject, tmp_path):
    from lightning_modules.audio2motion import load_audio2motion
    from lightning_modules.lipsync import load_lipsync
    from networks.audio2motion import prepare_features
    from talkfield.dataset import open_subject
    from talkfield.runs import META_KEY, CheckpointError
    from tests.helpers import run_stage

    data_dir, name = tiny_subject
    ds = open_subject(data_dir, name)
    m, run = run_stage(["experiment=lipsync", *subject_overrides(tiny_subject), "data.window=32", "data.batch_size=8",
                        "model.expert.hidden=32", "model.expert.embed=16", "model.min_shift=3", "model.max_shift=8",
                        "model.val_shifts=[-3,3]", "trainer.max_steps=6", "trainer.val_check_interval=6",
                        "trainer.enable_progress_bar=false"], tmp_path, "lipsync")
    assert np.isfinite(m["val/auc"])
    ck = run / "checkpoints" / "last.ckpt"
    expert = load_lipsync(ck)
    (entry,) = expert.trained_on
    assert entry["subject"] == name and entry["fingerprint"] == ds.fingerprint and entry["split"] == "train"
    assert entry["frames"] == ds.manifest.split["train"]
    from networks.audio2motion.vae import normalize_motion

    a, b = ds.manifest.split["val"]
    feats = prepare_features(torch.from_numpy(np.array(ds.array("mel"))[2 * a:2 * b]), "mel", mode=expert.mel_norm)
    mot = normalize_motion(torch.from_numpy(np.array(ds.array("offsets"))[a:b]), np.array(ds.array("motion_stats")))
    res = sync_auc(expert, [(feats, mot)], shifts=(-3, 3), data=f"{name} val split")
    assert res["expert_trained_on"][0]["fingerprint"] == ds.fingerprint and 0 <= res["auc"] <= 1
    # a checkpoint that does not say what it was trained on is refused
    raw = torch.load(ck, weights_only=True)
    raw[META_KEY] = {**raw[META_KEY], "trained_on": []}
    torch.save(raw, tmp_path / "anon.ckpt")
    with pytest.raises(CheckpointError, match="does not name the data"):
        load_lipsync(tmp_path / "anon.ckpt")
    # as an audio2motion loss: logged, and the a2m checkpoint names the expert's data
    m2, run2 = run_stage([*A2M_TINY, *subject_overrides(tiny_subject), f"model.sync_expert={ck}",
                          "trainer.max_steps=2", "trainer.val_check_interval=2"], tmp_path, "a2m_sync")
    assert "train/loss_sync" in m2 and m2["train/lambda_sync"] == pytest.approx(0.2)
    a2m = load_audio2motion(run2 / "checkpoints" / "last.ckpt", name, ds.fingerprint)
    assert a2m.meta["sync_expert_trained_on"] == expert.trained_on
    assert not any(k.startswith("expert.") for k in torch.load(run2 / "checkpoints" / "last.ckpt",
                                                                weights_only=True)["state_dict"])
