"""The embedded sample subject (datamodules.sample) and the streaming video writer (talkfield.media)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from talkfield.camera import project, rotation_angle_deg, rotation_matrix
from talkfield.landmarks import OUTER_EYE_CORNERS, RIGID, eye_ratio, lip_width, mouth_opening

DURATION, SIZE, FPS, SR, SEED = 6.0, 256, 25, 16000, 3


def _load(d: Path) -> tuple[dict, dict]:
    man = json.loads((d / "ground_truth.json").read_text())
    arrays = {k: np.load(d / v["file"], allow_pickle=False) for k, v in man["arrays"].items()}
    return man, arrays


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    from datamodules.sample import generate_sample

    d = tmp_path_factory.mktemp("sample")
    video = generate_sample(d, seed=SEED, duration=DURATION, size=SIZE, fps=FPS, sample_rate=SR)
    man, arrays = _load(d)
    return d, Path(video), man, arrays


@pytest.fixture(scope="module")
def frames(sample):
    import av

    with av.open(str(sample[1])) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _detect(frames):
    import mediapipe as mp

    out = []
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, refine_landmarks=True, max_num_faces=1) as fm:
        for f in frames:
            r = fm.process(f)
            if r.multi_face_landmarks:
                lm = np.array([[p.x, p.y] for p in r.multi_face_landmarks[0].landmark])
                out.append(lm * [f.shape[1], f.shape[0]])
            else:
                out.append(None)
    return out


# ----------------------------------------------------------------------------------------------- mesh
def test_triangles_rebuilt_from_face_mesh_edges():
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    from datamodules.sample.face_model import build_face_model, face_mesh_triangles, mesh_edges

    model = build_face_model()
    tri = face_mesh_triangles(model.uv_rest[:468])
    assert 852 <= len(tri) <= 900
    # every triangle edge is a tessellation edge, and each edge borders at most two triangles
    edges = {tuple(sorted(e)) for e in FACEMESH_TESSELATION}
    und = Counter(tuple(sorted((int(t[i]), int(t[(i + 1) % 3])))) for t in tri for i in range(3))
    assert set(und) <= edges and max(und.values()) <= 2
    assert len(set(und)) >= 0.99 * len(edges)
    # consistent orientation: a shared edge runs in opposite directions in its two triangles
    directed = Counter((int(t[i]), int(t[(i + 1) % 3])) for t in tri for i in range(3))
    assert max(directed.values()) == 1
    # boundary loops: the face outline, the mouth and the two eyes (88 edges in all)
    assert sum(1 for c in und.values() if c == 1) == 88
    # normals point towards the camera at the rest pose (negative z in the head frame) for nearly all faces
    p = model.rest
    n = np.cross(p[tri[:, 1]] - p[tri[:, 0]], p[tri[:, 2]] - p[tri[:, 0]])
    assert np.mean(n[:, 2] < 0) > 0.9
    assert len(mesh_edges(tri)) == len(und)


def test_triangles_from_edges_drops_fake_cliques_and_orients():
    from datamodules.sample.face_model import triangles_from_edges

    # an octahedron seen from the front (apex 0 in the middle, 1..4 around it, 5 behind): 8 faces, closed
    pts = np.array([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1], [0.1, 0.1]], float)
    ring = [1, 2, 3, 4]
    edges = [(0, r) for r in ring] + [(5, r) for r in ring] + [(ring[i], ring[(i + 1) % 4]) for i in range(4)]
    tri = triangles_from_edges(edges, pts)
    assert len(tri) == 8
    directed = Counter((int(t[i]), int(t[(i + 1) % 3])) for t in tri for i in range(3))
    assert max(directed.values()) == 1 and len(directed) == 24  # closed and consistently oriented
    # a fan with a chord: the 3-cycle (1,2,3) around the centre vertex 0 is not a face
    edges = [(0, 1), (0, 2), (0, 3), (1, 2), (2, 3), (3, 1)]
    tri = triangles_from_edges(edges, np.array([[0, 0], [1, 0], [-0.5, 0.9], [-0.5, -0.9]]))
    und = Counter(tuple(sorted((int(t[i]), int(t[(i + 1) % 3])))) for t in tri for i in range(3))
    assert max(und.values()) <= 2


# ----------------------------------------------------------------------------------------------- outputs
def test_layout_shapes_and_video(sample, frames):
    d, video, man, a = sample
    T = int(round(DURATION * FPS))
    assert video == d / "sample.mp4" and man["frames"] == T
    assert not list(d.glob(".sample-tmp-*")) and not list(d.glob(".*.tmp*"))
    shapes = {"c2w": (T, 4, 4), "K": (3, 3), "landmarks_2d": (T, 478, 2), "landmarks_3d": (T, 478, 3),
              "mouth_opening": (T,), "lip_width": (T,), "blink": (T,), "viseme": (T,), "head_pose_deg": (T, 3),
              "articulators": (T, 4), "audio": (T * SR // FPS,), "f0": (2 * T,), "voiced": (2 * T,)}
    for k, s in shapes.items():
        assert a[k].shape == s, k
        assert list(a[k].shape) == man["arrays"][k]["shape"]
    for k in ("landmarks_2d", "landmarks_3d", "c2w", "audio", "lip_width"):
        assert np.isfinite(a[k]).all(), k
    assert len(frames) == T and frames[0].shape == (SIZE, SIZE, 3)
    # the background is static: the top corners (studio backdrop) do not change beyond coding noise
    stack = np.stack(frames).astype(np.float32)
    corners = np.concatenate([stack[:, :SIZE // 12, :SIZE // 12], stack[:, :SIZE // 12, -SIZE // 12:]], axis=2)
    assert corners.std(0).mean() < 1.5
    assert stack[:, SIZE // 3:2 * SIZE // 3, SIZE // 3:2 * SIZE // 3].std(0).mean() > 5  # while the face moves
    import av

    with av.open(str(video)) as c:
        vs, aus = c.streams.video[0], c.streams.audio[0]
        assert vs.average_rate == FPS and vs.codec_context.name == "h264"
        assert vs.codec_context.pix_fmt == "yuv420p"
        assert aus.codec_context.name == "aac" and aus.rate == SR
        n = sum(f.samples for f in c.decode(audio=0))
    assert abs(n - T * SR / FPS) < 3 * 1024
    # phones: contiguous, covering the clip, with the inventory's classes
    phones = json.loads((d / man["phones"]).read_text())
    starts = np.array([p["start"] for p in phones])
    ends = np.array([p["end"] for p in phones])
    assert starts[0] == 0 and abs(ends[-1] - T / FPS) < 1e-6 and np.allclose(starts[1:], ends[:-1])
    classes = {p["class"] for p in phones}
    assert {"vowel", "stop", "fricative", "nasal", "pause"} <= classes
    assert {"p", "b", "m"} & {p["phone"] for p in phones}


def test_audio_track_is_aligned_with_frame_zero(sample):
    """Decoded as preprocessing decodes it, the AAC track matches the ground-truth waveform at lag 0 +- 1 frame."""
    from scipy.signal import correlate

    from talkfield.audio import decode_audio

    _, video, _, a = sample
    wav, start = decode_audio(video, SR)
    assert abs(start) < 1.0 / FPS
    ref = a["audio"].astype(np.float64)
    n = min(len(wav), len(ref))
    xc = correlate(wav[:n].astype(np.float64), ref[:n], mode="full", method="fft")
    lag = int(np.argmax(xc)) - (n - 1)
    assert abs(lag) <= SR // FPS
    assert xc.max() / np.sqrt((wav[:n] ** 2).sum() * (ref[:n] ** 2).sum()) > 0.9  # the same sound


def test_video_shows_the_rendered_face(sample, frames):
    """The decoded frames are the rendered frames (lossy coding aside): re-render two frames and compare."""
    from datamodules.sample.face_model import build_face_model
    from datamodules.sample.render import FrameState, Renderer

    d, _, man, a = sample
    ren = Renderer(build_face_model(), SIZE)
    tor = a["torso_pose_deg"]
    for i in (0, len(frames) // 2):
        st = FrameState(head_R=rotation_matrix(*np.radians(a["head_pose_deg"][i])), head_t=a["head_translation"][i],
                        torso_R=rotation_matrix(*np.radians(tor[i])), torso_t=a["torso_translation"][i],
                        jaw=a["articulators"][i, 0], close=a["articulators"][i, 1], wide=a["articulators"][i, 2],
                        round=a["articulators"][i, 3], blink=a["blink"][i])
        rgb, uv, X = ren.render(st)
        assert np.abs(uv - a["landmarks_2d"][i]).max() < 1e-3
        assert np.abs(rgb.astype(float) - frames[i]).mean() < 4.0


def test_ground_truth_follows_camera_conventions(sample):
    _, _, man, a = sample
    uv, z = project(a["landmarks_3d"].astype(np.float64), a["c2w"], a["K"])
    assert np.abs(uv - a["landmarks_2d"]).max() < 1e-2
    assert (z > 0).all()
    assert np.allclose(a["K"][:2, 2], SIZE / 2) and a["K"][0, 0] == a["K"][1, 1]
    # head units and origin at rest; rigid points stay rigid under expression
    rest = a["rest_landmarks_3d"]
    r, l_ = OUTER_EYE_CORNERS
    assert abs(np.linalg.norm(rest[l_] - rest[r]) - 1.0) < 1e-5
    assert np.abs(rest[RIGID].mean(0)).max() < 1e-5
    assert np.abs(a["landmarks_3d"][:, RIGID] - rest[RIGID]).max() < 0.02
    # axes: x to the subject's left (image right when frontal), y down, z into the face; frontal camera R = I
    assert rest[l_, 0] > rest[r, 0] and rest[152, 1] > rest[10, 1] and rest[4, 2] < rest[RIGID, 2].mean()
    R_head = rotation_matrix(*np.radians(a["head_pose_deg"]).T)
    assert rotation_angle_deg(a["c2w"][:, :3, :3], np.swapaxes(R_head, 1, 2)).max() < 0.01  # float32 angles
    assert (a["c2w"][:, 2, 3] < -3).all()


def test_head_motion_spans_the_range_smoothly(sample):
    _, _, _, a = sample
    ang = a["head_pose_deg"]
    for k, lim in enumerate((15, 10, 5)):
        assert ang[:, k].max() == pytest.approx(lim, abs=0.01) and ang[:, k].min() == pytest.approx(-lim, abs=0.01)
    step = rotation_angle_deg(a["c2w"][1:, :3, :3], a["c2w"][:-1, :3, :3])
    assert step.max() < 2.5  # degrees per frame at 25 fps
    assert np.abs(np.diff(a["torso_pose_deg"][:, 0])).max() < np.abs(np.diff(ang[:, 0])).max()


def test_blinks(sample):
    _, _, man, a = sample
    b = a["blink"]
    events = int(np.sum((b[1:] >= 0.5) & (b[:-1] < 0.5)) + (b[0] >= 0.5))
    assert events / DURATION * 60 >= 20
    assert man["blinks_per_minute"] >= 20
    # the eyelids really close in 3D on those frames
    er = eye_ratio(a["landmarks_3d"])
    assert er[b > 0.95].max() < 0.25 * np.median(er[b < 0.05])


def test_mouth_follows_visemes_not_loudness(sample):
    d, _, man, a = sample
    T = man["frames"]
    spf = SR // FPS
    audio = a["audio"][: T * spf].reshape(T, spf)
    energy = np.sqrt((audio.astype(np.float64) ** 2).mean(1))
    for e in (energy, np.log(energy + 1e-5)):
        assert abs(np.corrcoef(e, a["lip_width"])[0, 1]) < 0.3
    assert np.allclose(a["lip_width"], lip_width(a["landmarks_3d"]), atol=1e-5)
    # the viseme of frame i is that of the phone sounding at i / fps + visual lead (40-80 ms)
    lead = man["visual_lead_s"]
    assert 0.04 <= lead <= 0.08
    phones = json.loads((d / man["phones"]).read_text())
    starts = np.array([p["start"] for p in phones])
    t = np.minimum(np.arange(T) / FPS + lead, phones[-1]["end"])
    idx = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, len(phones) - 1)
    names = [man["visemes"][v] for v in a["viseme"]]
    assert names == [phones[i]["viseme"] for i in idx]
    # bilabial closures close the lips; open vowels open them
    names = np.array(names)
    mo = a["mouth_opening"]
    assert (names == "PP").any() and (names == "aa").any()
    assert np.median(mo[names == "PP"]) < 0.35 * np.median(mo[names == "aa"])
    assert mo[names == "PP"].min() < 0.03


def test_pitch_contour_is_in_the_audio(sample):
    """An independent F0 estimator (WORLD's DIO + StoneMask) recovers the ground-truth pitch on voiced frames."""
    import pyworld

    _, _, man, a = sample
    x = a["audio"].astype(np.float64)
    f0, t = pyworld.dio(x, SR, f0_floor=80, f0_ceil=400, frame_period=20.0)
    f0 = pyworld.stonemask(x, f0, t, SR)
    n = min(len(f0), len(a["f0"]))
    sel = a["voiced"][:n] & (f0[:n] > 0)
    assert sel.sum() > 0.3 * a["voiced"].sum() and a["voiced"].mean() > 0.3
    rel = np.abs(f0[:n][sel] / a["f0"][:n][sel] - 1)
    assert np.median(rel) < 0.05
    assert 150 < np.median(a["f0"][a["voiced"]]) < 260 and a["f0"][a["voiced"]].std() > 8  # a moving contour


def test_lip_width_uncorrelated_with_energy_over_a_minute():
    """Without rendering: a minute of the timeline, its audio and the mouth it drives."""
    from datamodules.sample.face_model import build_face_model
    from datamodules.sample.render import FrameState, Renderer
    from datamodules.sample.speech import phone_timeline, synthesize
    from datamodules.sample.visemes import frame_articulation

    rng = np.random.default_rng(7)
    T = 1500
    phones = phone_timeline(rng, T / FPS)
    audio = synthesize(phones, T / FPS, SR, rng)[: T * (SR // FPS)]
    art, _ = frame_articulation(phones, T, FPS, 0.06)
    ren = Renderer(build_face_model(), 64)
    I = np.eye(3)
    widths = np.array([lip_width(ren.deform(FrameState(I, np.zeros(3), I, np.zeros(3), *art[i]))[0]) for i in range(T)])
    energy = np.sqrt((audio.reshape(T, -1).astype(np.float64) ** 2).mean(1))
    assert abs(np.corrcoef(energy, widths)[0, 1]) < 0.3
    assert abs(np.corrcoef(np.log(energy + 1e-5), widths)[0, 1]) < 0.3
    assert widths.std() > 0.03  # the lips do move


def test_mouth_and_jaw_geometry():
    from datamodules.sample.face_model import LOWER_INNER_LIP, UPPER_INNER_LIP, build_face_model
    from datamodules.sample.render import FrameState, Renderer

    ren = Renderer(build_face_model(), 256)
    I = np.eye(3)
    rest, _ = ren.deform(FrameState(I, np.zeros(3), I, np.zeros(3)))
    opened, _ = ren.deform(FrameState(I, np.zeros(3), I, np.zeros(3), jaw=1.0))
    d = np.linalg.norm(opened - rest, axis=1)
    assert d[[14, 17, 152]].min() > 0.1  # lower lip and chin move
    assert opened[152, 1] > rest[152, 1] and opened[152, 2] > rest[152, 2]  # down and back (a rotation)
    assert d[RIGID].max() < 1e-9 and d[[13, 0, 4]].max() < 0.02  # upper face and upper lip stay
    # an opened mouth shows a dark interior with teeth
    rgb, uv, _ = ren.render(FrameState(I, np.zeros(3), I, np.zeros(3), jaw=1.0))
    import cv2

    mask = np.zeros(rgb.shape[:2], np.uint8)
    poly = np.r_[UPPER_INNER_LIP, LOWER_INNER_LIP[::-1][1:-1]]
    cv2.fillPoly(mask, [np.round(uv[poly] - 0.5).astype(np.int32)], 1)
    inside = rgb[mask > 0].astype(float).mean(1)
    assert (inside < 60).mean() > 0.15 and (inside > 150).mean() > 0.1
    closed, _ = ren.deform(FrameState(I, np.zeros(3), I, np.zeros(3), close=1.0))
    assert np.linalg.norm(closed[13] - closed[14]) < 0.01 < np.linalg.norm(rest[13] - rest[14])


def test_detector_finds_the_face_and_agrees_with_ground_truth(sample, frames):
    _, _, _, a = sample
    det = _detect(frames)
    found = [i for i, x in enumerate(det) if x is not None]
    assert len(found) >= 0.99 * len(frames)
    err = np.stack([np.linalg.norm(det[i] - a["landmarks_2d"][i], axis=1) for i in found])
    assert np.median(err) < 3.0
    # blinks and mouth motion are visible to the detector as the ground truth says
    d = np.stack([det[i] for i in found])
    g = a["landmarks_2d"][found]
    assert np.corrcoef(eye_ratio(d), eye_ratio(g))[0, 1] > 0.8
    assert np.corrcoef(mouth_opening(d), mouth_opening(g))[0, 1] > 0.8


@pytest.mark.slow
def test_detector_agreement_at_full_size(tmp_path):
    import av

    from datamodules.sample import generate_sample

    video = generate_sample(tmp_path, seed=11, duration=8.0, size=512, fps=25)
    _, a = _load(tmp_path)
    with av.open(str(video)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    det = _detect(frames)
    found = [i for i, x in enumerate(det) if x is not None]
    assert len(found) >= 0.99 * len(frames)
    err = np.stack([np.linalg.norm(det[i] - a["landmarks_2d"][i], axis=1) for i in found])
    assert np.median(err) < 3.0


# ----------------------------------------------------------------------------------------------- API
def test_idempotent_deterministic_and_atomic(sample, tmp_path, monkeypatch):
    import time

    from datamodules.sample import generate_sample, sample_is_complete
    from datamodules.sample.speech import phone_timeline, synthesize
    from talkfield.media import VideoWriter

    d, video, man, a = sample
    before = video.stat().st_mtime_ns
    t0 = time.perf_counter()
    assert generate_sample(d, seed=SEED, duration=DURATION, size=SIZE, fps=FPS) == video
    assert time.perf_counter() - t0 < 1.0 and video.stat().st_mtime_ns == before
    assert sample_is_complete(d, seed=SEED, duration=DURATION, size=SIZE, fps=FPS)
    assert not sample_is_complete(d, seed=SEED + 1, duration=DURATION, size=SIZE, fps=FPS)

    def make(seed):
        rng = np.random.default_rng(seed)
        ph = phone_timeline(rng, 3.0)
        return [p.to_dict() for p in ph], synthesize(ph, 3.0, SR, rng)

    assert make(5)[0] == make(5)[0] and np.array_equal(make(5)[1], make(5)[1])
    assert make(5)[0] != make(6)[0]

    # a failure half-way leaves nothing behind
    n = {"frames": 0}
    real_write = VideoWriter.write

    def failing(self, frame):
        n["frames"] += 1
        if n["frames"] > 5:
            raise RuntimeError("disk full")
        real_write(self, frame)

    monkeypatch.setattr(VideoWriter, "write", failing)
    out = tmp_path / "broken"
    with pytest.raises(RuntimeError, match="disk full"):
        generate_sample(out, seed=0, duration=1.0, size=64, fps=25)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("kw, name", [({"duration": 0}, "duration"), ({"duration": -3.0}, "duration"),
                                      ({"size": 0}, "size"), ({"size": -256}, "size"), ({"fps": 0}, "fps"),
                                      ({"fps": -25}, "fps"), ({"duration": float("nan")}, "duration")])
def test_bad_settings_are_refused(tmp_path, kw, name):
    from datamodules.sample import generate_sample

    with pytest.raises(ValueError, match=name):
        generate_sample(tmp_path, **kw)
    assert not (tmp_path / "sample.mp4").exists()


def test_face_geometry_and_voice_pitch_options(sample, tmp_path):
    from datamodules.sample import generate_sample, sample_is_complete

    _, _, man0, a0 = sample
    assert man0["face_geometry"] == {"mouth_width": 1.0, "mouth_height": 1.0, "chin_length": 1.0}
    assert "face_variation" not in man0["settings"]  # the default face and voice keep the settings they had
    kw = dict(seed=SEED, duration=1.0, size=128, fps=FPS, face_variation=0.25, voice_pitch=110.0)
    generate_sample(tmp_path / "a", **kw)
    generate_sample(tmp_path / "b", **kw)
    man, a = _load(tmp_path / "a")
    _, b = _load(tmp_path / "b")
    assert all(np.array_equal(a[k], b[k]) for k in a)  # deterministic from the seed
    assert sample_is_complete(tmp_path / "a", **kw)
    assert not sample_is_complete(tmp_path / "a", **{**kw, "voice_pitch": None})
    scales = man["face_geometry"]
    assert any(abs(v - 1.0) > 0.05 for v in scales.values()) and all(abs(v - 1) <= 0.25 for v in scales.values())
    r0, r = a0["rest_landmarks_3d"], a["rest_landmarks_3d"]
    np.testing.assert_allclose(r[RIGID], r0[RIGID], atol=1e-9)  # head units and the canonical origin kept
    ratio = lip_width(r[None])[0] / lip_width(r0[None])[0]
    assert abs(ratio - scales["mouth_width"]) < 0.5 * abs(scales["mouth_width"] - 1) + 0.02
    # the same face and phones with the default voice: the pitch contour is the same shape, 110 / 195 as high
    generate_sample(tmp_path / "c", **{**kw, "voice_pitch": None})
    _, c = _load(tmp_path / "c")
    np.testing.assert_array_equal(c["rest_landmarks_3d"], r)
    np.testing.assert_allclose(a["f0"] / c["f0"], 110.0 / 195.0, rtol=1e-4)
    with pytest.raises(ValueError, match="face_variation"):
        generate_sample(tmp_path / "c", face_variation=0.9)
    with pytest.raises(ValueError, match="voice_pitch"):
        generate_sample(tmp_path / "c", voice_pitch=5.0)


def test_cli_refuses_unknown_keys(capsys):
    from datamodules.sample.__main__ import main

    assert main(["out=/nonexistent", "colour=red"]) == 2
    assert "unknown argument" in capsys.readouterr().err
    assert main(["out=/nonexistent/x", "duration=0"]) == 2
    assert "duration" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- VideoWriter
def test_video_writer_odd_size_audio_alignment_and_cleanup(tmp_path):
    import av

    from talkfield.audio import decode_audio
    from talkfield.media import VideoWriter

    T, w, h = 40, 101, 63
    audio = np.zeros(T * 640, np.float32)
    audio[16 * 640:16 * 640 + 320] = 0.8 * np.sin(np.arange(320) * 2 * np.pi * 1000 / SR)
    path = tmp_path / "a.mp4"
    with VideoWriter(path, 25, (w, h), audio, SR) as vw:
        for i in range(T):
            vw.write(np.full((h, w, 3), 255 if i == 16 else 0, np.uint8))
    assert vw.coded_size == (102, 64)
    with av.open(str(path)) as c:
        lum = [f.to_ndarray(format="rgb24")[:h, :w].mean() for f in c.decode(video=0)]
    assert len(lum) == T and int(np.argmax(lum)) == 16
    wav, start = decode_audio(path, SR)
    assert abs(start) < 1e-3
    assert abs(int(np.argmax(np.abs(wav) > 0.2)) - 16 * 640) <= 16  # audio sample 0 plays with frame 0
    assert list(tmp_path.iterdir()) == [path]

    with pytest.raises(ValueError, match="shape"):
        with VideoWriter(tmp_path / "b.mp4", 25, (64, 64)) as vw:
            vw.write(np.zeros((64, 64, 3), np.uint8))
            vw.write(np.zeros((32, 64, 3), np.uint8))
    assert sorted(tmp_path.iterdir()) == [path]
    with pytest.raises(ValueError, match="size"):
        VideoWriter(tmp_path / "c.mp4", 25, (0, 64))
