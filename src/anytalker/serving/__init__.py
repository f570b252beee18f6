"""The REST server (`anytalker serve`): a surface over `anytalker.pipeline.runner`.

- `store`:  the job store (SQLite in WAL mode + files under the data folder): claim, transitions, recovery
- `jobs`:   a request's settings and boxes checked, and a stored request turned into the runner's objects
- `worker`: model workers (threads), each loads the model once and runs jobs through the runner
- `api`:    the FastAPI app (`create_app`), request validation, the routes

Only `api` needs FastAPI (the `serve` extra); nothing here generates anything beyond calling the runner.
"""
