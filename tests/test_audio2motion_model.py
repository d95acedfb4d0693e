"""Audio2Motion network and post-processing on constructed data (no subject needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from networks.audio2motion import Audio2Motion, PersonMotion, predict_motion
from networks.audio2motion.features import PITCH_BINS, coarse_pitch, mel_band_stats, prepare_features
from networks.audio2motion.postprocess import (MOUTH_POINTS, PauseTracker, apply_blinks, blink_schedule,
                                               clamp_to_quantiles, close_mouth_in_pauses, closed_eye_pose,
                                               gaussian_smooth, lle_project, lle_weights, mouth_opening68,
                                               pause_weights, postprocess)
from networks.audio2motion.vae import Audio2MotionVAE, denormalize_motion, kl_weight, normalize_motion
from tests.fixtures.a2m import PAUSE_SEGMENTS, batch, speech_with_pauses


pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = dict(feat_dim=80, hidden=48, latent=8, stride=4, cond_layers=2, enc_layers=2, dec_layers=2, dec_dilation=2,
             flow_hidden=32, flow_layers=2, n_flows=2, dropout=0.0)


def test_shapes_and_stride_check():
    torch.manual_seed(0)
    net = Audio2MotionVAE(**SMALL)
    feats, f0, motion = batch(3, 32, seed=0)
    out = net(motion, feats, f0, torch.zeros(3, 32), torch.ones(3))
    assert out["x_rec"].shape == out["x_prior"].shape == (3, 32, 204)
    assert out["mu"].shape == (3, 8, 8) and out["kl"].dim() == 0 and torch.isfinite(out["kl"])
    assert net.infer(feats, f0).shape == (3, 32, 204)
    with pytest.raises(ValueError, match="multiple of the temporal stride"):
        net.infer(feats[:, :60], f0[:, :60])


def test_prior_sampling_temperature_and_flow_inverse():
    torch.manual_seed(0)
    net = Audio2MotionVAE(**SMALL).eval()
    for p in net.prior.post:  # non-trivial couplings
        torch.nn.init.normal_(p.weight, std=0.1)
    feats, f0, _ = batch(1, 16, seed=1)
    g = net.condition(feats, f0)
    z = torch.randn(1, 8, 4)
    g_lo = net.g_down(g)
    assert torch.allclose(net.prior(net.prior(z, g_lo), g_lo, reverse=True), z, atol=1e-5)
    a = net.infer(feats, f0, temperature=0.0)
    b = net.infer(feats, f0, temperature=0.0)
    c = net.infer(feats, f0, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_short_overfit_loss_falls():
    torch.manual_seed(0)
    net = Audio2MotionVAE(**SMALL)
    feats, f0, motion = batch(8, 32, seed=2)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    losses = []
    for step in range(50):
        out = net(motion, feats, f0, torch.zeros(8, 32), torch.ones(8))
        loss = ((out["x_rec"] - motion) ** 2).mean() + ((out["x_prior"] - motion) ** 2).mean() + 0.01 * out["kl"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:5]), (losses[:5], losses[-10:])


def test_chunked_prediction_matches_one_pass():
    torch.manual_seed(0)
    net = Audio2MotionVAE(**SMALL).eval()
    for p in net.prior.post:
        torch.nn.init.normal_(p.weight, std=0.1)
    stats = np.stack([np.zeros(204), np.ones(204), -np.ones(204), np.ones(204)]).astype(np.float32)
    model = Audio2Motion(network=net, features="mel", person=None)
    feats, f0, _ = batch(1, 250, seed=3)
    full = predict_motion(model, feats[0].numpy(), f0[0].numpy(), stats=stats)
    chunked = predict_motion(model, feats[0].numpy(), f0[0].numpy(), stats=stats, chunk_frames=40)
    assert full.shape == (250, 68, 3)
    np.testing.assert_allclose(chunked, full, atol=1e-4)
    with pytest.raises(ValueError, match="generic"):
        predict_motion(model, feats[0].numpy(), f0[0].numpy())


def test_feature_preparation_is_gain_invariant_and_pitch_speaker_normalised():
    feats, f0, _ = batch(1, 20, seed=4)
    a = prepare_features(feats[0], "mel")
    b = prepare_features(feats[0] + 1.5, "mel")  # 15 dB louder
    assert torch.allclose(a, b, atol=1e-5)
    low = coarse_pitch(f0[0])
    high = coarse_pitch(f0[0] * 2 ** (7 / 12))  # a fifth higher voice: same contour
    assert torch.equal(low, high)
    assert int(low.max()) < PITCH_BINS and bool((low[f0[0] <= 0] == 0).all())
    with pytest.raises(ValueError, match="384"):
        prepare_features(feats[0], "whisper")
    # band mode: gain and a steady per-band background level do not change the condition
    band = prepare_features(feats[0], "mel", mode="band")
    tilt = torch.linspace(-1, 1, 80)
    assert torch.allclose(prepare_features(feats[0] + 0.7 + tilt, "mel", mode="band"), band, atol=1e-4)
    assert float(band.quantile(0.05)) < 0.05 and float(band.median()) > 0.2
    ref = mel_band_stats(feats[0] + 0.7)
    assert torch.allclose(prepare_features(feats[0] + 0.7, "mel", ref, mode="band"), band, atol=1e-4)


def test_person_normalisation_round_trip_and_kl_schedule():
    rng = np.random.default_rng(0)
    off = rng.normal(0, 0.01, (50, 68, 3)).astype(np.float32)
    stats = np.stack([off.reshape(50, -1).mean(0), off.reshape(50, -1).std(0),
                      np.quantile(off.reshape(50, -1), 0.03, 0), np.quantile(off.reshape(50, -1), 0.97, 0)])
    z = normalize_motion(torch.from_numpy(off), stats)
    assert z.shape == (50, 204)
    np.testing.assert_allclose(denormalize_motion(z, stats).numpy(), off, atol=1e-6)
    assert kl_weight(0, 0.02, 4000, 2000) == 0 and kl_weight(1000, 0.02, 4000, 2000) == pytest.approx(0.01)
    assert kl_weight(3000, 0.02, 4000, 2000) == 0.02 and kl_weight(4000, 0.02, 4000, 2000) == 0


# --------------------------------------------------------------------------------------------------------------
# post-processing
# --------------------------------------------------------------------------------------------------------------
def test_lle_weights_sum_to_one_and_reconstruct_points_of_the_set():
    rng = np.random.default_rng(0)
    db = rng.normal(0, 1, (200, 12))
    q = rng.normal(0, 1, (30, 12))
    w, idx = lle_weights(q, db, k=8, ridge=1e-3)
    assert w.shape == idx.shape == (30, 8)
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-9)
    # a point of the set is reconstructed (its own weight dominates)
    rec = lle_project(db[:10], db, k=8, ridge=1e-6)
    np.testing.assert_allclose(rec, db[:10], atol=1e-4)
    nn_dist = np.sort(np.linalg.norm(db[:10, None] - db[None], axis=-1), 1)[:, 1]
    assert (np.linalg.norm(lle_project(db[:10], db, k=8, ridge=1e-3) - db[:10], axis=1) < 0.05 * nn_dist).all()
    # a point in the affine span of its neighbours is reproduced
    mix = 0.3 * db[0] + 0.7 * db[1]
    near = np.concatenate([db[:2], db[:2] + 1e-9, rng.normal(50, 1, (20, 12))])
    np.testing.assert_allclose(lle_project(mix[None], near, k=4, ridge=1e-6)[0], mix, atol=1e-4)
    # duplicate neighbours do not break the solve (ridge)
    dup = np.repeat(db[:3], 5, axis=0)
    w2, _ = lle_weights(q[:2], dup, k=10)
    assert np.isfinite(w2).all() and np.allclose(w2.sum(1), 1)


def test_clamp_to_quantiles():
    stats = np.zeros((4, 204), np.float32)
    stats[2], stats[3] = -1.0, 2.0
    off = np.linspace(-5, 5, 10 * 204, dtype=np.float32).reshape(10, 68, 3)
    out = clamp_to_quantiles(off, stats)
    assert out.min() == -1.0 and out.max() == 2.0
    inside = (off >= -1) & (off <= 2)
    np.testing.assert_array_equal(out[inside], off[inside])
    wide = clamp_to_quantiles(off, stats, margin=0.5)
    assert wide.min() == pytest.approx(-2.5) and wide.max() == pytest.approx(3.5)


def test_gaussian_smoothing_keeps_constants_and_reduces_noise():
    x = np.ones((40, 3)) * 2.0
    np.testing.assert_allclose(gaussian_smooth(x, 1.5), x)
    n = np.random.default_rng(0).normal(0, 1, (400, 1))
    assert gaussian_smooth(n, 2.0).std() < 0.5 * n.std()


def _face(tiny_subject):
    from talkfield.dataset import open_subject

    ds = open_subject(*tiny_subject)
    q = ds.manifest.eye_quantiles
    return PersonMotion.from_arrays(np.asarray(ds.array("offsets")), np.asarray(ds.array("motion_stats")),
                                    np.asarray(ds.array("mean_shape")), (q[0], q[1]), np.asarray(ds.array("eye_open")))


def test_blink_schedule_rate_and_period():
    T = 25 * 600  # ten minutes
    for rate in (10.0, 20.0):
        c = blink_schedule(T, "rate", rate=rate, seed=3)
        starts = np.flatnonzero((c >= 1.0) & (np.roll(c, 1) < 1.0))
        assert abs(len(starts) / 10.0 - rate) < 0.15 * rate, len(starts)
    c = blink_schedule(400, "period", period=100, start=75)
    assert list(np.flatnonzero(c == 1.0)) == [78, 178, 278, 378]
    assert not blink_schedule(400, "none").any()
    with pytest.raises(ValueError, match="blink mode"):
        blink_schedule(10, "sometimes")


def test_synthesized_blinks_close_the_eyes_by_the_one_definition(tiny_subject):
    person = _face(tiny_subject)
    T = 25 * 120
    off = np.repeat(person.database.mean(0, keepdims=True), T, axis=0)
    closure = blink_schedule(T, "rate", rate=15.0, seed=1)
    out = apply_blinks(off, closure, person.closed_eyes)
    openness = person.eye_openness(out)
    shut = openness < 0.3
    events = np.flatnonzero(shut & ~np.roll(shut, 1))
    assert abs(len(events) / 2.0 - 15.0) <= 3, len(events)
    assert openness[closure == 0].min() > 0.5  # open elsewhere
    # the chain: postprocess with blinks, mouth untouched by blinks
    full = postprocess(off, person, lle_blend=0.0, clamp=False, smooth_sigma=0, lip_smooth_sigma=0,
                       blink="rate", blink_rate=15.0, seed=1)
    np.testing.assert_allclose(full, out, atol=1e-6)
    # a person who never blinks in their data still gets a closed pose from their geometry
    closed = closed_eye_pose(person.database, None, person.mean_shape)
    assert person.eye_openness(apply_blinks(off[:1], np.ones(1), closed))[0] < 0.2


def test_postprocess_lle_blend_and_clamp(tiny_subject):
    person = _face(tiny_subject)
    rng = np.random.default_rng(0)
    pred = person.database[rng.integers(0, len(person.database), 60)] + rng.normal(0, 0.01, (60, 68, 3))
    pred = pred.astype(np.float32)
    out0 = postprocess(pred, person, lle_blend=0.0, smooth_sigma=0, lip_smooth_sigma=0, clamp=False)
    np.testing.assert_allclose(out0, pred, atol=1e-6)
    out1 = postprocess(pred, person, lle_blend=1.0, smooth_sigma=0, lip_smooth_sigma=0, clamp=False)
    d_pred = np.linalg.norm((pred - person.database[:, None]).reshape(len(person.database), 60, -1), axis=-1).min(0)
    d_out = np.linalg.norm((out1 - person.database[:, None]).reshape(len(person.database), 60, -1), axis=-1).min(0)
    assert np.median(d_out) < np.median(d_pred)  # projected toward the person's own set
    out2 = postprocess(pred, person, lle_blend=0.2)
    flat = out2.reshape(60, -1)
    assert (flat >= person.stats[2] - 1e-6).all() and (flat <= person.stats[3] + 1e-6).all()


# ----------------------------------------------------------------------------------------------------------------
# pauses: found in the audio, the mouth eased closed
# ----------------------------------------------------------------------------------------------------------------
def _segment_frames(segments):
    bounds, t = [], 0
    for kind, n in segments:
        bounds.append((kind, t, t + n))
        t += n
    return bounds


@pytest.mark.parametrize("lookahead", [0, 2, 4, 10])
def test_pause_tracker_finds_known_pauses(lookahead):
    wav = speech_with_pauses(PAUSE_SEGMENTS)
    w = pause_weights(wav, lookahead)
    assert w.shape == (len(wav) // 640,) and w.min() >= 0 and w.max() <= 1
    for kind, a, b in _segment_frames(PAUSE_SEGMENTS):
        if kind == "speech":
            assert (w[a:b] == 0).all(), (a, b)  # speech onsets are never held closed
        elif b - a < 7:
            assert (w[a:b] == 0).all()  # shorter than min_pause: not a pause
        else:
            # defaults: min_pause 7, ramp 3, lead 2. A run is known to be a pause 6 - lookahead frames in; the mouth
            # is open again `lead` frames before the next speech frame when the look-ahead sees that far
            a1 = a + max(0, 6 - lookahead)
            assert (w[a:a1] == 0).all() and 0 < w[a1] < w[a1 + 1] < 1, (a, b, w[a:b])  # ramps up after speech
            end = b if lookahead < 2 else b - 2 - min(2, lookahead - 2)
            assert (w[a1 + 2:end] == 1).all(), (a, b, w[a:b])  # fully closed between the ramps
            if lookahead >= 2:
                assert (w[b - 2:b] == 0).all()  # released ahead of the onset
            if lookahead >= 4:
                assert 0 < w[b - 3] < w[b - 4] < 1  # ramps down before it


def test_pause_tracker_is_causal_with_lookahead_and_chunking_does_not_matter():
    wav = speech_with_pauses(PAUSE_SEGMENTS, seed=1)
    T = len(wav) // 640
    for L in (0, 4):
        whole = pause_weights(wav, L)
        # any block sizes, weights taken as soon as final
        tr = PauseTracker(L)
        got, rng, i = [], np.random.default_rng(L), 0
        while i < len(wav):
            n = int(rng.integers(1, 2000))
            tr.push(wav[i:i + n])
            i += n
            got.append(tr.take(tr.ready()))
            assert len(tr._quiet) <= L + 1  # bounded: only frames not taken yet
        tr.finish()
        got.append(tr.take(T))
        np.testing.assert_array_equal(np.concatenate(got), whole)
        # frame t depends on the audio of frames <= t + L only
        for t in (30, 55, 100):
            other = wav.copy()
            other[(t + L + 1) * 640:] = speech_with_pauses([("speech", T)], seed=2)[(t + L + 1) * 640:]
            np.testing.assert_array_equal(pause_weights(other, L)[: t + 1], whole[: t + 1])


def test_close_mouth_in_pauses_uses_the_persons_closed_mouth(tiny_subject):
    from talkfield import landmarks as lmk

    person = _face(tiny_subject)
    ms68 = lmk.to68(person.mean_shape)
    db_open = mouth_opening68(person.database + ms68)
    closed = person.closed_mouth()
    assert closed.shape == (len(MOUTH_POINTS), 3)
    rng = np.random.default_rng(0)
    off = person.database[rng.integers(0, len(person.database), 50)]
    w = np.linspace(0, 1, 50).astype(np.float32)
    out = close_mouth_in_pauses(off, w, closed, strength=1.0)
    others = np.setdiff1d(np.arange(68), MOUTH_POINTS)
    np.testing.assert_array_equal(out[:, others], off[:, others])  # eyes, brows, nose untouched
    np.testing.assert_allclose(out[0], off[0], atol=1e-7)
    assert mouth_opening68(out[-1] + ms68) < np.quantile(db_open, 0.1)  # the person's own closed mouth
    half = close_mouth_in_pauses(off, w, closed, strength=0.5)
    np.testing.assert_allclose(half[:, MOUTH_POINTS], 0.5 * (out[:, MOUTH_POINTS] + off[:, MOUTH_POINTS]), atol=1e-6)
    # the chain: with audio, postprocess closes the mouth in the pauses; pause_close=0 (or no audio) does not
    wav = speech_with_pauses(PAUSE_SEGMENTS)
    T = len(wav) // 640
    pred = person.database[rng.integers(0, len(person.database), T)]
    kw = dict(lle_blend=0.0, smooth_sigma=0, lip_smooth_sigma=0, clamp=False)
    base = postprocess(pred, person, **kw)
    np.testing.assert_array_equal(postprocess(pred, person, audio=wav, pause_close=0.0, **kw), base)
    got = postprocess(pred, person, audio=wav, lookahead=4, **kw)
    np.testing.assert_allclose(got, close_mouth_in_pauses(base, pause_weights(wav, 4), closed), atol=1e-6)
    opening = mouth_opening68(got + ms68)
    assert opening[4:6].max() < np.quantile(db_open, 0.1)  # inside the leading pause (frames 0-9)
