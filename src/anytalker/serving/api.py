"""The REST app: submit, watch, fetch and cancel talking-video jobs (`create_app`).

    POST   /v1/videos              multipart: image, audio (repeated, person order), boxes, prompt, settings
    GET    /v1/videos              jobs, newest first (?state=..., ?limit=...)
    GET    /v1/videos/{id}         state, progress, error, attempts, timings
    GET    /v1/videos/{id}/video   the mp4 (409 until done)
    GET    /v1/videos/{id}/sidecar the JSON sidecar (409 until done)
    DELETE /v1/videos/{id}         cancel: queued -> cancelled at once; running -> stops at its next step
    GET    /healthz                open without a token

A request is checked in full before it is queued (settings, boxes, then `runner.prepare` on the
uploaded files, in the threadpool like every sync handler here; one prepare at a time, see
`jobs.prepare`): a bad one gets a 4xx with
{"error": message, "field": name} and leaves nothing behind. Errors are 422 for anything in
the request itself, 413 for a body over the upload limit, 401 without the bearer token (when
one is set), 404 for an unknown id, 409 for a job in the wrong state.
"""

from __future__ import annotations

import hmac
import shutil
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from fastapi import APIRouter, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..pipeline.settings import ModelSettings, SettingsError
from . import jobs
from .store import STATES, Job, JobStore
from .worker import stop_workers

MB = 1024 * 1024


@dataclass(frozen=True)
class ApiSettings:
    model: ModelSettings  # its sampling defaults complete a request's settings when they are checked
    token: str | None = None  # when set, every /v1 route needs `Authorization: Bearer <token>`
    max_upload_mb: float = 100.0  # the whole request body, every file together


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def job_record(job: Job) -> dict:
    """A job as the API shows it."""
    end = job.finished_at or (time.time() if job.state == "running" else None)
    record = {
        "id": job.id, "state": job.state, "progress": round(job.progress, 4), "error": job.error,
        "attempts": job.attempts, "cancel_requested": job.cancel_requested, "worker": job.worker,
        "created_at": _iso(job.created_at), "started_at": _iso(job.started_at), "finished_at": _iso(job.finished_at),
        "seconds": round(end - job.started_at, 3) if job.started_at and end else None,
        "prompt": job.request.get("prompt", ""), "boxes": job.request.get("boxes"),
        "settings": job.request.get("settings", {}), "uploaded_as": job.request.get("uploaded_as"),
    }
    if job.state == "done":
        record["links"] = {"video": f"/v1/videos/{job.id}/video", "sidecar": f"/v1/videos/{job.id}/sidecar"}
    return record


def _problem(status: int, message: str, field: str | None = None, headers: dict | None = None) -> HTTPException:
    return HTTPException(status, {"error": message, "field": field}, headers=headers)


def _validation_response(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own checks of the form (a missing image, a text where a file belongs) in the API's shape."""
    places = [".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path")) for e in exc.errors()]
    problems = [f"{place or 'request'}: {e.get('msg')}" for place, e in zip(places, exc.errors())]
    return JSONResponse({"error": "; ".join(problems), "field": places[0] or None}, status_code=422)


def _http_response(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, dict) else {"error": str(exc.detail), "field": None}
    return JSONResponse(detail, status_code=exc.status_code, headers=getattr(exc, "headers", None))


