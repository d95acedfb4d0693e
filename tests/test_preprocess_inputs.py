"""Bad input: each case fails with a clear message (the file, the frames, what to do) and leaves nothing behind;
several faces and short videos warn. Also A/V alignment from stream start times and VFR -> 25 fps decoding."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from datamodules.preprocess import PreprocessError, preprocess_video
from datamodules.preprocess import crop, decode
from datamodules.preprocess.common import merge_cfg

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "WDA_KatieHill_000.mp4"


@pytest.fixture(scope="module")
def real_frames():
    import av

    with av.open(str(REAL)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    from talkfield.audio import load_audio

    return frames, load_audio(REAL)


def write_video(path: Path, frames, fps=25, audio=None, sr=16000, audio_start_s=0.0, times=None) -> Path:
    """H.264 mp4 from RGB frames (optional per-frame times in seconds for VFR) and optional mono audio."""
    import av
    from fractions import Fraction

    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        h, w = frames[0].shape[:2]
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "23"}
        if times is not None:
            vs.codec_context.time_base = Fraction(1, 1000)
        as_ = c.add_stream("aac", rate=sr, layout="mono") if audio is not None else None
        for i, img in enumerate(frames):
            fr = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if times is not None:
                fr.pts = int(round(times[i] * 1000))
                fr.time_base = Fraction(1, 1000)
            for p in vs.encode(fr):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if as_ is not None:
            off = int(round(audio_start_s * sr))
            for a in range(0, len(audio), 1024):
                piece = np.zeros(1024, np.float32)
                seg = audio[a:a + 1024]
                piece[:len(seg)] = seg
                fr = av.AudioFrame.from_ndarray(piece[None], format="fltp", layout="mono")
                fr.sample_rate = sr
                fr.pts = a + off
                for p in as_.encode(fr):
                    c.mux(p)
            for p in as_.encode():
                c.mux(p)
    return path


def _nothing_left(data: Path, name: str) -> None:
    assert not (data / name).exists()
    assert not (data / "_work" / name).exists()


def test_no_audio_track(tmp_path, real_frames):
    frames, _ = real_frames
    v = write_video(tmp_path / "mute.mp4", frames[:150])
    with pytest.raises(PreprocessError, match=r"mute\.mp4.*no audio track.*frames 0-149.*audio=<"):
        preprocess_video(v, "x", tmp_path / "data", show_progress=False)
    _nothing_left(tmp_path / "data", "x")


def test_too_short(tmp_path, real_frames):
    frames, wav = real_frames
    v = write_video(tmp_path / "short.mp4", frames[:75], audio=wav[:75 * 640])
    with pytest.raises(PreprocessError, match=r"short\.mp4: only 3\.00 s \(frames 0-74\).*at least 5 s"):
        preprocess_video(v, "x", tmp_path / "data", show_progress=False)
    _nothing_left(tmp_path / "data", "x")


def test_audio_shorter_than_video(tmp_path):
    import av

    speech = tmp_path / "speech.wav"
    from talkfield.audio import load_audio

    wav = load_audio(REAL)[: 16000 * 5]
    with av.open(str(speech), "w") as c:
        s = c.add_stream("pcm_s16le", rate=16000, layout="mono")
        fr = av.AudioFrame.from_ndarray((wav * 32767).astype(np.int16)[None], format="s16", layout="mono")
        fr.sample_rate = 16000
        for p in s.encode(fr):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    with pytest.raises(PreprocessError, match=r"speech\.wav: the audio \(5\.00 s\) is shorter than the video.*"
                                              r"frames 125-199 have no sound"):
        preprocess_video(REAL, "x", tmp_path / "data", audio=speech, show_progress=False)
    _nothing_left(tmp_path / "data", "x")


def test_unreadable_and_truncated(tmp_path):
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(b"\x00\x01 not a video " * 1000)
    with pytest.raises(PreprocessError, match=r"garbage\.mp4: cannot be read as a video.*re-encode"):
        preprocess_video(bad, "x", tmp_path / "data", show_progress=False)
    trunc = tmp_path / "truncated.mp4"
    data = REAL.read_bytes()
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(PreprocessError, match=r"truncated\.mp4.*(truncated|unreadable|cannot)"):
        preprocess_video(trunc, "x", tmp_path / "data", show_progress=False)
    with pytest.raises(PreprocessError, match="no such file"):
        preprocess_video(tmp_path / "missing.mp4", "x", tmp_path / "data", show_progress=False)
    _nothing_left(tmp_path / "data", "x")


def test_no_face_in_too_many_frames(tmp_path, real_frames):
    frames, wav = real_frames
    fr = [f if not (40 <= i < 100) else np.full_like(f, 90) for i, f in enumerate(frames[:150])]
    v = write_video(tmp_path / "noface.mp4", fr, audio=wav[:150 * 640])
    with pytest.raises(PreprocessError, match=r"noface\.mp4: no face found in .*frames 40-99 .*"
                                              r"preprocess\.landmarks\.max_missing"):
        preprocess_video(v, "x", tmp_path / "data", show_progress=False)
    _nothing_left(tmp_path / "data", "x")


def test_face_too_small(tmp_path, real_frames):
    import cv2

    frames, wav = real_frames
    small = []
    for f in frames[:150]:
        canvas = np.full((360, 640, 3), 60, np.uint8)
        canvas[100:196, 300:396] = cv2.resize(f, (96, 96), interpolation=cv2.INTER_AREA)
        small.append(canvas)
    v = write_video(tmp_path / "tiny_face.mp4", small, audio=wav[:150 * 640])
    with pytest.raises(PreprocessError, match=r"tiny_face\.mp4: the face is too small \(\d+ px, frames 0-149\)"):
        preprocess_video(v, "x", tmp_path / "data", show_progress=False)
    _nothing_left(tmp_path / "data", "x")


def test_several_faces_tracks_the_largest(tmp_path, real_frames, caplog):
    import cv2

    frames, _ = real_frames
    two = []
    for f in frames[:20:5]:
        canvas = np.full((512, 900, 3), 40, np.uint8)
        canvas[:, :512] = f
        canvas[200:456, 620:876] = cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA)
        two.append(canvas)
    v = write_video(tmp_path / "two.mp4", two, fps=1)
    info = decode.probe(v)
    scan = crop.scan_faces(v, info, every=1, side=900, show=False)
    assert (scan["multi"] == 2).all()
    with caplog.at_level(logging.WARNING, logger="talkfield.preprocess"):
        rec = crop.choose_crop(scan, info, merge_cfg(None), 512)
    assert "several faces" in caplog.text and "largest" in caplog.text
    assert rec["x0"] + rec["size"] / 2 < 512, "the crop is centred on the large face on the left"


def test_audio_aligned_from_stream_start_and_vfr(tmp_path, real_frames):
    """Audio that starts 0.4 s after the video is shifted by zeros; VFR frames land at 25 fps."""
    frames, _ = real_frames
    sr = 16000
    click = np.zeros(sr * 3, np.float32)
    click[sr: sr + 400] = 0.8  # 1.0 s after the audio stream starts
    # VFR: 60 source frames with irregular spacing spanning ~6 s; frame k shows grey level 4k
    times = np.cumsum(np.r_[0, np.where(np.arange(59) % 2 == 0, 0.06, 0.14)])
    imgs = [np.full((64, 64, 3), 4 * k, np.uint8) for k in range(60)]
    v = write_video(tmp_path / "vfr.mp4", imgs, fps=25, audio=click, audio_start_s=0.4, times=times)
    info = decode.probe(v)
    wav, rec = decode.aligned_audio(v, info, None)
    onset = int(np.argmax(np.abs(wav) > 0.3))
    assert abs(onset / sr - 1.4) < 1 / 25, (onset / sr, rec)
    out = dict(decode.iter_frames(v, info=info))
    assert len(out) == info.n_frames and abs(info.n_frames - 25 * (times[-1] + 0.1)) <= 2
    for i in (0, 10, 37, 80, info.n_frames - 1):
        t = i / 25
        k = int(np.searchsorted(times, t + 1e-6) - 1)  # the source frame on screen at t
        assert abs(float(out[i][..., 0].mean()) - 4 * k) <= 3, (i, k)


def test_rotation_metadata_is_honoured(tmp_path):
    """A display matrix of 90 degrees counter-clockwise (PyAV's convention, as FFmpeg's autorotate applies it)
    turns a 64x32 landscape frame into a 32x64 portrait one with its top-left corner at the bottom-left."""
    import av

    p = tmp_path / "rot.mp4"
    with av.open(str(p), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 32, "yuv420p"
        s.set_display_rotation(90)
        for _ in range(10):
            img = np.zeros((32, 64, 3), np.uint8)
            img[:8, :8] = (255, 0, 0)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    info = decode.probe(p)
    assert (info.width, info.height, info.rotation) == (32, 64, 270)
    _, img = next(decode.iter_frames(p, info=info))
    assert img.shape == (64, 32, 3)
    assert img[-6:, :6, 0].mean() > 200 and img[:6, :6, 0].mean() < 30
