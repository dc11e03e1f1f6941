"""`slm status`: each run's state (finished, stopped, failed, running) from its events and its lock,
with the step, tokens, best validation figures and newest checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
from train_support import one_thread, tiny_overrides, train_events, write_dataset

from slmkit import api
from slmkit.errors import SlmError
from slmkit.eval.status import find_runs, format_status, run_status, status_of

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/finished (20 steps, evaluations at 10 and 20) and runs/stopped (asked to stop after step 5)."""
    root = tmp_path_factory.mktemp("status")
    data = write_dataset(root / "ds")
    runs = root / "runs"
    overrides = tiny_overrides(data, max_steps=20)
    api.train(data, runs / "finished", overrides=overrides, quiet=True, report=False)

    def stop_at_5(trainer):
        if trainer.step == 5:
            trainer.request_stop()

    api.train(data, runs / "stopped", overrides=overrides, quiet=True, report=False, on_step=stop_at_5)
    return runs


def copy_run(runs, name: str, edit_events=None):
    """A copy of the finished run under `name`, its events rewritten by `edit_events(events)`."""
    target = runs / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(runs / "finished", target)
    if edit_events is not None:
        path = target / "metrics.jsonl"
        events = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps(e) + "\n" for e in edit_events(events)))
    return target


def write_lock(run_dir, pid: int, host: str | None = None) -> None:
    (run_dir.parent / f".{run_dir.name}.lock").write_text(json.dumps({"pid": pid, "host": host or socket.gethostname()}))


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_run_that_ended_is_finished_with_its_figures(runs):
    status = status_of(runs / "finished")
    evals = train_events(runs / "finished", "eval")
    best = min(evals, key=lambda e: e["val_loss"])
    assert (status.state, status.reason) == ("finished", "max steps reached")
    assert (status.step, status.tokens) == (20, 20 * 4 * 32)
    assert status.best_val_loss == best["val_loss"] and status.best_val_bpb == best["val_bpb"]
    assert status.last_checkpoint == "last (step 20)"
    assert status.updated == pytest.approx((runs / "finished" / "metrics.jsonl").stat().st_mtime)


def test_an_interrupted_run_is_stopped_and_says_how_to_continue(runs):
    status = status_of(runs / "stopped")
    assert status.state == "stopped"
    assert status.step == 5 and status.tokens == 5 * 4 * 32
    assert f"slm train --resume {runs / 'stopped'}" in status.reason
    assert status.last_checkpoint == "last (step 5)" and status.best_val_loss is None


def test_a_run_stopped_by_an_error_is_failed_with_the_reason(runs):
    run = copy_run(runs, "nan", lambda events: [e for e in events if e["event"] != "end"] +
                   [{"event": "stopped", "step": 20, "reason": "loss became nan at step 21", "time": 1.0}])
    status = status_of(run)
    assert (status.state, status.reason) == ("failed", "loss became nan at step 21")


def test_a_run_whose_process_died_is_failed_and_its_stale_lock_named(runs):
    run = copy_run(runs, "killed", lambda events: [e for e in events if e["event"] != "end"])
    pid = dead_pid()
    write_lock(run, pid)
    status = status_of(run)
    assert status.state == "failed"
    assert "killed or crashed" in status.reason and f"left by process {pid}" in status.reason


def test_a_run_with_a_live_lock_is_running_even_after_an_earlier_end(runs):
    run = copy_run(runs, "live")  # its metrics end with the previous session's end event
    write_lock(run, os.getpid())
    status = status_of(run)
    assert (status.state, status.reason) == ("running", f"process {os.getpid()} on {socket.gethostname()}")
    write_lock(run, dead_pid(), host="elsewhere")  # another host's process cannot be checked: taken as alive
    assert status_of(run).state == "running"
    write_lock(run, dead_pid())  # negative control: a dead owner on this host does not make it running
    assert status_of(run).state == "finished"


def test_status_finds_runs_in_nested_folders_and_skips_other_folders(runs, tmp_path):
    root = tmp_path / "all"
    shutil.copytree(runs / "finished", root / "group" / "a")
    shutil.copytree(runs / "stopped", root / "b")
    (root / "notes").mkdir()
    (root / "b" / "checkpoints" / "inner").mkdir()  # a run's own folders are not searched
    assert find_runs(root) == [root / "b", root / "group" / "a"]
    assert [s.state for s in run_status(root)] == ["stopped", "finished"]
    table = format_status(run_status(root), root)
    assert table.splitlines()[0].startswith("| run | state | step | tokens | best val loss")
    assert f"| {root / 'group' / 'a'} | finished | 20 | 2,560 |" in table
    assert format_status([], tmp_path / "empty") == f"no runs under {tmp_path / 'empty'}"
    with pytest.raises(SlmError, match="not found"):
        run_status(tmp_path / "missing")


def test_slm_status_prints_a_table_or_json(runs, monkeypatch, capsys):
    import argparse

    from slmkit.cli import eval as cli_eval
    from slmkit.eval import perplexity

    for name, value in (("EvalOptions", perplexity.EvalOptions), ("run_status", run_status),
                        ("format_status", format_status)):
        monkeypatch.setattr(api, name, value, raising=False)
    parser = argparse.ArgumentParser(prog="slm")
    cli_eval.register(parser.add_subparsers())
    args = parser.parse_args(["status", str(runs), "--json"])
    assert args.run(args) == 0
    states = {item["run"]: item["state"] for item in json.loads(capsys.readouterr().out)}
    assert states[str(runs / "finished")] == "finished" and states[str(runs / "stopped")] == "stopped"


def test_status_lists_every_checkpoint_of_a_run_with_its_step(runs):
    run = copy_run(runs, "with-ema")
    checkpoints = run / "checkpoints"
    shutil.copytree(checkpoints / "last", checkpoints / "ema")
    shutil.copytree(checkpoints / "last", checkpoints / "average-last-2")
    (checkpoints / "average-broken").mkdir()  # no config.json: not a checkpoint
    status = status_of(run)
    assert list(status.checkpoints)[-2:] == ["ema", "average-last-2"]
    assert status.checkpoints["ema"] == status.checkpoints["average-last-2"] == 20
    assert status.checkpoints["last"] == status.checkpoints["best"] == 20
    assert "average-broken" not in status.checkpoints
    assert status.last_checkpoint == "last (step 20)"  # what --resume reads, not the ema or the average
    row = format_status([status]).splitlines()[2]
    assert "ema, average-last-2" in row and "average-broken" not in row
