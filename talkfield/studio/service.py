"""The Studio's request handling: validate a request at once, queue it, and on the worker turn text into speech
(if given text) and speech into a video with the inference pipeline.

The pipeline is `talkfield.inference.TalkingHeadPipeline` (issue 9), created by `pipeline_factory(subject)` and
cached for the last subject used; tests inject a fake factory. Its contract:

    TalkingHeadPipeline.from_subject(subject, *, data_dir, runs_dir, device) -> pipeline
    pipeline.render(audio_path, out_path, knobs, progress=cb(done, total, fps), cancel=threading.Event) -> Path

Every job works in its own folder `<studio_dir>/jobs/<job_id>/` (input audio, speech, talk.mp4); the oldest
folders beyond `keep_jobs` are removed.
"""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from talkfield.studio.jobs import FINISHED, Job, JobQueue, new_job_id
from talkfield.studio.settings import StudioSettings
from talkfield.studio.subjects import NO_SUBJECT_HELP, SubjectInfo, discover_subjects, inspect_subject
from talkfield.studio.tts import TTSBackend, TTSCancelled, make_tts
from talkfield.studio.validation import (KnobValues, RequestError, check_knobs, check_upload, clean_text,
                                         probe_audio, resolve_language)

log = logging.getLogger(__name__)


class Cancelled(RuntimeError):
    """Raised inside a job when its cancel event is seen between steps."""


def default_pipeline_factory(settings: StudioSettings) -> Callable[[str], Any]:
    """subject -> TalkingHeadPipeline built from the subject's latest runs (imported only when first used)."""

    def factory(subject: str):
        from talkfield.inference import TalkingHeadPipeline

        return TalkingHeadPipeline.from_subject(subject, data_dir=settings.data_dir, runs_dir=settings.runs_dir,
                                                device=settings.device)

    return factory


def default_knobs_factory(values: KnobValues):
    """The pipeline's own Knobs with the user's values (other fields keep the pipeline's defaults)."""
    from talkfield.inference import Knobs

    return Knobs(**asdict(values))


