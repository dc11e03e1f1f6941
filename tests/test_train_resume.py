"""Exact resume: a run stopped at step k and resumed reproduces the uninterrupted run step for step
(CPU, float32, with dropout and gradient accumulation, so RNG and optimizer state both matter).
Starting from a checkpoint's weights (--init-from) is a different thing: a fresh optimizer and step 0."""

import json

import pytest
from train_support import one_thread, tiny_overrides, train_events, write_dataset

from slmkit.api import train
from slmkit.errors import SlmError

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "ds")


def settings(data_dir, optimizer):
    return tiny_overrides(data_dir, max_steps=10, grad_accum=2, dropout=0.1, eval_interval=4,
                          checkpoint_interval=0, optimizer=optimizer, muon_lr=0.02)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resumed_run_reproduces_the_uninterrupted_run_step_for_step(data_dir, tmp_path, optimizer):
    whole = tmp_path / "whole"
    train(data_dir, whole, overrides=settings(data_dir, optimizer), quiet=True, report=False)

    def stop_at_step_5(trainer):
        if trainer.step == 5:
            trainer.request_stop("test")

    split = tmp_path / "split"
    first = train(data_dir, split, overrides=settings(data_dir, optimizer), quiet=True, report=False,
                  on_step=stop_at_step_5)
    assert first.interrupted and first.step == 5
    assert json.loads((split / "checkpoints" / "last" / "config.json").read_text())["step"] == 5
    second = train(resume=split, quiet=True, report=False)
    assert not second.interrupted and second.step == 10

    expected = [(e["step"], e["loss"]) for e in train_events(whole)]
    resumed = [(e["step"], e["loss"]) for e in train_events(split)]
    assert [s for s, _ in resumed] == list(range(1, 11))
    assert resumed == expected  # bitwise equal losses
    val = [e["val_loss"] for e in train_events(whole, "eval")]
    assert [e["val_loss"] for e in train_events(split, "eval")] == val
    assert [e["event"] for e in train_events(split, "resume")] == ["resume"]


def test_metrics_logged_after_the_checkpoint_are_dropped_on_resume(data_dir, tmp_path):
    run = tmp_path / "run"

    def stop_at_step_6(trainer):
        if trainer.step == 6:
            trainer.request_stop("test")

    train(data_dir, run, overrides=tiny_overrides(data_dir, max_steps=8, checkpoint_interval=3, keep_last=0,
                                                  eval_interval=0),
          quiet=True, report=False, on_step=stop_at_step_6)
    # Pretend the process died after step 6 was logged but before last/ was written: resume from step-3.
    import shutil

    shutil.rmtree(run / "checkpoints" / "last")
    train(resume=run, quiet=True, report=False)
    steps = [e["step"] for e in train_events(run)]
    assert steps == list(range(1, 9))


def test_resume_with_a_different_model_config_is_refused_and_changes_nothing(data_dir, tmp_path):
    run = tmp_path / "run"
    train(data_dir, run, overrides=tiny_overrides(data_dir, max_steps=3, eval_interval=0), quiet=True, report=False)
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(SlmError, match=r"cannot resume .* different model config \(d_model: 32 vs 64"):
        train(resume=run, overrides=["d_model=64"], quiet=True)
    assert (run / "metrics.jsonl").read_text() == before


def test_resume_can_extend_max_steps(data_dir, tmp_path):
    run = tmp_path / "run"
    train(data_dir, run, overrides=tiny_overrides(data_dir, max_steps=3, eval_interval=0, schedule="constant"),
          quiet=True, report=False)
    result = train(resume=run, overrides=["train.max_steps=5"], quiet=True, report=False)
    assert result.step == 5 and [e["step"] for e in train_events(run)] == [1, 2, 3, 4, 5]


