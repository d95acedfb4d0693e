"""Studio request handling on CPU with an injected fake pipeline: validation, subjects, queueing, cancellation."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from talkfield.runs import CheckpointError
from talkfield.studio import QueueFull, RequestError, Studio, StudioSettings
from talkfield.studio.jobs import JobQueue
from talkfield.studio.settings import KnobDefaults, Limits
from talkfield.studio.subjects import discover_subjects
from talkfield.studio.tts import TTSCancelled
from talkfield.studio.validation import (check_knobs, check_upload, clean_text, detect_language, probe_audio,
                                         resolve_language)
from tests.test_studio_fakes import (FakeDataset, FakePipeline, FakeTTS, make_trained_subject, write_mp4,
                                     write_wav)

WAIT = 20.0  # seconds a test waits for the worker at most


# ---------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def fake_datasets(monkeypatch, tmp_path):
    """open_subject -> FakeDataset for subjects under tmp_path/data (a missing folder -> DatasetError)."""
    import talkfield.dataset as ds

    def open_subject(data_dir, name):
        root = Path(data_dir) / name
        if not root.is_dir():
            raise ds.DatasetError(f"subject {name!r}: no dataset at {root} (manifest.json missing); "
                                  f"{ds.preprocess_hint(name)}")
        return FakeDataset(root)

    monkeypatch.setattr(ds, "open_subject", open_subject)
    return tmp_path / "data"


def settings(tmp_path, **kw) -> StudioSettings:
    return StudioSettings(runs_dir=tmp_path / "outputs", data_dir=tmp_path / "data",
                          studio_dir=tmp_path / "outputs" / "_studio", **kw)


class Factory:
    """pipeline_factory: one FakePipeline per call, remembered."""

    def __init__(self, **kw):
        self.kw = kw
        self.made: list[FakePipeline] = []
        self.error: Exception | None = None

    def __call__(self, subject):
        if self.error is not None:
            raise self.error
        p = FakePipeline(subject, **self.kw)
        self.made.append(p)
        return p


@pytest.fixture
def studio_env(tmp_path, fake_datasets):
    """A ready subject 'ann' and a factory; yields a function making Studios (shut down at the end)."""
    make_trained_subject(tmp_path / "outputs", "ann")
    FakeDataset(fake_datasets / "ann")
    made = []

    def make(factory=None, tts=None, **kw):
        st = Studio(settings(tmp_path, **kw), pipeline_factory=factory or Factory(), knobs_factory=lambda v: v,
                    tts=tts or FakeTTS())
        made.append(st)
        return st

    yield make
    for st in made:
        st.shutdown()


def finished(job, timeout=WAIT):
    assert job.wait(timeout), f"{job} did not finish in {timeout} s"
    return job


# ---------------------------------------------------------------------------------------------------------------
# text, language, knobs
# ---------------------------------------------------------------------------------------------------------------
def test_text_empty_and_symbols_only_are_refused():
    lim = Limits()
    for bad in ("", "   \n\t ", None):
        with pytest.raises(RequestError, match="empty"):
            clean_text(bad, lim)
    with pytest.raises(RequestError, match="no words"):
        clean_text("?!... ---", lim)


def test_text_over_the_limit_says_the_limit():
    lim = Limits(max_text_chars=20)
    assert clean_text("  hello there  ", lim) == "hello there"
    with pytest.raises(RequestError, match=r"21 characters long; the limit is 20"):
        clean_text("x" * 21, lim)


def test_text_control_characters_are_dropped():
    assert clean_text("hi\x00 there\x1b", Limits()) == "hi there"


def test_language_detection_and_override():
    assert detect_language("Hello, how are you?") == "en"
    assert detect_language("你好，今天天气很好。") == "zh"
    assert detect_language("我们用 GeneFace 做演示") == "zh"  # mixed: any CJK ideograph -> Mandarin
    assert resolve_language("你好", "auto") == "zh"
    assert resolve_language("你好", "en") == "en"
    assert resolve_language("hello", None) == "en"
    with pytest.raises(RequestError, match="Unknown language 'fr'"):
        resolve_language("bonjour", "fr")


def test_knobs_defaults_and_ranges():
    d = KnobDefaults()
    k = check_knobs(d)
    assert (k.mouth_amp, k.blink, k.pose, k.paste_back) == (1.0, True, "loop", False)
    k = check_knobs(d, mouth_amp="1.5", blink=False, pose="static", paste_back=True)
    assert (k.mouth_amp, k.blink, k.pose, k.paste_back) == (1.5, False, "static", True)
    with pytest.raises(RequestError, match="outside 0..2"):
        check_knobs(d, mouth_amp=3)
    with pytest.raises(RequestError, match="outside"):
        check_knobs(d, mouth_amp=float("nan"))
    with pytest.raises(RequestError, match="must be a number"):
        check_knobs(d, mouth_amp="loud")
    with pytest.raises(RequestError, match="Unknown head pose mode 'spin'"):
        check_knobs(d, pose="spin")


# ---------------------------------------------------------------------------------------------------------------
# uploads
# ---------------------------------------------------------------------------------------------------------------
def test_upload_ok_gives_its_duration(tmp_path):
    p = write_wav(tmp_path / "up" / "speech.wav", 1.5)
    lim = Limits()
    assert check_upload(str(p), lim, [tmp_path / "up"]) == p.resolve()
    assert probe_audio(p, lim).seconds == pytest.approx(1.5, abs=0.01)


def test_upload_outside_the_upload_folder_is_refused(tmp_path):
    p = write_wav(tmp_path / "elsewhere" / "speech.wav", 0.5)
    with pytest.raises(RequestError, match="not an uploaded file"):
        check_upload(p, Limits(), [tmp_path / "up"])
    with pytest.raises(RequestError, match="not an uploaded file"):  # ../ tricks resolve first
        check_upload(tmp_path / "up" / ".." / "elsewhere" / "speech.wav", Limits(), [tmp_path / "up"])


def test_upload_missing_unsupported_or_too_big(tmp_path):
    lim = Limits(max_upload_mb=0.001)
    with pytest.raises(RequestError, match="No audio file"):
        check_upload(None, lim)
    with pytest.raises(RequestError, match="gone"):
        check_upload(tmp_path / "nope.wav", lim)
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(RequestError, match=r"unsupported file type '\.txt'"):
        check_upload(txt, lim)
    big = write_wav(tmp_path / "big.wav", 1.0)
    with pytest.raises(RequestError, match="over the 0.001 MB upload limit"):
        check_upload(big, lim)


def test_corrupt_upload_is_refused(tmp_path):
    bad = tmp_path / "broken.mp3"
    bad.write_bytes(os.urandom(4000))
    with pytest.raises(RequestError, match="broken.mp3: cannot be read as audio"):
        probe_audio(bad, Limits())


def test_video_without_audio_track_is_refused(tmp_path):
    v = write_mp4(tmp_path / "silent_film.mp4", frames=5)
    with pytest.raises(RequestError, match="no audio track"):
        probe_audio(v, Limits())


def test_audio_over_the_duration_limit_is_refused(tmp_path):
    p = write_wav(tmp_path / "long.wav", 3.0)
    with pytest.raises(RequestError, match=r"3\.0 s of audio is over the 2 s limit"):
        probe_audio(p, Limits(max_audio_seconds=2))


def test_silent_and_too_short_audio_are_refused(tmp_path):
    silent = write_wav(tmp_path / "silent.wav", 1.0, amp=0.0)
    with pytest.raises(RequestError, match="silent"):
        probe_audio(silent, Limits())
    short = write_wav(tmp_path / "blip.wav", 0.02)
    with pytest.raises(RequestError, match="shorter than one video frame"):
        probe_audio(short, Limits())


def test_error_messages_do_not_show_server_paths(tmp_path):
    silent = write_wav(tmp_path / "deep" / "folder" / "silent.wav", 1.0, amp=0.0)
    with pytest.raises(RequestError) as e:
        probe_audio(silent, Limits())
    assert str(tmp_path) not in str(e.value) and "silent.wav" in str(e.value)


# ---------------------------------------------------------------------------------------------------------------
# subjects
# ---------------------------------------------------------------------------------------------------------------
def test_no_runs_folder_means_no_subjects(tmp_path):
    assert discover_subjects(tmp_path / "outputs", tmp_path / "data") == []


def test_discovery_ready_incomplete_and_thumbnail(tmp_path, fake_datasets):
    runs = tmp_path / "outputs"
    make_trained_subject(runs, "ann")
    FakeDataset(fake_datasets / "ann")
    make_trained_subject(runs, "bob", stages=("head",), no_checkpoint=("head",))
    FakeDataset(fake_datasets / "bob")
    make_trained_subject(runs, "cat", stages=("head",))  # trained, but its dataset is gone
    (runs / "_studio" / "head").mkdir(parents=True)       # the studio's own folder is never a subject
    (runs / "misc").mkdir()                              # no stage folders: not a subject
    subs = {s.name: s for s in discover_subjects(runs, fake_datasets, tmp_path / "thumbs")}
    assert sorted(subs) == ["ann", "bob", "cat"]
    assert subs["ann"].ready and subs["ann"].label == "ann" and not subs["ann"].notes
    assert subs["ann"].thumbnail is not None and subs["ann"].thumbnail.is_file()
    assert subs["ann"].thumbnail.parent == tmp_path / "thumbs"
    assert not subs["bob"].ready and subs["bob"].label == "bob (incomplete)"
    assert "no checkpoint yet" in subs["bob"].problems[0]
    assert "python train.py experiment=head_nerf subject.name=bob" in subs["bob"].problems[0]
    assert any("no torso run" in n for n in subs["bob"].notes)
    assert not subs["cat"].ready and "preprocess.py" in subs["cat"].problems[0]


def test_thumbnails_built_by_several_page_loads_at_once(tmp_path, fake_datasets):
    import cv2

    runs = tmp_path / "outputs"
    for n in ("ann", "bob"):
        make_trained_subject(runs, n)
        FakeDataset(fake_datasets / n)
    thumbs = tmp_path / "thumbs"
    results, errors = [], []

    def load():
        try:
            results.append(discover_subjects(runs, fake_datasets, thumbs))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 6
    assert all(s.thumbnail is not None for r in results for s in r)
    assert sorted(p.name for p in thumbs.iterdir()) == ["ann.jpg", "bob.jpg"]  # no temporary files left
    img = cv2.imread(str(thumbs / "ann.jpg"))
    assert img.shape == (96, 128, 3) and img[..., 2].mean() > 150  # the red test frame, in BGR


def test_head_only_subject_is_ready_with_notes(tmp_path, fake_datasets):
    runs = tmp_path / "outputs"
    make_trained_subject(runs, "dee", stages=("head",))
    FakeDataset(fake_datasets / "dee")
    (s,) = discover_subjects(runs, fake_datasets)
    assert s.ready
    assert any("head only" in n for n in s.notes) and any("Audio2Motion" in n for n in s.notes)


# ---------------------------------------------------------------------------------------------------------------
# the studio: submit, render, errors
# ---------------------------------------------------------------------------------------------------------------
def test_text_request_renders_through_tts_and_pipeline(studio_env):
    factory, tts = Factory(), FakeTTS()
    st = studio_env(factory, tts)
    job = st.submit(subject="ann", text="  你好，世界  ", mouth_amp=1.2, blink=False, pose="static")
    finished(job)
    assert job.state == "done", job.error
    assert tts.calls == [("你好，世界", "zh")]
    (call,) = factory.made[0].calls
    assert call["audio"].name == "speech.wav" and call["audio"].parent == job.result.parent
    assert call["knobs"].mouth_amp == 1.2 and call["knobs"].blink is False and call["knobs"].pose == "static"
    assert job.result == st.settings.jobs_dir / job.id / "talk.mp4" and job.result.is_file()
    assert (job.progress.frames_done, job.progress.frames_total) == (5, 5)
    assert st.status(job).startswith("Done: 5 frames in")


def test_language_override_reaches_the_tts(studio_env):
    tts = FakeTTS()
    st = studio_env(tts=tts)
    finished(st.submit(subject="ann", text="hello", language="zh"))
    assert tts.calls == [("hello", "zh")]


def test_audio_request_uses_a_copy_of_the_upload(studio_env, tmp_path):
    factory = Factory()
    st = studio_env(factory)
    up = write_wav(st.settings.uploads_dir / "abc" / "take1.wav", 1.0)
    job = finished(st.submit(subject="ann", source="audio", audio=str(up), upload_roots=[st.settings.uploads_dir]))
    assert job.state == "done", job.error
    audio = factory.made[0].calls[0]["audio"]
    assert audio.parent == st.settings.jobs_dir / job.id and audio.name == "input.wav"


def test_bad_requests_are_refused_before_queueing(studio_env, tmp_path):
    st = studio_env()
    with pytest.raises(RequestError, match="empty"):
        st.submit(subject="ann", text=" ")
    with pytest.raises(RequestError, match="Choose a person"):
        st.submit(subject=None, text="hi")
    with pytest.raises(RequestError, match="No trained subject 'zed'"):
        st.submit(subject="zed", text="hi")
    with pytest.raises(RequestError, match="not a subject name"):
        st.submit(subject="../ann", text="hi")
    with pytest.raises(RequestError, match="not a subject name"):
        st.submit(subject="_studio", text="hi")
    corrupt = st.settings.uploads_dir / "x.wav"
    corrupt.write_bytes(b"RIFF....garbage")
    with pytest.raises(RequestError, match="cannot be read as audio"):
        st.submit(subject="ann", source="audio", audio=corrupt)
    with pytest.raises(RequestError, match="Unknown input"):
        st.submit(subject="ann", source="video", text="hi")
    assert st.queue.waiting == 0 and st.queue.running is None


def test_no_trained_subject_says_how_to_train_one(tmp_path, fake_datasets):
    st = Studio(settings(tmp_path), pipeline_factory=Factory(), knobs_factory=lambda v: v, tts=FakeTTS())
    try:
        assert st.subjects() == []
        with pytest.raises(RequestError) as e:
            st.submit(subject=None, text="hello")
        assert "No trained subject yet" in str(e.value)
        assert "python train.py experiment=head_nerf subject.name=<name>" in str(e.value)
    finally:
        st.shutdown()


def test_incomplete_subject_is_refused_with_what_to_train(studio_env, tmp_path):
    make_trained_subject(tmp_path / "outputs", "bob", stages=("head",), no_checkpoint=("head",))
    FakeDataset(tmp_path / "data" / "bob")
    st = studio_env()
    with pytest.raises(RequestError, match=r"not ready to render: .*experiment=head_nerf subject.name=bob"):
        st.submit(subject="bob", text="hello")


def test_pipeline_checkpoint_error_fails_the_job_and_the_worker_survives(studio_env):
    factory = Factory()
    factory.error = CheckpointError("no audio2motion run for subject 'ann'; train one first "
                                    "(python train.py experiment=audio2motion subject.name=ann)")
    st = studio_env(factory)
    job = finished(st.submit(subject="ann", text="hello"))
    assert job.state == "failed" and job.error.startswith("no audio2motion run for subject 'ann'")
    assert st.status(job).startswith("Failed: no audio2motion run")
    factory.error = None
    job2 = finished(st.submit(subject="ann", text="hello again"))
    assert job2.state == "done", job2.error


def test_unexpected_error_is_reported_as_internal(studio_env):
    class Boom:
        def render(self, *a, **k):
            raise ZeroDivisionError("division by zero")

    st = studio_env(lambda subject: Boom())
    job = finished(st.submit(subject="ann", text="hello"))
    assert job.state == "failed" and "ZeroDivisionError" in job.error and "internal error" in job.error


def test_synthesized_speech_over_the_limit_fails_with_advice(studio_env):
    st = studio_env(tts=FakeTTS(seconds=3.0), limits=Limits(max_audio_seconds=2))
    job = finished(st.submit(subject="ann", text="a long speech"))
    assert job.state == "failed" and "over the 2 s limit" in job.error and "Shorten the text" in job.error


def test_pipeline_is_cached_per_subject_and_rebuilt_on_a_new_checkpoint(studio_env, tmp_path):
    factory = Factory()
    st = studio_env(factory)
    finished(st.submit(subject="ann", text="one"))
    finished(st.submit(subject="ann", text="two"))
    assert len(factory.made) == 1 and len(factory.made[0].calls) == 2
    ck = tmp_path / "outputs" / "ann" / "head" / "20250101-000000" / "checkpoints" / "last.ckpt"
    ck.write_bytes(b"retrained")
    os.utime(ck, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    finished(st.submit(subject="ann", text="three"))
    assert len(factory.made) == 2


def test_old_job_folders_are_pruned(studio_env):
    st = studio_env(keep_jobs=2)
    jobs = [finished(st.submit(subject="ann", text=f"take {i}")) for i in range(5)]
    kept = sorted(p.name for p in st.settings.jobs_dir.iterdir())
    assert len(kept) <= 3 and jobs[-1].id in kept  # keep_jobs finished + the one that pruned
    assert jobs[0].id not in kept


# ---------------------------------------------------------------------------------------------------------------
# queueing and cancellation
# ---------------------------------------------------------------------------------------------------------------
def test_requests_queue_and_a_full_queue_says_so(studio_env):
    gate = threading.Event()
    factory = Factory(gate=gate)
    st = studio_env(factory, max_waiting=2)
    first = st.submit(subject="ann", text="first")
    deadline = time.monotonic() + WAIT
    while not (factory.made and factory.made[0].started.is_set()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    second = st.submit(subject="ann", text="second")
    third = st.submit(subject="ann", text="third")
    assert st.status(second).startswith("Waiting in line: number 1")
    assert st.status(third).startswith("Waiting in line: number 2")
    with pytest.raises(QueueFull, match=r"busy: 1 video is rendering and 2 request\(s\) are already waiting"):
        st.submit(subject="ann", text="fourth")
    gate.set()
    for j in (first, second, third):
        assert finished(j).state == "done", j.error
    order = [c["audio"].parent.name for c in factory.made[0].calls]
    assert order == [first.id, second.id, third.id]
    finished(st.submit(subject="ann", text="room again"))  # the line has emptied


def test_cancel_a_waiting_job_removes_it_from_the_line(studio_env):
    gate = threading.Event()
    st = studio_env(Factory(gate=gate), max_waiting=2)
    first = st.submit(subject="ann", text="first")
    second = st.submit(subject="ann", text="second")
    third = st.submit(subject="ann", text="third")
    assert st.cancel(second.id)
    assert second.state == "cancelled" and second.wait(0)
    assert "before it started" in st.status(second)
    assert st.queue.position(third) == 1
    gate.set()
    assert finished(first).state == "done" and finished(third).state == "done"
    assert not (st.settings.jobs_dir / second.id / "talk.mp4").exists()
    assert not st.cancel(second.id) and not st.cancel(first.id) and not st.cancel("nope")


def test_cancel_a_running_render_stops_it_and_the_next_job_runs(studio_env):
    gate = threading.Event()
    factory = Factory(gate=gate, frames=1000)
    st = studio_env(factory)
    running = st.submit(subject="ann", text="a long one")
    waiting = st.submit(subject="ann", text="next")
    deadline = time.monotonic() + WAIT
    while not (factory.made and factory.made[0].started.is_set()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert st.status(running).startswith("Rendering") or running.phase.startswith("render")
    assert st.cancel(running.id)
    finished(running)
    assert running.state == "cancelled" and running.result is None
    assert not (st.settings.jobs_dir / running.id / "talk.mp4").exists()
    gate.set()
    factory.made[0].frames = 3
    assert finished(waiting).state == "done", waiting.error


def test_cancel_during_speech_synthesis(studio_env):
    class SlowTTS(FakeTTS):
        def synthesize(self, text, language, out_dir, cancel=None):
            while not cancel.wait(0.01):
                pass
            raise TTSCancelled("espeak-ng: cancelled")

    factory = Factory()
    st = studio_env(factory, tts=SlowTTS())
    job = st.submit(subject="ann", text="hello")
    deadline = time.monotonic() + WAIT
    while job.state != "running":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    st.cancel(job.id)
    assert finished(job).state == "cancelled"
    assert factory.made == []  # never reached the pipeline


def test_progress_is_reported_while_rendering(studio_env):
    st = studio_env()
    seen = []

    class Watching(FakePipeline):
        def render(self, audio_path, out_path, knobs, progress=None, cancel=None):
            def cb(d, t, fps):
                progress(d, t, fps)
                seen.append(st.status(job))
            return super().render(audio_path, out_path, knobs, progress=cb, cancel=cancel)

    st.pipeline_factory = lambda s: Watching(s, frames=4)
    job = st.submit(subject="ann", text="hello")
    assert finished(job).state == "done", job.error
    assert seen[0] == "Rendering: 1/4 frames (25%), 50.0 frames/s"
    assert seen[-1] == "Rendering: 4/4 frames (100%), 50.0 frames/s"


def test_job_queue_shutdown_cancels_waiting_jobs():
    gate = threading.Event()

    def slow(job):
        while not gate.wait(0.01):
            if job.cancel_event.is_set():
                raise RuntimeError("stopped")
        return None

    q = JobQueue(max_waiting=3)
    a, b = q.submit(slow), q.submit(slow)
    q.shutdown(wait=True, timeout=WAIT)
    assert a.state == "cancelled" and b.state == "cancelled"
    with pytest.raises(RuntimeError, match="shutting down"):
        q.submit(slow)


def test_settings_from_the_studio_config(tmp_path):
    from hydra import compose, initialize_config_dir

    from tests.helpers import CONFIGS

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("studio", overrides=[f"paths.runs_dir={tmp_path}/runs", "tts.backend=edge",
                                           "limits.max_text_chars=99"])
    s = StudioSettings.from_cfg(cfg)
    assert s.runs_dir == (tmp_path / "runs").resolve() and s.studio_dir == (tmp_path / "runs" / "_studio").resolve()
    assert s.tts.backend == "edge" and s.limits.max_text_chars == 99 and cfg.host == "127.0.0.1"
    assert s.knobs == KnobDefaults()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        bad = compose("studio", overrides=["knobs.pose=spin"])
    with pytest.raises(ValueError, match="knobs.pose='spin'"):
        StudioSettings.from_cfg(bad)