class Studio:
    """Validates, queues and runs render requests. Thread-safe; one render at a time."""

    def __init__(self, settings: StudioSettings, *, pipeline_factory: Callable[[str], Any] | None = None,
                 knobs_factory: Callable[[KnobValues], Any] | None = None, tts: TTSBackend | None = None):
        self.settings = settings
        self.pipeline_factory = pipeline_factory or default_pipeline_factory(settings)
        self.knobs_factory = knobs_factory or default_knobs_factory
        self.tts = tts if tts is not None else make_tts(settings.tts)
        self.queue = JobQueue(max_waiting=settings.max_waiting, keep=max(settings.keep_jobs, 1) * 5,
                              error_message=_user_message)
        self._pipeline: tuple[str, tuple, Any] | None = None  # (subject, checkpoint signature, pipeline); worker only
        self._lock = threading.Lock()
        for d in (settings.jobs_dir, settings.thumbs_dir, settings.uploads_dir):
            d.mkdir(parents=True, exist_ok=True)

    # -- subjects ------------------------------------------------------------------------------------------
    def subjects(self) -> list[SubjectInfo]:
        s = self.settings
        return discover_subjects(s.runs_dir, s.data_dir, s.thumbs_dir)

    def no_subject_help(self) -> str:
        return NO_SUBJECT_HELP.format(runs_dir=self.settings.runs_dir)

    def _check_subject(self, name: str | None) -> SubjectInfo:
        if not name:
            if not self.subjects():
                raise RequestError(self.no_subject_help())
            raise RequestError("Choose a person (a trained subject) first.")
        name = str(name)
        if name != Path(name).name or name.startswith((".", "_")):
            raise RequestError(f"{name!r} is not a subject name.")
        if not (self.settings.runs_dir / name).is_dir():
            raise RequestError(f"No trained subject {name!r} under the runs folder; reload the page to see the "
                               "current list.")
        info = inspect_subject(name, self.settings.runs_dir, self.settings.data_dir)
        if not info.ready:
            raise RequestError(f"Subject {name!r} is not ready to render: " + "; ".join(info.problems))
        return info

    # -- requests ------------------------------------------------------------------------------------------
    def submit(self, *, subject: str | None, text: str | None = None, audio: str | Path | None = None,
               source: str = "text", language: str | None = "auto", mouth_amp: float | None = None,
               blink: bool | None = None, pose: str | None = None, paste_back: bool | None = None,
               upload_roots: list[Path] | None = None) -> Job:
        """Check a request and put it in line. Raises RequestError (bad input) or QueueFull.

        source: 'text' (speak `text` with the configured TTS) or 'audio' (use the uploaded file `audio`, which
        must lie under one of `upload_roots` when given).
        """
        lim = self.settings.limits
        info = self._check_subject(subject)
        knobs = check_knobs(self.settings.knobs, mouth_amp, blink, pose, paste_back)
        if source == "text":
            text = clean_text(text, lim)
            lang = resolve_language(text, language or self.settings.tts.language)
            upload = None
        elif source == "audio":
            upload = check_upload(audio, lim, upload_roots)
            probe_audio(upload, lim)
            text = lang = None
        else:
            raise RequestError(f"Unknown input {source!r}: 'text' or 'audio'.")

        def run(job: Job) -> Path:
            return self._render(job, info, knobs, text=text, language=lang, upload=upload)

        label = f"{info.name}: " + (f"text ({lang}, {len(text)} chars)" if text is not None else upload.name)
        job_id = new_job_id()
        d = self.settings.jobs_dir / job_id
        if upload is not None:  # keep our own copy: Gradio may clean its upload folder before the job runs
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy2(upload, d / f"input{upload.suffix.lower()}")
        try:
            return self.queue.submit(run, label=label, job_id=job_id)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise

    def cancel(self, job_id: str) -> bool:
        return self.queue.cancel(job_id)

    def status(self, job: Job) -> str:
        """One line for the page."""
        if job.state == "queued":
            pos = self.queue.position(job)
            return f"Waiting in line: number {pos} (one video renders at a time)." if pos else "Starting..."
        if job.state == "running":
            p = job.progress
            if job.phase == "rendering" and p.frames_total:
                pct = 100.0 * p.frames_done / p.frames_total
                return f"Rendering: {p.frames_done}/{p.frames_total} frames ({pct:.0f}%), {p.fps:.1f} frames/s"
            return f"{job.phase[:1].upper()}{job.phase[1:]}..."
        if job.state == "done":
            took = (job.finished or 0) - (job.started or 0)
            p = job.progress
            frames = f"{p.frames_total} frames in " if p.frames_total else ""
            return f"Done: {frames}{took:.1f} s."
        if job.state == "cancelled":
            return job.error or "Cancelled."
        return f"Failed: {job.error}"

    def shutdown(self) -> None:
        self.queue.shutdown()

    # -- the worker side -----------------------------------------------------------------------------------
    def _job_dir(self, job: Job) -> Path:
        d = self.settings.jobs_dir / job.id
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _render(self, job: Job, info: SubjectInfo, knobs: KnobValues, *, text: str | None,
                language: str | None, upload: Path | None) -> Path:
        d = self._job_dir(job)
        self._prune_jobs(keep_id=job.id)
        if text is not None:
            job.phase = f"synthesizing speech ({self.tts.name}, {language})"
            try:
                speech = self.tts.synthesize(text, language, d, cancel=job.cancel_event)
            except TTSCancelled as e:
                raise Cancelled(str(e)) from e
            try:
                probe_audio(speech, self.settings.limits, what="the synthesized speech")
            except RequestError as e:
                raise RequestError(f"{e} Shorten the text.") from e
        else:
            speech = d / f"input{upload.suffix.lower()}"
        self._check_cancel(job)
        job.phase = f"loading {info.name}"
        pipeline = self._get_pipeline(info)
        self._check_cancel(job)
        job.phase = "rendering"
        out = d / "talk.mp4"
        result = pipeline.render(speech, out, self.knobs_factory(knobs), progress=job.report,
                                 cancel=job.cancel_event)
        result = Path(result) if result is not None else out
        if not result.is_file():
            raise RuntimeError(f"the pipeline reported {result.name} but wrote no file")
        return result

    @staticmethod
    def _check_cancel(job: Job) -> None:
        if job.cancel_event.is_set():
            raise Cancelled("cancelled")

    def _get_pipeline(self, info: SubjectInfo):
        sig = info.signature()
        with self._lock:
            if self._pipeline is not None and self._pipeline[:2] == (info.name, sig):
                return self._pipeline[2]
            self._pipeline = None  # free the old model before loading the next
        pipeline = self.pipeline_factory(info.name)
        with self._lock:
            self._pipeline = (info.name, sig, pipeline)
        return pipeline

    def _prune_jobs(self, keep_id: str) -> None:
        """Remove the oldest finished job folders beyond settings.keep_jobs."""
        dirs = [p for p in self.settings.jobs_dir.iterdir() if p.is_dir() and p.name != keep_id]
        live = {j.id for j in list(self.queue._jobs.values()) if j.state not in FINISHED}
        old = sorted((p for p in dirs if p.name not in live), key=lambda p: p.stat().st_mtime)
        for p in old[: max(0, len(old) - self.settings.keep_jobs)]:
            shutil.rmtree(p, ignore_errors=True)


def _user_message(e: BaseException) -> str:
    """What the page shows for a failed job: our own and the pipeline's checked errors as they are, anything else
    with its type (the traceback goes to the server log)."""
    from talkfield.studio.jobs import _expected

    if _expected(e):
        return str(e)
    return f"{type(e).__name__}: {e} (an internal error; the server log has the details)"
