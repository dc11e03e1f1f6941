"""Sub-commands whose arguments are built only for the command being run.

Every command is listed (its name and help line, for `slm --help` and argparse's choices), but its
arguments come from the API's option dataclasses, whose modules import PyTorch: `slm prepare` and
`slm --help` must not pay for `slm train`'s flags. A command module adds each command with
`add_command(subparsers, name, arguments, help=..., description=...)`; `build_only` makes a parser's
sub-commands build the arguments of one command alone.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

# The attribute of a subparsers action naming the one command whose arguments are built; absent: all.
ONLY = "slm_arguments_only_for"


def build_only(subparsers, command: str) -> None:
    """Make `add_command` on `subparsers` build the arguments of `command` alone ("": of none)."""
    setattr(subparsers, ONLY, command)


def add_command(subparsers, name: str, arguments: Callable[[argparse.ArgumentParser], None],
                run: Callable | None = None, **kwargs) -> argparse.ArgumentParser:
    """Add the sub-command `name` (kwargs as for `add_parser`: help, description), run by `run(args)`
    when given, and call `arguments(parser)` to add its arguments, unless `build_only` chose another
    command."""
    parser = subparsers.add_parser(name, **kwargs)
    if run is not None:
        parser.set_defaults(run=run)
    if getattr(subparsers, ONLY, name) == name:
        arguments(parser)
    return parser
