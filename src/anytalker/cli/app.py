"""`anytalker app`: the Gradio page (upload an image, bind one track per face, generate)."""

from __future__ import annotations

import argparse
import os
import tempfile

from ..faces.detection import ORDERS
from ..pipeline.settings import SettingsError
from .common import add_model_arguments, error, input_settings, model_settings

DEFAULT_MODEL = "puppets-tiny"


def add_parser(subparsers) -> argparse.ArgumentParser:
    app = subparsers.add_parser("app", help=run.__doc__, description=run.__doc__)
    add_model_arguments(app, DEFAULT_MODEL, "puppets-tiny, the bundled CPU model")
    app.add_argument("--seed", type=int, default=0, help="random-tiny's weights")
    app.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    app.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    app.add_argument("--out-dir", help="where videos and sidecars are written (default: a new temporary folder)")
    app.add_argument("--order", choices=ORDERS, default="left-to-right", help="the page's first face order rule")
    app.add_argument("--detector", help="face detector chain, tried in order (default dlib,opencv,dlib-cnn)")
    app.set_defaults(func=run)
    return app


def run(args: argparse.Namespace) -> int:
    """Serves the Gradio app; the model is loaded once, at start."""
    from ..pipeline import runner
    from ..utils.checkpoints import CheckpointError

    try:
        model = model_settings(args)
        inputs = input_settings(args)
    except SettingsError as problem:
        return error(str(problem))
    if not 0 < args.port < 65536:
        return error(f"--port {args.port}: choose 1..65535")
    try:
        loaded = runner.load_pipeline(model, progress=False)
    except (CheckpointError, ValueError, OSError) as problem:
        return error(str(problem))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
    from ..app import build_app

    out_dir = args.out_dir or tempfile.mkdtemp(prefix="anytalker-app-")
    os.makedirs(out_dir, exist_ok=True)
    page = build_app(loaded, inputs=inputs, out_dir=out_dir)
    print(f"videos go to {out_dir}", flush=True)
    page.queue().launch(server_name=args.host, server_port=args.port, allowed_paths=[out_dir])
    return 0