class BodyLimit:
    """413 for a request body over `max_bytes`: at once when Content-Length says so (nothing is
    read), else as soon as the bytes received pass the limit (a chunked upload)."""

    def __init__(self, app, max_bytes: int, limit_mb: float):
        self.app, self.max_bytes = app, max_bytes
        self.message = (f"upload too large: a request may hold at most {limit_mb:g} MB, all files together "
                        "(the server's --max-upload-mb)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await JSONResponse({"error": self.message, "field": None}, status_code=413)(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # raised inside the form parser: the app's handler answers it
                raise _problem(413, self.message)
            return message

        await self.app(scope, counted, send)


def _save(upload: UploadFile, folder: Path, stem: str) -> str:
    name = jobs.file_name(stem, upload.filename)
    with open(folder / name, "wb") as target:
        shutil.copyfileobj(upload.file, target, 1024 * 1024)
    return name


def create_app(store: JobStore, settings: ApiSettings, workers=()) -> FastAPI:
    """The FastAPI app over `store`. `workers` (started `anytalker.serving.worker.Worker`s) are
    shown at /healthz and stopped when the app shuts down (uvicorn runs the app's shutdown on
    SIGTERM / SIGINT, then ends the process by the signal: code after `Server.run()` never runs)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        stop_workers(workers)

    app = FastAPI(title="AnyTalker", version="1", summary="Talking videos of N people from one image and N audio "
                  "tracks", description=__doc__, lifespan=lifespan)
    app.add_exception_handler(RequestValidationError, _validation_response)
    app.add_exception_handler(StarletteHTTPException, _http_response)
    app.add_middleware(BodyLimit, max_bytes=int(settings.max_upload_mb * MB), limit_mb=settings.max_upload_mb)

    @app.middleware("http")
    async def bearer_token(request: Request, call_next):
        # Here, before any body is read: without the token nothing is uploaded.
        if settings.token and request.url.path.startswith("/v1"):
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), settings.token.encode()):
                message = "missing or wrong bearer token: send the header 'Authorization: Bearer <token>'"
                return JSONResponse({"error": message, "field": "Authorization"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    def find(job_id: str) -> Job:
        job = store.get(job_id)
        if job is None:
            raise _problem(404, f"no video job {job_id!r}", "id")
        return job

    def done(job_id: str) -> Job:
        job = find(job_id)
        if job.state != "done":
            why = f": {job.error}" if job.error else ""
            raise _problem(409, f"job {job_id} is {job.state}{why}; its output exists once the state is done", "state")
        return job

    v1 = APIRouter(prefix="/v1", tags=["videos"])

    @v1.post("/videos", status_code=202)
    def submit(image: UploadFile = File(..., description="reference image with one face per audio track"),
               audio: list[UploadFile] = File(..., description="one track per person, in person order"),
               prompt: str = Form("", description="text prompt"),
               boxes: str | None = Form(None, description="JSON [[x0, y0, x1, y1], ...] in image pixels, one per "
                                                          "track (default: faces are detected)"),
               settings_: str | None = Form(None, alias="settings", description="JSON object: steps, guidance_scale, "
                                            "audio_guidance_scale, seed, size, audio_mode, offsets, ...")) -> dict:
        """Checks the request (settings, boxes, then the files with runner.prepare) and queues it."""
        try:
            given = jobs.parse_settings(settings_)
            box_list = jobs.parse_boxes(boxes, len(audio))
            jobs.sampling_settings(given, settings.model)
        except SettingsError as problem:
            raise _problem(422, str(problem), problem.field) from None
        job_id = uuid.uuid4().hex
        incoming = store.incoming_dir(job_id)
        incoming.mkdir(parents=True)
        uploaded_as = {"image": image.filename, "audio": [track.filename for track in audio]}
        saved = {}  # saved name -> the client's name, for messages
        try:
            for upload, stem in [(image, "image"), *((track, f"audio-{i + 1}") for i, track in enumerate(audio))]:
                saved[_save(upload, incoming, stem)] = upload.filename or stem
            image_name, *audio_names = saved
            request = jobs.request(job_id, image_name, audio_names, uploaded_as, prompt, box_list, given)
            todo = jobs.plan(request, incoming, settings.model)
            jobs.prepare(todo)
            job = store.create(job_id, request, incoming)
        except SettingsError as problem:
            raise _problem(422, str(problem), problem.field) from None
        except (ValueError, FileNotFoundError, RuntimeError) as problem:
            message = str(problem)  # the client's file names, not the server's paths
            for name, client in saved.items():
                message = message.replace(str(incoming / name), repr(client))
            raise _problem(422, message, None) from None
        finally:
            shutil.rmtree(incoming, ignore_errors=True)  # moved in place when queued; else nothing stays
        return job_record(job)

    @v1.get("/videos")
    def list_videos(state: str | None = Query(None, description=f"one of {', '.join(STATES)}"),
                    limit: int = Query(100, ge=1, le=1000)) -> dict:
        """Jobs, newest first."""
        if state is not None and state not in STATES:
            raise _problem(422, f"state {state!r}: choose from {', '.join(STATES)}", "state")
        return {"videos": [job_record(job) for job in store.list(state, limit)]}

    @v1.get("/videos/{job_id}")
    def get_video(job_id: str) -> dict:
        """A job's state, progress (0..1), error, attempts and timings."""
        return job_record(find(job_id))

    @v1.get("/videos/{job_id}/video", response_class=FileResponse)
    def get_mp4(job_id: str):
        """The mp4 (H.264 + AAC of the tracks' mix); 409 until the job is done."""
        return FileResponse(store.output_path(done(job_id).id), media_type="video/mp4", filename=f"{job_id}.mp4")

    @v1.get("/videos/{job_id}/sidecar")
    def get_sidecar(job_id: str):
        """The JSON sidecar: task, faces, audio placement, settings, timings; 409 until done."""
        return FileResponse(store.sidecar_path(done(job_id).id), media_type="application/json")

    @v1.delete("/videos/{job_id}")
    def cancel(job_id: str) -> JSONResponse:
        """Cancels a job: queued -> cancelled now (200); running -> its worker stops at the next step (202)."""
        job = find(job_id)
        if job.state in ("done", "failed", "cancelled"):
            raise _problem(409, f"job {job_id} is already {job.state}: nothing to cancel", "state")
        job = store.cancel(job_id)
        return JSONResponse(job_record(job), status_code=202 if job.state == "running" else 200)

    app.include_router(v1)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        """Open without a token: the model, the workers and how many jobs are in each state."""
        return {"status": "ok", "model": settings.model.model, "workers": [w.status() for w in workers],
                "jobs": store.counts()}

    return app
