"""Workers of the REST server: each loads the model once and runs claimed jobs through the runner.

Workers are threads of the server process, one per GPU (or `--workers` of them on the CPU).
Threads, not processes: torch releases the GIL inside its kernels, so threads run in parallel
where the time goes; progress and cancellation are plain calls on the job store; and a hard
kill of the server takes its workers with it, so no orphaned process can finish a job that the
restarted server has queued again (each job is done exactly once). On a machine with GPUs,
worker i uses GPU i modulo their count.

A job: `runner.prepare` (again: the files are checked, faces found), `runner.generate` with
progress written at most every `progress_every_s` and `should_stop` reading the job's cancel
flag, `runner.write_output` (video, then sidecar, each atomically), then the job is marked
done. See `anytalker.serving.store` for what a crash at each point leaves and how it is repaired.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

from ..pipeline import runner
from ..pipeline.settings import ModelSettings
from . import jobs
from .store import Job, JobStore

log = logging.getLogger("anytalker.serving")
# A job's progress: the denoising steps fill this share; decoding and writing the rest (1 = done).
DENOISING_SHARE = 0.9


class Worker:
    """One model, one job at a time. `start()`, then `wait_ready()`; `stop()` asks it to end
    (a running job is put back in the queue at its next step)."""

    def __init__(self, store: JobStore, model: ModelSettings, name: str = "worker-0", gpu: int | None = None,
                 poll_s: float = 1.0, progress_every_s: float = 0.5):
        self.store, self.model, self.name, self.gpu = store, model, name, gpu
        self.poll_s, self.progress_every_s = poll_s, progress_every_s
        self.state = "loading"  # loading | idle | busy | failed | stopped
        self.job_id: str | None = None
        self.error: str | None = None
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "Worker":
        self._thread.start()
        return self

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the model is loaded; False when loading failed (see `error`) or timed out."""
        return self._ready.wait(timeout) and self.error is None

    def stop(self) -> None:
        self._stopping.set()
        self.store.wake_all()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def status(self) -> dict:
        return {"name": self.name, "state": self.state, "job": self.job_id, "error": self.error}

    # -- the thread ---------------------------------------------------------------------------

    def _load(self) -> runner.LoadedPipeline:
        if self.gpu is not None:
            import torch

            torch.cuda.set_device(self.gpu)  # per thread: the pipeline is moved to this GPU
        return runner.load_pipeline(self.model, progress=False)

    def _run(self) -> None:
        try:
            self.loaded = self._load()
        except Exception as problem:  # a missing folder, bad weights, no memory: the server reports it
            self.error, self.state = f"loading {self.model.model} failed: {problem}", "failed"
            self._ready.set()
            return
        self.state = "idle"
        self._ready.set()
        while not self._stopping.is_set():
            try:
                job = self.store.claim(self.name)
                if job is None:
                    self.store.wait_for_work(self.poll_s)
                    continue
                self.state, self.job_id = "busy", job.id
                self.run_job(job)
            except Exception:  # the store itself failed (disk full, ...): keep serving
                log.exception("%s: job store error", self.name)
                time.sleep(self.poll_s)
            finally:
                self.state, self.job_id = "idle", None
        self.state = "stopped"

    def run_job(self, job: Job) -> None:
        """Runs one claimed job to its end state (done, failed, cancelled, or queued again on stop)."""
        last_write = 0.0

        def on_step(progress: dict) -> None:
            nonlocal last_write
            now = time.monotonic()
            if now - last_write >= self.progress_every_s:
                self.store.set_progress(job.id, DENOISING_SHARE * progress["fraction"])
                last_write = now

        def should_stop() -> bool:
            return self._stopping.is_set() or self.store.cancel_is_requested(job.id)

        started = time.monotonic()
        try:
            todo = jobs.plan(job.request, self.store.upload_dir(job.id), self.model)
            prepared = jobs.prepare(todo)
            result = runner.generate(self.loaded, prepared, todo.sampling, on_step=on_step, should_stop=should_stop)
            # The sidecar names the files as the client did, not where this server keeps them.
            named = job.request["uploaded_as"]
            shown = replace(prepared, task=replace(prepared.task, image=named["image"], audio=named["audio"]))
            runner.write_output(self.store.output_path(job.id), result, shown,
                                job={"id": job.id, "attempt": job.attempts, "worker": self.name})
        except runner.GenerationCancelled:
            if self.store.cancel_is_requested(job.id):
                self.store.end(job.id, "cancelled")
                log.info("%s: job %s cancelled", self.name, job.id)
            else:  # the server is stopping: another start runs it
                self.store.release(job.id)
            return
        except Exception as problem:
            log.exception("%s: job %s failed", self.name, job.id)
            self.store.end(job.id, "failed", f"{type(problem).__name__}: {problem}")
            return
        if self.store.finish(job.id):
            log.info("%s: job %s done in %.1f s", self.name, job.id, time.monotonic() - started)


def start_workers(store: JobStore, model: ModelSettings, count: int) -> list[Worker]:
    """`count` workers, started (each loads the model in its thread); one per GPU when there are GPUs."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [Worker(store, model, f"worker-{i}", gpu=i % gpus if gpus else None).start() for i in range(count)]


def stop_workers(workers, timeout: float = 60.0) -> None:
    """Asks every worker to stop (a running job goes back to the queue at its next step) and waits."""
    for worker in workers:
        worker.stop()
    for worker in workers:
        worker.join(timeout)
