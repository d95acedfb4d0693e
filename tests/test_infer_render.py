"""End to end on CPU (slow): the tiny subject's trained head + Audio2Motion render a 5 s clip from an m4a file;
the mp4 decodes with the right frame count and an audio track within one frame of the video."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from talkfield.inference import Knobs, TalkingHeadPipeline
from tests.test_infer import decode_video, speechlike, write_audio

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_subject, tiny_head_ckpt, tiny_a2m_ckpt, tmp_path_factory):
    data_dir, name = tiny_subject
    runs = tmp_path_factory.mktemp("no_runs")  # no torso run there: head-only, and said so
    return TalkingHeadPipeline.from_subject(name, data_dir=data_dir, runs_dir=runs, device="cpu",
                                            head=tiny_head_ckpt, a2m=tiny_a2m_ckpt)


def test_tiny_subject_renders_a_5s_clip(tiny_subject, tiny_head_ckpt, tiny_a2m_ckpt, tmp_path, caplog):
    data_dir, name = tiny_subject
    with caplog.at_level(logging.WARNING, logger="talkfield.inference"):
        pipe = TalkingHeadPipeline.from_subject(name, data_dir=data_dir, runs_dir=tmp_path / "runs", device="cpu",
                                                head=tiny_head_ckpt, a2m=tiny_a2m_ckpt)
    assert "no torso run" in caplog.text and "head-only" in caplog.text
    audio = write_audio(tmp_path / "speech.m4a", speechlike(5.0, 44100, 2), 44100, "aac", "mp4")
    seen = []
    out = tmp_path / "new_folder" / "talk.mp4"
    res = pipe.render_result(audio, out, Knobs(blink="period", batch_frames=4, pose="loop"),
                             progress=lambda d, t, f: seen.append((d, t, f)), show_progress=False)
    assert res.path == out and out.is_file()
    frames, audio_s = decode_video(out)
    assert len(frames) == res.frames == 125
    assert abs(audio_s - len(frames) / 25) < 1 / 25
    side = pipe.renderer.out_size
    assert frames[0].shape == (side, side, 3)
    assert np.std([f.astype(np.float32).mean() for f in frames]) > 0 or np.abs(
        frames[0].astype(int) - frames[60].astype(int)).max() > 0  # the clip is not one frozen image
    assert seen[-1][:2] == (125, 125) and all(b[0] > a[0] for a, b in zip(seen, seen[1:]))
    assert set(res.timings) >= {"decode_audio", "features", "audio2motion", "postprocess", "head", "sr"}
    assert [p.name for p in out.parent.iterdir()] == ["talk.mp4"]  # no temporary file left


def test_tiny_subject_stream_and_paste_back(tiny_pipeline, tmp_path):
    audio = write_audio(tmp_path / "speech.wav", speechlike(2.0, 16000), 16000, "pcm_s16le", "wav")
    path, stats = tiny_pipeline.render_stream(audio, tmp_path / "stream.mp4", Knobs(lookahead=2), realtime=False)
    frames, audio_s = decode_video(path)
    assert len(frames) == 50 and len(stats.latencies) == 50
    assert abs(audio_s - 2.0) < 1 / 25 and np.isfinite(stats.percentile(95))
    res = tiny_pipeline.render_result(audio, tmp_path / "paste.mp4", Knobs(paste_back=True, pose="static"),
                                      show_progress=False)
    crop = tiny_pipeline.ds.manifest.crop
    frames, _ = decode_video(res.path)
    assert len(frames) == 50
    assert frames[0].shape[:2] == (crop["source_height"] + crop["source_height"] % 2,
                                   crop["source_width"] + crop["source_width"] % 2)


def test_cancel_leaves_no_file(tiny_pipeline, tmp_path):
    import threading

    from talkfield.inference import Cancelled

    audio = write_audio(tmp_path / "speech.flac", speechlike(3.0, 22050), 22050, "flac", "flac")
    cancel = threading.Event()
    out = tmp_path / "talk.mp4"

    def progress(done, total, fps):
        if done >= 8:
            cancel.set()

    with pytest.raises(Cancelled):
        tiny_pipeline.render(audio, out, Knobs(batch_frames=4), progress=progress, cancel=cancel,
                             show_progress=False)
    assert list(Path(tmp_path).glob("*.mp4")) == [] and not any(p.name.endswith(".tmp.mp4") for p in tmp_path.iterdir())


def test_compiled_head_is_cuda_only(tiny_pipeline, caplog):
    """infer.compile on a CPU pipeline: a notice, and the head field stays eager; an unknown mode names the key."""
    with caplog.at_level(logging.INFO, logger="talkfield.inference"):
        assert not tiny_pipeline.compile_head("reduce-overhead")
    assert "CUDA-only" in caplog.text and tiny_pipeline.head._compiled_frames is None
    with pytest.raises(ValueError, match="infer.compile"):
        tiny_pipeline.head.compile_for_inference("fast")
