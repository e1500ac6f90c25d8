"""One worker, a bounded queue, and the jobs' results held in memory for a while.

Every action of the page (detect, anonymize, recover, verify) is a job: the request that starts
it returns its id at once, the page polls :meth:`Job.status` for the progress, then downloads
the result files. Jobs run one at a time on one thread, so memory is bounded by the queue's
length times the upload limit, plus the results kept (at most :attr:`JobQueue.keep` finished jobs
and :attr:`JobQueue.keep_bytes` of files, each for :attr:`JobQueue.ttl` seconds). A full queue
refuses new jobs (:class:`Busy`).

A job's function (and the key or passphrase its closure holds) is dropped as soon as it ends.
"""

from __future__ import annotations

import collections
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from faceveil.errors import FaceveilError, escape


class Busy(FaceveilError):
    """The queue is full."""


@dataclass
class OutFile:
    """A result the page can show or download: ``name`` is what the browser saves it as."""

    name: str
    media_type: str
    data: bytes
    preview: bool = False  # shown on the page, left out of the zip


@dataclass
class Job:
    kind: str
    fn: Callable[[Job], dict] | None
    id: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    state: str = "queued"  # queued, running, done, failed
    phase: str = "waiting for the jobs before it"
    done: float = 0.0
    total: float = 0.0
    result: dict | None = None
    error: str | None = None
    files: list[OutFile] = field(default_factory=list)
    finished_at: float | None = None

    def progress(self, phase: str, done: float | None = None, total: float | None = None) -> None:
        """Called by the action as it goes: what it does now, and how far it is (faces, files)."""
        self.phase = phase
        if total is not None:
            self.total = float(total)
        if done is not None:
            self.done = float(done)

    def add_file(self, name: str, media_type: str, data: bytes, preview: bool = False) -> int:
        """Keep a result file; returns its number in this job's download URLs."""
        self.files.append(OutFile(name, media_type, data, preview))
        return len(self.files) - 1

    def status(self, position: int | None = None) -> dict:
        out = {"id": self.id, "kind": self.kind, "state": self.state, "phase": self.phase,
               "done": round(self.done, 2), "total": self.total}
        if position is not None:
            out["position"] = position
        if self.state == "done":
            out["result"] = self.result
        if self.state == "failed":
            out["error"] = self.error
        return out


def one_line(exc: BaseException) -> str:
    """What a user sees of a failure: a library error's own line, else the kind of failure only
    (an unexpected exception's text may hold anything)."""
    if isinstance(exc, FaceveilError):
        return escape(str(exc).strip().replace("\n", " "), 400) or exc.__class__.__name__
    if isinstance(exc, MemoryError):
        return "out of memory: try fewer or smaller files"
    from faceveil.cli.torch_check import explain

    why = explain(exc)
    if why:
        return escape(why, 400)
    return f"internal error ({exc.__class__.__name__}); nothing was kept"


class JobQueue:
    """Runs jobs one at a time on a worker thread; at most ``max_waiting`` wait behind it."""

    def __init__(self, max_waiting: int = 4, keep: int = 8, ttl: float = 900.0, keep_bytes: int = 2 << 30) -> None:
        self.max_waiting, self.keep, self.ttl, self.keep_bytes = int(max_waiting), int(keep), float(ttl), int(keep_bytes)
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=self.max_waiting)
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._waiting: collections.deque[str] = collections.deque()
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._run, name="faceveil-web-worker", daemon=True)
        self._worker.start()

    def submit(self, kind: str, fn: Callable[[Job], dict]) -> Job:
        job = Job(kind, fn)
        with self._lock:
            self._forget_old()
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                job.fn = None
                raise Busy(f"busy: {self.max_waiting} jobs are already waiting; try again when they are done") from None
            self._jobs[job.id] = job
            self._waiting.append(job.id)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            self._forget_old()
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int | None:
        """How many jobs run or wait before a queued one (None once it runs)."""
        with self._lock:
            if job.state != "queued" or job.id not in self._waiting:
                return None
            return list(self._waiting).index(job.id) + 1

    def forget(self, job_id: str) -> bool:
        """Drop a finished job's results now (the page's Clear)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state in ("queued", "running"):
                return False
            del self._jobs[job_id]
            return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after the running job; waiting jobs are dropped."""
        with self._lock:
            while True:
                try:
                    dropped = self._queue.get_nowait()
                except queue.Empty:
                    break
                if dropped is not None:
                    dropped.fn, dropped.state, dropped.error = None, "failed", "the server stopped"
            self._waiting.clear()
        self._queue.put(None)
        self._worker.join(timeout)

    def full(self) -> bool:
        return self._queue.full()

    def _forget_old(self) -> None:
        """Finished jobs go after ``ttl`` seconds, and the oldest first while more than ``keep`` of them,
        or more than ``keep_bytes`` of result files, are held (the newest is always kept)."""
        now = time.monotonic()
        finished = [j for j in self._jobs.values() if j.finished_at is not None]
        held = sum(len(f.data) for j in finished for f in j.files)
        for k, j in enumerate(finished):
            newest = k == len(finished) - 1
            if now - j.finished_at > self.ttl or (not newest and (len(finished) - k > self.keep or held > self.keep_bytes)):
                held -= sum(len(f.data) for f in j.files)
                del self._jobs[j.id]

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job.id in self._waiting:
                    self._waiting.remove(job.id)
            job.state, job.phase = "running", "starting"
            try:
                job.result = job.fn(job)
                job.state = "done"
            except BaseException as exc:  # noqa: BLE001 - a job's failure is one line on the page, never a traceback
                job.files.clear()
                job.error, job.state = one_line(exc), "failed"
            finally:
                job.fn = None  # the closure holds the key or passphrase: drop it now
                job.finished_at = time.monotonic()
                with self._lock:
                    self._forget_old()
