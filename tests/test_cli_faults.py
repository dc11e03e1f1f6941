"""What every `slm` command does when the world fails it: a pipe closed early ends it quietly, a disk
fault (full, over quota, read-only, no permission) is one line and exit status 1, and any other
OSError, a bug, keeps its traceback."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slmkit import api
from slmkit.cli import main
from slmkit.model import ModelConfig, Transformer, save_model
from slmkit.tokenizer import train_tokenizer

TEXT = "the quick brown fox jumps over the lazy dog. a cat sat on a mat, and then it ran!"


def slm_argv(*args: str) -> list[str]:
    """The `slm` command as a user runs it (the console script beside this Python, else -m slmkit)."""
    command = Path(sys.executable).with_name("slm")
    return ([str(command)] if command.exists() else [sys.executable, "-m", "slmkit"]) + list(args)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tokenizer = train_tokenizer([TEXT], "char")
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=64, n_layers=2, d_model=32, n_heads=4,
                         d_mlp=64, init_std=0.3)
    directory = save_model(Transformer(config), tmp_path_factory.mktemp("run") / "ckpt")
    tokenizer.save(directory)
    return directory


# -- pipes -------------------------------------------------------------------------------------------
def test_generate_into_a_pipe_its_reader_closes_early_ends_quietly(checkpoint):
    # `slm generate ... | head -c 20`: the reader takes a little and goes while the text still streams.
    process = subprocess.Popen(slm_argv("generate", str(checkpoint), "--prompt", "the cat", "--ignore-eot",
                                        "--max-new-tokens", "100000"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = process.stdout.read(20)
    process.stdout.close()
    _, errors = process.communicate(timeout=300)
    assert first.startswith(b"the cat"), errors
    assert errors == b"" and process.returncode == 141  # 128 + SIGPIPE, as `yes | head` gives


def test_a_command_whose_pipe_is_closed_before_it_prints_ends_quietly():
    # `slm presets | true`: the reader is gone before the table is written (at the final flush).
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(slm_argv("presets"), stdout=write_end, stderr=subprocess.PIPE, timeout=300)
    finally:
        os.close(write_end)
    assert done.stderr == b"" and done.returncode == 141


# -- disk faults ------------------------------------------------------------------------------------
DISK_FAULTS = {
    errno.ENOSPC: "error: cannot write /runs/a/config.json: No space left on device; free some space or choose "
                  "a location on another disk",
    errno.EDQUOT: "error: cannot write /runs/a/config.json: Disk quota exceeded; free space within your quota or "
                  "choose another location",
    errno.EROFS: "error: cannot write /runs/a/config.json: Read-only file system; choose a writable location",
    errno.EACCES: "error: cannot access /runs/a/config.json: Permission denied; check its permissions or choose a "
                  "location you can write to",
    errno.EPERM: "error: cannot access /runs/a/config.json: Operation not permitted; check its permissions or "
                 "choose a location you can write to",
}


def failing_command(monkeypatch, error: OSError) -> None:
    """Make `slm presets` fail with `error`, as a command writing a file would."""
    def fail():
        raise error
    monkeypatch.setattr(api, "presets", fail)


@pytest.mark.parametrize("code", list(DISK_FAULTS), ids=[errno.errorcode[c] for c in DISK_FAULTS])
def test_a_disk_fault_is_one_line_naming_the_path_and_what_to_do(code, monkeypatch, capsys):
    failing_command(monkeypatch, OSError(code, os.strerror(code), "/runs/a/config.json"))
    assert main(["presets"]) == 1
    captured = capsys.readouterr()
    assert captured.err == DISK_FAULTS[code] + "\n" and captured.out == ""


def test_a_full_disk_without_a_path_is_still_one_line(monkeypatch, capsys):
    failing_command(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))  # as file.write raises it
    assert main(["presets"]) == 1
    assert capsys.readouterr().err == ("error: cannot write: No space left on device; free some space or choose "
                                       "a location on another disk\n")


@pytest.mark.parametrize("error", [
    FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "/runs/a/config.json"),
    IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), "/runs/a"),
    PermissionError(errno.EPERM, os.strerror(errno.EPERM)),  # no file: a refused operation, not the disk
], ids=["ENOENT", "EISDIR", "EPERM-no-path"])
def test_other_os_errors_keep_their_traceback(error, monkeypatch):
    failing_command(monkeypatch, error)
    with pytest.raises(type(error)):
        main(["presets"])
