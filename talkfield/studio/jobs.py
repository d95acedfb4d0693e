"""One worker thread, a bounded waiting line, progress and cancellation.

Rendering holds the whole model on one device, so requests run one at a time: `JobQueue.submit` puts a job in
line (or raises QueueFull when `max_waiting` jobs already wait), the worker runs them in order, and each job
carries its state, phase text, progress and a cancel event that the running code polls.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


class QueueFull(RuntimeError):
    """Too many requests are waiting; str(e) is shown to the user."""


@dataclass
class Progress:
    frames_done: int = 0
    frames_total: int = 0
    fps: float = 0.0


class Job:
    """A request in the queue. Read its fields from any thread; only the worker writes them."""

    def __init__(self, fn: Callable[["Job"], Path], label: str = "", job_id: str | None = None):
        self.id = job_id or new_job_id()
        self.label = label
        self.fn = fn
        self.state = QUEUED
        self.phase = "waiting in line"
        self.progress = Progress()
        self.result: Path | None = None
        self.error: str | None = None
        self.cancel_event = threading.Event()
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self._done = threading.Event()

    @property
    def finished_(self) -> bool:
        return self.state in FINISHED

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is finished (done, failed or cancelled); False on timeout."""
        return self._done.wait(timeout)

    def report(self, frames_done: int, frames_total: int, fps: float) -> None:
        """The pipeline's progress callback."""
        self.progress = Progress(int(frames_done), int(frames_total), float(fps))

    def __repr__(self) -> str:
        return f"Job({self.id}, {self.state}, {self.phase!r})"


class JobQueue:
    """Runs submitted jobs one at a time on a worker thread, at most `max_waiting` waiting behind it.

    `error_message(exc)` turns a job's exception into the text shown to the user (the default: str(exc)).
    """

    def __init__(self, max_waiting: int = 4, keep: int = 100,
                 error_message: Callable[[BaseException], str] | None = None):
        if max_waiting < 0:
            raise ValueError("max_waiting must be >= 0")
        self.max_waiting = max_waiting
        self.keep = keep
        self.error_message = error_message or (lambda e: str(e) or type(e).__name__)
        self._waiting: collections.deque[Job] = collections.deque()
        self._jobs: dict[str, Job] = {}
        self._running: Job | None = None
        self._cv = threading.Condition()
        self._stop = False
        self._worker = threading.Thread(target=self._loop, name="studio-worker", daemon=True)
        self._worker.start()

    # -- submitting and looking up -------------------------------------------------------------------------
    def submit(self, fn: Callable[[Job], Path], label: str = "", job_id: str | None = None) -> Job:
        with self._cv:
            if self._stop:
                raise RuntimeError("the studio is shutting down")
            if len(self._waiting) >= self.max_waiting:
                busy = "1 video is rendering and " if self._running else ""
                raise QueueFull(f"The studio is busy: {busy}{len(self._waiting)} request(s) are already waiting "
                                f"(the limit is {self.max_waiting}). Try again when one finishes.")
            if job_id is not None and job_id in self._jobs:
                raise ValueError(f"job id {job_id} is taken")
            job = Job(fn, label, job_id)
            self._waiting.append(job)
            self._jobs[job.id] = job
            self._forget_old()
            self._cv.notify_all()
            return job

    def get(self, job_id: str) -> Job | None:
        with self._cv:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int:
        """0 while running or finished; 1 for the next in line, and so on."""
        with self._cv:
            try:
                return self._waiting.index(job) + 1
            except ValueError:
                return 0

    @property
    def waiting(self) -> int:
        with self._cv:
            return len(self._waiting)

    @property
    def running(self) -> Job | None:
        return self._running

    # -- cancelling ----------------------------------------------------------------------------------------
    def cancel(self, job_id: str) -> bool:
        """Cancel a waiting job at once, or ask a running one to stop (its code polls job.cancel_event).
        Returns False when there is no such job or it has already finished."""
        with self._cv:
            job = self._jobs.get(job_id)
            if job is None or job.finished_:
                return False
            job.cancel_event.set()
            if job in self._waiting:
                self._waiting.remove(job)
                self._finish(job, CANCELLED, error="Cancelled before it started.")
            else:
                job.phase = "cancelling"
            return True

    def shutdown(self, wait: bool = True, timeout: float | None = 10.0) -> None:
        """Cancel everything and stop the worker."""
        with self._cv:
            self._stop = True
            for job in list(self._waiting):
                job.cancel_event.set()
                self._finish(job, CANCELLED, error="The studio shut down.")
            self._waiting.clear()
            if self._running is not None:
                self._running.cancel_event.set()
            self._cv.notify_all()
        if wait:
            self._worker.join(timeout)

    # -- the worker ----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._stop:
                    self._cv.wait()
                if self._stop and not self._waiting:
                    return
                job = self._waiting.popleft()
                self._running = job
                job.state, job.phase, job.started = RUNNING, "starting", time.time()
            try:
                result = job.fn(job)
            except BaseException as e:  # noqa: BLE001 - a job's failure must never kill the worker
                with self._cv:
                    if job.cancel_event.is_set():
                        self._finish(job, CANCELLED, error="Cancelled.")
                    else:
                        if not _expected(e):
                            log.exception("studio job %s failed", job.id)
                        self._finish(job, FAILED, error=self.error_message(e))
            else:
                with self._cv:
                    job.result = Path(result) if result is not None else None
                    self._finish(job, DONE)
            finally:
                with self._cv:
                    self._running = None
                    self._cv.notify_all()

    def _finish(self, job: Job, state: str, error: str | None = None) -> None:
        job.state, job.error, job.finished = state, error, time.time()
        job.phase = {DONE: "done", FAILED: "failed", CANCELLED: "cancelled"}[state]
        job._done.set()

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.finished_]
        for j in sorted(finished, key=lambda j: j.created)[: max(0, len(finished) - self.keep)]:
            del self._jobs[j.id]


def _expected(e: BaseException) -> bool:
    """Errors that are the user's or the setup's (shown as is), not bugs (logged with a traceback)."""
    return type(e).__name__ in ("RequestError", "TTSError", "CheckpointError", "DatasetError", "AudioError",
                                  "InferenceError", "PoseError")
