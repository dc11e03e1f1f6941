"""The `slm` command: one sub-command per stage, each a thin call of a public function of `slmkit.api`.

Each area registers its sub-commands from its own module (`register(subparsers)`), so the command
line stays a table of contents and the logic lives in the API.
"""

from __future__ import annotations

import argparse
import sys

from slmkit import __version__
from slmkit.cli import data, generate, interop, model, train
from slmkit.errors import SlmError

# The modules that add sub-commands, in `slm --help` order; each exposes register(subparsers).
COMMAND_MODULES = (model, data, interop, train, generate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slm", description="slmkit: train small language models from scratch, end to end."
    )
    parser.add_argument("--version", action="version", version=f"slmkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        result = args.run(args)
    except SlmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