def test_init_from_starts_a_new_run_from_the_weights_with_a_fresh_optimizer(data_dir, tmp_path):
    source = tmp_path / "source"
    train(data_dir, source, overrides=tiny_overrides(data_dir, max_steps=15, eval_interval=15), quiet=True,
          report=False)
    source_loss = train_events(source, "eval")[-1]["val_loss"]
    run = tmp_path / "continued"
    train(data_dir, run, overrides=[o for o in tiny_overrides(data_dir, max_steps=1, eval_interval=1, lr=1e-9)
                                    if o.startswith("train.")],
          init_from=source, quiet=True, report=False)
    config = json.loads((run / "config.json").read_text())
    assert config["init_from"].endswith("best") and config["model"]["d_model"] == 32
    first = train_events(run)[0]
    assert first["step"] == 1  # a new run counts from zero
    train(resume=run, overrides=["train.max_steps=2"], quiet=True, report=False)
    assert json.loads((run / "config.json").read_text())["init_from"] == config["init_from"]
    # with a ~zero learning rate one step changes nothing: the new run starts at the source's quality
    assert train_events(run, "eval")[-1]["val_loss"] == pytest.approx(source_loss, abs=1e-4)


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(data_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    command = [sys.executable, "-m", "slmkit", "train", "--data", str(data_dir), "--out", str(run), "--quiet"]
    for override in tiny_overrides(data_dir, max_steps=100000, eval_interval=0, checkpoint_interval=0):
        command += ["--set", override]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(_lines(run)) < 5:
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err[-2000:]
    stopped = train_events(run, "interrupted")
    assert len(stopped) == 1 and stopped[0]["reason"] == "SIGTERM received"
    last = json.loads((run / "checkpoints" / "last" / "config.json").read_text())
    assert last["step"] == stopped[0]["step"] == train_events(run)[-1]["step"]
    result = train(resume=run, overrides=[f"train.max_steps={last['step'] + 2}"], quiet=True, report=False)
    assert result.step == last["step"] + 2


def _lines(run):
    path = run / "metrics.jsonl"
    return path.read_text().splitlines() if path.is_file() else []


def test_a_damaged_training_state_is_refused_not_half_loaded(data_dir, tmp_path):
    run = tmp_path / "run"
    train(data_dir, run, overrides=tiny_overrides(data_dir, max_steps=2, eval_interval=0), quiet=True, report=False)
    state = run / "checkpoints" / "last" / "training_state.pt"
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2])
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(SlmError, match="training_state.pt does not match the hash .* truncated"):
        train(resume=run, overrides=["train.max_steps=4"], quiet=True)
    assert (run / "metrics.jsonl").read_text() == before


class _RunsCodeWhenUnpickled:
    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_training_state_holding_objects_is_refused_in_one_line_and_never_run(data_dir, tmp_path):
    import hashlib

    import torch

    run = tmp_path / "run"
    train(data_dir, run, overrides=tiny_overrides(data_dir, max_steps=2, eval_interval=0), quiet=True, report=False)
    last = run / "checkpoints" / "last"
    payload = _RunsCodeWhenUnpickled()
    payload.marker = tmp_path / "code-ran"
    torch.save({"step": 2, "evil": payload}, last / "training_state.pt")
    config = json.loads((last / "config.json").read_text())  # the hash updated too, as a tamperer would
    config["training_state_sha256"] = hashlib.sha256((last / "training_state.pt").read_bytes()).hexdigest()
    (last / "config.json").write_text(json.dumps(config))
    with pytest.raises(SlmError) as caught:
        train(resume=run, overrides=["train.max_steps=4"], quiet=True)
    message = str(caught.value)
    assert message.startswith(f"refusing {last / 'training_state.pt'}: it holds ") and "could run code" in message
    assert "\n" not in message and "weights_only" not in message and "--from step-N" in message
    assert not payload.marker.exists()


def test_resume_from_a_chosen_checkpoint_continues_exactly_from_it(data_dir, tmp_path):
    whole = tmp_path / "whole"
    train(data_dir, whole, overrides=tiny_overrides(data_dir, max_steps=9, checkpoint_interval=3, keep_last=0,
                                                    eval_interval=0), quiet=True, report=False)
    expected = [(e["step"], e["loss"]) for e in train_events(whole)]
    result = train(resume=whole, resume_from="step-3", quiet=True, report=False)
    assert result.step == 9
    assert [(e["step"], e["loss"]) for e in train_events(whole)] == expected  # steps 4-9 again, bitwise
    assert train_events(whole, "resume")[-1]["checkpoint"] == str(whole / "checkpoints" / "step-3")
    with pytest.raises(SlmError, match=r"--from step-4: .* is not a resumable checkpoint .* this run has "
                                       r"best, last, step-3, step-6, step-9"):
        train(resume=whole, resume_from="step-4", quiet=True, report=False)
    with pytest.raises(SlmError, match="use it with --resume RUN"):
        train(data_dir, tmp_path / "other", resume_from="best", quiet=True, report=False,
              overrides=tiny_overrides(data_dir))


