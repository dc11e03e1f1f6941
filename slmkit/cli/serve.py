"""`slm serve`: a thin call of slmkit.api.serve (the web demo and the JSON API of one or two models).

The flags are the fields of `ServeOptions` (one flag each, by `add_options`).
"""

from __future__ import annotations

from slmkit import api
from slmkit.cli.command import add_command
from slmkit.cli.options import add_options, options_from_args


def register(subparsers) -> None:
    add_command(
        subparsers, "serve", _serve_arguments, _serve,
        help="a web demo and a JSON HTTP API for one model, or two side by side",
        description="Serve MODEL (and MODEL2, side by side with the same prompt and seed) on one port: a Gradio web "
                    "demo at / and a JSON API at /api/complete (streaming with \"stream\": true). Prompts, new "
                    "tokens, waiting requests and concurrent generations are bounded by the flags below; "
                    "a request beyond the queue gets HTTP 429. Listens on 127.0.0.1 unless --host says otherwise.")


def _serve_arguments(serve) -> None:
    serve.add_argument("models", metavar="MODEL", nargs="+",
                       help="a checkpoint or run directory (its best, else last, checkpoint); give two to compare")
    add_options(serve, api.ServeOptions)
    serve.add_argument("--device", default="cpu", help="where the models run: cpu, cuda, mps (default cpu)")
    serve.add_argument("--dtype", choices=list(api.DTYPES), default=None, help="weights' dtype (default: as saved)")


def _serve(args) -> int:
    options = options_from_args(api.ServeOptions, args)
    dtype = api.DTYPES[args.dtype] if args.dtype else None
    api.serve(args.models, options, device=args.device, dtype=dtype)
    return 0
