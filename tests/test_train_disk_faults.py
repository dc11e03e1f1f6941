"""Disk faults during training end in one line naming the path and what to do, never a traceback,
and leave what was written before intact: a read-only location, a disk too full for the next
checkpoint, and a write that fails half-way."""

import errno
import json
import shutil
import subprocess
import sys

import pytest
import torch
from train_support import one_thread, small_filesystem, tiny_overrides, train_events, write_dataset

from slmkit.api import train
from slmkit.errors import SlmError
from slmkit.model import load_model

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "ds")


def slm(*args):
    return subprocess.run([sys.executable, "-m", "slmkit", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_a_read_only_run_directory_gives_one_line_and_changes_nothing(data_dir, tmp_path):
    with small_filesystem(tmp_path / "fs", "16m") as (root, read_only):
        run = root / "run"
        train(data_dir, run, overrides=tiny_overrides(data_dir, max_steps=2, eval_interval=0), quiet=True)
        read_only()
        before = sorted(p.name for p in (run / "checkpoints").iterdir())
        for command in (("train", "--resume", run, "--set", "train.max_steps=4"),
                        ("train", "--data", data_dir, "--out", root / "new",
                         *[part for item in tiny_overrides(data_dir) for part in ("--set", item)])):
            process = slm(*command)
            assert process.returncode == 2, process.stderr
            assert "Traceback" not in process.stderr and len(process.stderr.strip().splitlines()) == 1
            assert "Read-only file system" in process.stderr and "writable location" in process.stderr
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_a_disk_too_full_for_the_next_checkpoint_stops_before_writing_it(data_dir, tmp_path):
    with small_filesystem(tmp_path / "fs", "8m") as (root, _):
        run = root / "run"

        def fill_the_disk(trainer):
            if trainer.step == 2:  # after the first checkpoint, leave about 100 KB free
                free = shutil.disk_usage(root).free
                (root / "filler").write_bytes(b"\0" * max(0, free - 100_000))

        with pytest.raises(SlmError, match=r"not enough free space for the step 4 checkpoint in .*: it needs about "
                                           r"\d+ MB .* MB are free; free some space"):
            train(data_dir, run, overrides=tiny_overrides(data_dir, max_steps=8, eval_interval=0,
                                                         checkpoint_interval=2), quiet=True, on_step=fill_the_disk)
        assert json.loads((run / "checkpoints" / "last" / "config.json").read_text())["step"] == 2
        load_model(run / "checkpoints" / "last")  # intact
        assert "not enough free space" in train_events(run, "stopped")[-1]["reason"]
        (root / "filler").unlink()
        assert train(resume=run, quiet=True, report=False).step == 8  # free space again: it continues


def test_a_checkpoint_write_that_fails_half_way_keeps_the_previous_one(data_dir, tmp_path, monkeypatch):
    from slmkit.train import checkpointer

    run = tmp_path / "run"
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint's training state
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpointer.torch, "save", failing_save)
    with pytest.raises(SlmError, match=r"cannot write the step 4 checkpoint in .*No space left on device; free "
                                       r"some space .*intact"):
        train(data_dir, run, overrides=tiny_overrides(data_dir, max_steps=8, eval_interval=0, checkpoint_interval=2),
              quiet=True)
    assert json.loads((run / "checkpoints" / "last" / "config.json").read_text())["step"] == 2
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporary left
