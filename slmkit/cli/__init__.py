"""The `slm` command: one sub-command per stage, each a thin call of a public function of `slmkit.api`.

Each area registers its sub-commands from its own module (`register(subparsers)`), so the command
line stays a table of contents and the logic lives in the API. `main` builds the arguments of the
command being run alone (`slmkit.cli.command`), and `slmkit.api` imports a stage on its first use, so
`slm prepare`, `slm tokenizer`, `slm presets`, `slm info` and `slm --help` never load PyTorch.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings

from slmkit import __version__
from slmkit.cli import audit, average, code, compare, data, finetune, generate, interop, model, recipe, train
from slmkit.cli import eval as evaluation
from slmkit.cli import onnx as onnx_export
from slmkit.cli import quantize as quantization
from slmkit.cli import serve as serving
from slmkit.cli.command import build_only
from slmkit.errors import SlmError

# The modules that add sub-commands, in `slm --help` order; each exposes register(subparsers).
COMMAND_MODULES = (model, data, interop, onnx_export, train, recipe, finetune, generate, evaluation, code, audit, compare, average, quantization, serving)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `slm` parser: every command, with the arguments of all of them, or of `command` alone
    ("": of none; every command is still listed with its help line)."""
    parser = argparse.ArgumentParser(
        prog="slm", description="slmkit: train small language models from scratch, end to end."
    )
    parser.add_argument("--version", action="version", version=f"slmkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    if command is not None:
        build_only(subparsers, command)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def command_name(argv: list[str]) -> str:
    """The sub-command `argv` runs: its first word that is not a flag ("" when none). The `slm` parser's
    own flags (--help, --version) take no value, so no other word can come first."""
    return next((word for word in argv if not word.startswith("-")), "")


# Disk faults that are the user's to fix, not bugs: what to do about each. An OSError with another
# errno, or one of the last two without a path, is a bug and keeps its traceback.
DISK_FAULTS = {
    errno.ENOSPC: ("cannot write", "free some space or choose a location on another disk"),
    errno.EDQUOT: ("cannot write", "free space within your quota or choose another location"),
    errno.EROFS: ("cannot write", "choose a writable location"),
    errno.EACCES: ("cannot access", "check its permissions or choose a location you can write to"),
    errno.EPERM: ("cannot access", "check its permissions or choose a location you can write to"),
}


def disk_fault_message(error: OSError) -> str | None:
    """The one line for an OSError that is a disk fault (full, over quota, read-only, no permission),
    or None for any other OSError."""
    if error.errno not in DISK_FAULTS:
        return None
    action, remedy = DISK_FAULTS[error.errno]
    if error.filename is None:
        if error.errno in (errno.EACCES, errno.EPERM):
            return None  # a refused operation that names no file is not a disk fault
        return f"{action}: {error.strerror}; {remedy}"
    return f"{action} {os.fsdecode(error.filename)}: {error.strerror}; {remedy}"


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _stdout_gone() -> None:
    """The reader of our output has gone (`slm ... | head`): send what is left to /dev/null, so the
    interpreter's last flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """Run one `slm` command; the exit status: 0 done, 2 a user error (one line, no traceback), 1 a
    disk fault (one line), 130 interrupted, 141 the output pipe was closed (as SIGPIPE would)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_name(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _print_warning  # one `warning: ...` line, not Python's source line
            result = args.run(args)
        sys.stdout.flush()  # a closed pipe shows here rather than at exit
    except SlmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _stdout_gone()
        return 141
    except OSError as error:
        message = disk_fault_message(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
