"""serve a model over HTTP: JSON API, overlay / explanation PNGs, a web page, metrics

`blendmask serve --weights model.pt [--host 127.0.0.1] [--port 8000] [--backend torch|onnx]
[--workers N] [--max-batch B] [--max-queue Q]` runs `blendmask.serve` (FastAPI) on uvicorn until
SIGTERM / Ctrl-C, letting in-flight requests finish. Needs the `serve` extra:
`pip install 'blendmask[serve]'`. Binds 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from blendmask.cli.arguments import DEVICES, positive_float, positive_int

# With --workers > 1 uvicorn starts each worker from an import string; the settings travel in
# this environment variable (JSON), read by `app_from_environment`.
SETTINGS_ENV = "BLENDMASK_SERVE_SETTINGS"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="model file (model.pt, or .onnx)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: local only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help="torch: the Predictor; onnx: onnxruntime on an exported file (a .pt is exported at start)",
    )
    parser.add_argument("--device", default="cpu", choices=DEVICES, help="torch backend only")
    parser.add_argument("--workers", type=positive_int, default=1, help="server processes")
    parser.add_argument("--max-batch", type=positive_int, default=4, help="images per batch")
    parser.add_argument(
        "--max-queue", type=positive_int, default=16, help="requests waiting; past it: 503"
    )
    parser.add_argument(
        "--max-wait-ms", type=positive_float, default=5.0, help="wait this long to fill a batch"
    )
    parser.add_argument(
        "--timeout", type=positive_float, default=30.0, help="seconds per request (then 504)"
    )
    parser.add_argument(
        "--max-upload-mb",
        type=positive_float,
        default=20.0,
        help="largest request body in MB; larger uploads get 413 (default 20)",
    )
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        default=25_000_000,
        help="largest image in pixels, checked on its header before decoding (default 25 M)",
    )


def app_from_environment():  # noqa: ANN201 - a FastAPI app; fastapi is an optional import
    """The app of one uvicorn worker (`--workers N`), from `SETTINGS_ENV`."""
    # Imported here: blendmask.serve needs the optional `serve` extra (fastapi), which the
    # other subcommands and `blendmask --help` must not require.
    from blendmask.serve import ServeSettings, create_app

    return create_app(ServeSettings(**json.loads(os.environ[SETTINGS_ENV])))


def run(args: argparse.Namespace) -> int:
    try:  # the optional `serve` extra, imported only by this subcommand (see above)
        import uvicorn

        from blendmask.serve import ServeSettings, create_app
    except ImportError as exc:
        raise ValueError(
            f"blendmask serve needs the serve extra ({exc.name} is missing): "
            "pip install 'blendmask[serve]'"
        ) from None
    if not Path(args.weights).is_file():
        raise FileNotFoundError(f"{args.weights}: model file not found")
    settings = ServeSettings(
        weights=str(args.weights),
        backend=args.backend,
        device=args.device,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_wait_ms=args.max_wait_ms,
        timeout_s=args.timeout,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
    )
    options = {
        "host": args.host,
        "port": args.port,
        # SIGTERM: stop accepting, let in-flight requests finish (at most one timeout).
        "timeout_graceful_shutdown": int(args.timeout) + 5,
        "log_level": "info",
    }
    if args.workers > 1:
        os.environ[SETTINGS_ENV] = json.dumps(dataclasses.asdict(settings))
        target = "blendmask.cli.serve:app_from_environment"
        uvicorn.run(target, factory=True, workers=args.workers, **options)
    else:
        uvicorn.run(create_app(settings), **options)
    return 0
