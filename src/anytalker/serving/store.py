"""The REST server's job store: one SQLite database (WAL mode) and each job's files, in one data folder.

    DATA/jobs.sqlite3            the jobs table (SCHEMA)
    DATA/uploads/<id>/           a queued or running job's inputs (removed once the job ends)
    DATA/uploads/.incoming-<id>/ a request's files while the request is validated
    DATA/outputs/<id>.mp4        a done job's video, and <id>.json its sidecar

States: queued -> running -> done | failed | cancelled, and queued -> cancelled. A worker
claims a job with one `UPDATE ... WHERE state = 'queued' ... RETURNING` (SQLite runs it under
its write lock, so two workers, threads or processes, never get the same job). A worker writes
the video and then the sidecar (each to a temporary name, then renamed) and only then marks the
job done, so a crash at any point leaves a state `recover()` repairs at the next start: a
running job whose sidecar exists is done; any other running job is queued again, or failed
after `max_attempts` tries; temporary and orphaned files are removed.

Every thread gets its own connection (sqlite3 connections are not shared across threads).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")
INCOMING_PREFIX = ".incoming-"

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    request TEXT NOT NULL,                        -- JSON: file names, prompt, boxes, settings
    progress REAL NOT NULL DEFAULT 0,             -- 0..1
    error TEXT,                                   -- why it failed
    attempts INTEGER NOT NULL DEFAULT 0,          -- claims so far (a crash mid-run counts one)
    cancel_requested INTEGER NOT NULL DEFAULT 0,  -- DELETE while running: the worker stops at its next step
    worker TEXT,                                  -- who runs or ran it
    created_at REAL NOT NULL,                     -- seconds since the epoch
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_at);
"""


@dataclass(frozen=True)
class Job:
    id: str
    state: str
    request: dict
    progress: float
    error: str | None
    attempts: int
    cancel_requested: bool
    worker: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        values = dict(row)
        values["request"] = json.loads(values["request"])
        values["cancel_requested"] = bool(values["cancel_requested"])
        return cls(**values)


