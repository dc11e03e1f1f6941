"""`slm presets` and `slm info`: thin calls of `slmkit.api` (presets, describe_model)."""

from __future__ import annotations

from slmkit import api
from slmkit.cli.command import add_command


def add_config_arguments(parser, required: bool = False) -> None:
    """--preset / --config / --set, shared by every command that builds a model config."""
    parser.add_argument("--preset", help="a named preset (see `slm presets`)")
    parser.add_argument("--config", help="a TOML or YAML config file with [model] (and [train]) sections")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a field, e.g. --set n_layers=8 or --set train.lr=3e-4 (repeatable)")


def register(subparsers) -> None:
    presets = subparsers.add_parser("presets", help="list the model presets")
    presets.set_defaults(run=_presets)

    add_command(subparsers, "info", add_config_arguments, _info,
                help="parameters, memory, FLOPs and KV cache of a model config")


def _presets(args) -> int:
    print(api.presets())
    return 0


def _info(args) -> int:
    print(api.describe_model(args.preset, args.config, args.overrides))
    return 0