def test_damage_to_one_checkpoint_never_reaches_the_others(data_dir, tmp_path):
    from slmkit.model import load_model

    run = tmp_path / "run"
    train(data_dir, run, overrides=tiny_overrides(data_dir, max_steps=4, checkpoint_interval=4, eval_interval=4),
          quiet=True, report=False)
    checkpoints = run / "checkpoints"
    assert {p.name for p in checkpoints.iterdir()} == {"best", "last", "step-4"}  # all three of step 4
    with open(checkpoints / "last" / "model.safetensors", "r+b") as handle:  # damaged in place
        handle.seek(100)
        handle.write(b"\0" * 64)
    with pytest.raises(SlmError, match="does not match the hash"):
        load_model(checkpoints / "last")
    for name in ("best", "step-4"):
        load_model(checkpoints / name)  # intact: copies, not hard links
    result = train(resume=run, resume_from="step-4", quiet=True, report=False,
                   overrides=["train.max_steps=6"])
    assert result.step == 6


def test_resume_refuses_a_dataset_replaced_under_the_run_naming_what_changed(tmp_path):
    """The issue's case, as a user meets it: the dataset is prepared again in place with another
    tokenizer (`slm prepare --force`), then `slm train --resume` must refuse, naming the change."""
    import subprocess
    import sys

    from train_support import synthetic_text

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index, text in enumerate(synthetic_text(40, seed=3)):
        (corpus / f"doc{index}.txt").write_text(text)

    def slm(*args):
        return subprocess.run([sys.executable, "-m", "slmkit", *map(str, args)], capture_output=True, text=True,
                              timeout=300)

    data, run = tmp_path / "ds", tmp_path / "run"
    assert slm("prepare", corpus, "--tokenizer", "char", "--out", data, "--val", "4", "--quiet").returncode == 0
    vocab = json.loads((data / "meta.json").read_text())["vocab_size"]
    train(data, run, overrides=tiny_overrides(data, max_steps=4, eval_interval=0), quiet=True, report=False)
    assert vocab == json.loads((run / "config.json").read_text())["model"]["vocab_size"]
    replaced = slm("prepare", corpus, "--tokenizer", "bpe:300", "--out", data, "--val", "4", "--quiet", "--force")
    assert replaced.returncode == 0, replaced.stderr
    process = slm("train", "--resume", run, "--set", "train.max_steps=8")
    assert process.returncode == 2 and "Traceback" not in process.stderr
    assert f"error: the dataset {data} is not the one {run} was trained on: its tokenizer files differ" \
        in process.stderr
    assert "--init-from" in process.stderr
    assert json.loads((run / "checkpoints" / "last" / "config.json").read_text())["step"] == 4  # untouched


def test_resume_refuses_a_split_whose_tokens_changed(tmp_path):
    import numpy as np

    data = write_dataset(tmp_path / "ds")
    run = tmp_path / "run"
    train(data, run, overrides=tiny_overrides(data, max_steps=4, eval_interval=0), quiet=True, report=False)
    tokens = np.fromfile(data / "train.bin", dtype=np.uint16)
    np.roll(tokens, 7).tofile(data / "train.bin")  # same count, other order
    with pytest.raises(SlmError, match="the train split's tokens differ"):
        train(resume=run, quiet=True, report=False, overrides=["train.max_steps=8"])


def test_a_run_in_use_by_a_live_process_is_refused_and_a_stale_lock_is_taken_over(data_dir, tmp_path, capsys):
    import socket
    import subprocess
    import sys

    run = tmp_path / "run"
    train(data_dir, run, overrides=tiny_overrides(data_dir, max_steps=2, eval_interval=0), quiet=True, report=False)
    lock = tmp_path / ".run.lock"
    assert not lock.exists()  # released at the end
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        before = (run / "metrics.jsonl").read_text()
        with pytest.raises(SlmError, match=rf"run {run} is in use by process {sleeper.pid} .* wait for it"):
            train(resume=run, overrides=["train.max_steps=4"], quiet=True, report=False)
        assert (run / "metrics.jsonl").read_text() == before  # nothing written
    finally:
        sleeper.kill()
        sleeper.wait()
    result = train(resume=run, overrides=["train.max_steps=4"], report=False)  # the owner is gone now
    assert result.step == 4 and not lock.exists()
    assert f"taking over the lock of {run} left by process {sleeper.pid}" in capsys.readouterr().out