class JobStore:
    """Jobs and their files under `data_dir`. `max_attempts`: how many claims an interrupted job
    gets before `recover()` marks it failed."""

    def __init__(self, data_dir: str | Path, max_attempts: int = 3):
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.data_dir = Path(data_dir).resolve()
        self.uploads = self.data_dir / "uploads"
        self.outputs = self.data_dir / "outputs"
        self.database = self.data_dir / "jobs.sqlite3"
        self.max_attempts = max_attempts
        for folder in (self.uploads, self.outputs):
            folder.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._work = threading.Condition()
        db = self._db()
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)

    # -- connections --------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            # Autocommit (isolation_level None): each statement is its own transaction, and
            # `_transaction` opens BEGIN IMMEDIATE where several must go together.
            db = sqlite3.connect(self.database, timeout=30, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()

    def _one(self, sql: str, *params) -> Job | None:
        row = self._db().execute(sql, params).fetchone()
        return Job.from_row(row) if row is not None else None

    # -- paths --------------------------------------------------------------------------------

    def upload_dir(self, job_id: str) -> Path:
        return self.uploads / job_id

    def incoming_dir(self, job_id: str) -> Path:
        """Where a request's files wait while it is validated (`create` moves them in place)."""
        return self.uploads / f"{INCOMING_PREFIX}{job_id}"

    def output_path(self, job_id: str) -> Path:
        return self.outputs / f"{job_id}.mp4"

    def sidecar_path(self, job_id: str) -> Path:
        return self.outputs / f"{job_id}.json"

    def _remove_output(self, job_id: str) -> None:
        for path in (self.output_path(job_id), self.sidecar_path(job_id)):
            path.unlink(missing_ok=True)

    # -- jobs ---------------------------------------------------------------------------------

    def create(self, job_id: str, request: dict, files: Path | None = None) -> Job:
        """A queued job; `files` (its incoming folder) becomes its upload folder first, so a
        crash in between leaves only an orphaned folder, which `recover()` removes."""
        if files is not None:
            files.rename(self.upload_dir(job_id))
        job = self._one("INSERT INTO jobs (id, state, request, created_at) VALUES (?, 'queued', ?, ?) RETURNING *",
                        job_id, json.dumps(request), time.time())
        with self._work:
            self._work.notify_all()
        return job

    def get(self, job_id: str) -> Job | None:
        return self._one("SELECT * FROM jobs WHERE id = ?", job_id)

    def list(self, state: str | None = None, limit: int = 100) -> list[Job]:
        """Newest first."""
        where, params = ("WHERE state = ?", (state,)) if state else ("", ())
        rows = self._db().execute(f"SELECT * FROM jobs {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
                                  (*params, limit)).fetchall()
        return [Job.from_row(row) for row in rows]

    def counts(self) -> dict[str, int]:
        rows = self._db().execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: 0 for state in STATES} | {state: n for state, n in rows}

    def claim(self, worker: str) -> Job | None:
        """The oldest queued job, now running for `worker`; None when nothing waits."""
        return self._one(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?, worker = ?, progress = 0 "
            "WHERE state = 'queued' AND id = (SELECT id FROM jobs WHERE state = 'queued' "
            "ORDER BY created_at, rowid LIMIT 1) RETURNING *", time.time(), worker)

    def wait_for_work(self, timeout: float) -> None:
        """Returns when a job was created in this process, or after `timeout` seconds."""
        with self._work:
            self._work.wait(timeout)

    def wake_all(self) -> None:
        with self._work:
            self._work.notify_all()

    def set_progress(self, job_id: str, fraction: float) -> None:
        self._db().execute("UPDATE jobs SET progress = ? WHERE id = ? AND state = 'running'",
                           (min(max(fraction, 0.0), 1.0), job_id))

    def cancel_is_requested(self, job_id: str) -> bool:
        row = self._db().execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def cancel(self, job_id: str) -> Job | None:
        """A queued job is cancelled at once; a running one is asked to stop (its worker ends it
        as cancelled at its next step). Returns the job after the change (None: unknown id)."""
        now = time.time()
        with self._transaction() as db:
            db.execute("UPDATE jobs SET state = 'cancelled', finished_at = ? WHERE id = ? AND state = 'queued'",
                       (now, job_id))
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = 'running'", (job_id,))
        job = self.get(job_id)
        if job is not None and job.state == "cancelled":
            shutil.rmtree(self.upload_dir(job_id), ignore_errors=True)
        return job

    def finish(self, job_id: str) -> bool:
        """The running job is done (its video and sidecar are written). False when it was
        cancelled meanwhile: then it ends as cancelled and its output is removed."""
        done = self._one("UPDATE jobs SET state = 'done', progress = 1, finished_at = ? "
                         "WHERE id = ? AND state = 'running' AND cancel_requested = 0 RETURNING *",
                         time.time(), job_id)
        if done is None:
            self.end(job_id, "cancelled")
            self._remove_output(job_id)
        shutil.rmtree(self.upload_dir(job_id), ignore_errors=True)
        return done is not None

    def end(self, job_id: str, state: str, error: str | None = None) -> None:
        """A running job ends as failed or cancelled."""
        if state not in ("failed", "cancelled"):
            raise ValueError(f"a running job ends as failed or cancelled, not {state!r}")
        self._db().execute("UPDATE jobs SET state = ?, error = ?, finished_at = ? WHERE id = ? AND state = 'running'",
                           (state, error, time.time(), job_id))
        shutil.rmtree(self.upload_dir(job_id), ignore_errors=True)

    def release(self, job_id: str) -> None:
        """A running job back to the queue, its attempt not counted (the server is shutting down)."""
        self._db().execute("UPDATE jobs SET state = 'queued', attempts = MAX(attempts - 1, 0), progress = 0, "
                           "started_at = NULL, worker = NULL WHERE id = ? AND state = 'running'", (job_id,))

    # -- recovery -----------------------------------------------------------------------------

    def _transaction(self):
        return _Immediate(self._db())

    def recover(self) -> dict[str, list[str]]:
        """Repairs what a crash left; call it at start, before any worker runs (the server holds
        the data folder's lock, so no other process is using it). Returns the ids per outcome."""
        outcome: dict[str, list[str]] = {"done": [], "requeued": [], "failed": [], "cancelled": []}
        now = time.time()
        with self._transaction() as db:
            for row in db.execute("SELECT * FROM jobs WHERE state = 'running'").fetchall():
                job = Job.from_row(row)
                if job.cancel_requested:
                    db.execute("UPDATE jobs SET state = 'cancelled', finished_at = ? WHERE id = ?", (now, job.id))
                    outcome["cancelled"].append(job.id)
                elif self.sidecar_path(job.id).is_file() and self.output_path(job.id).is_file():
                    # Written in full (video first, then sidecar, each renamed in place), not yet marked.
                    db.execute("UPDATE jobs SET state = 'done', progress = 1, finished_at = ? WHERE id = ?",
                               (self.sidecar_path(job.id).stat().st_mtime, job.id))
                    outcome["done"].append(job.id)
                elif job.attempts >= self.max_attempts:
                    error = (f"interrupted {job.attempts} times (the server stopped while this job ran); "
                             f"given up after --max-attempts {self.max_attempts}")
                    db.execute("UPDATE jobs SET state = 'failed', error = ?, finished_at = ? WHERE id = ?",
                               (error, now, job.id))
                    outcome["failed"].append(job.id)
                else:
                    db.execute("UPDATE jobs SET state = 'queued', progress = 0, started_at = NULL, worker = NULL "
                               "WHERE id = ?", (job.id,))
                    outcome["requeued"].append(job.id)
            states = dict(db.execute("SELECT id, state FROM jobs").fetchall())
        self._remove_strays(states)
        return outcome

    def _remove_strays(self, states: dict[str, str]) -> None:
        """Temporary files, incoming folders, and files of jobs that no longer need them."""
        for path in self.uploads.iterdir():
            if states.get(path.name) not in ("queued", "running"):
                _remove(path)
        for path in self.outputs.iterdir():
            # atomic_write's temporary names start with a dot; a done job keeps <id>.mp4 + <id>.json.
            if path.name.startswith(".") or states.get(path.stem) != "done":
                _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class _Immediate:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): the write lock is taken up front."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, traceback) -> None:
        self.db.execute("ROLLBACK" if kind else "COMMIT")
