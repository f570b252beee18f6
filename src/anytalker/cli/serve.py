"""`anytalker serve`: the REST server (FastAPI + uvicorn) with a persistent job queue and model workers."""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path

from ..pipeline.settings import SettingsError
from .common import add_model_arguments, error, model_settings

TOKEN_ENV = "ANYTALKER_TOKEN"


def add_parser(subparsers) -> argparse.ArgumentParser:
    serve = subparsers.add_parser("serve", help=run.__doc__, description=run.__doc__)
    add_model_arguments(serve)
    serve.set_defaults(model="puppets-tiny", seed=0)  # seed: random-tiny's weights
    serve.add_argument("--data-dir", required=True, help="jobs database, uploads and finished videos (kept across "
                                                         "restarts)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind; any non-loopback one needs --token")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="model workers (threads; one per GPU: worker i "
                                                              "uses GPU i modulo their count)")
    serve.add_argument("--token", default=None,
                       help=f"bearer token every /v1 request must send (default: ${TOKEN_ENV})")
    serve.add_argument("--max-upload-mb", type=float, default=100.0, help="largest request body, all files together")
    serve.add_argument("--max-attempts", type=int, default=3,
                       help="tries a job gets when the server stops while it runs; then it is marked failed")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(func=run)
    return serve


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def _check(args: argparse.Namespace, token: str | None) -> None:
    if not is_loopback(args.host) and not token:
        raise ValueError(f"--host {args.host} is not a loopback address: set --token T (or ${TOKEN_ENV}); every "
                         "/v1 request must then send 'Authorization: Bearer T'")
    for flag, value, low in (("--port", args.port, 0), ("--workers", args.workers, 1),
                             ("--max-attempts", args.max_attempts, 1)):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    if args.port > 65535:
        raise ValueError(f"--port must be <= 65535, got {args.port}")
    if not args.max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")


def _lock(data_dir: Path):
    """An exclusive lock on the data folder for this process's life (the kernel drops it on any exit)."""
    import fcntl

    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / "server.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ValueError(f"another server is using --data-dir {data_dir}") from None
    return handle


def run(args: argparse.Namespace) -> int:
    """Serve talking-video generation over HTTP: POST /v1/videos, GET /v1/videos/{id}, ... (docs at /docs)."""
    token = args.token or os.environ.get(TOKEN_ENV) or None
    try:
        _check(args, token)  # before anything is loaded or bound
        model = model_settings(args)
        lock = _lock(Path(args.data_dir))
    except (SettingsError, ValueError, OSError) as problem:
        return error(str(problem))

    import uvicorn

    from ..serving.api import ApiSettings, create_app
    from ..serving.store import JobStore
    from ..serving.worker import start_workers, stop_workers

    store = JobStore(args.data_dir, max_attempts=args.max_attempts)
    repaired = {outcome: ids for outcome, ids in store.recover().items() if ids}
    if repaired:
        print("recovered after a stop: " + "; ".join(f"{k} {', '.join(v)}" for k, v in repaired.items()), flush=True)
    workers = start_workers(store, model, args.workers)
    for worker in workers:
        if not worker.wait_ready():
            return error(worker.error, 1)
    app = create_app(store, ApiSettings(model, token, args.max_upload_mb), workers)
    print(f"anytalker serve: model {model.model}, {len(workers)} worker(s), data {store.data_dir}, "
          f"http://{args.host}:{args.port}/docs", flush=True)
    try:  # on SIGTERM / SIGINT the app's shutdown stops the workers, then uvicorn ends the process
        uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level)).run()
    finally:
        stop_workers(workers)  # when uvicorn returns instead (it could not bind the port, ...)
        store.close()
        lock.close()
    return 0
