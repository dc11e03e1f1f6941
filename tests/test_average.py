"""Checkpoint averaging (slm average): the elementwise mean of checkpoints of one run, written as a
normal checkpoint with the tokenizer; the refusals (one network, one run, at least 2, none missing,
never over an input)."""

import json
import shutil

import pytest
import torch
from train_support import one_thread, tiny_overrides, write_dataset

import slmkit
from slmkit.api import average_checkpoints, train
from slmkit.cli import main
from slmkit.errors import SlmError
from slmkit.model.checkpoint import load_state, write_checkpoint

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "ds")


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    """A tiny run with step-4, step-8 and step-12 checkpoints (and last/, best/)."""
    run = tmp_path_factory.mktemp("runs") / "run"
    train(data_dir, run, overrides=tiny_overrides(data_dir, max_steps=12, eval_interval=0, checkpoint_interval=4,
                                                  keep_last=0),
          quiet=True, report=False)
    return run


def test_average_of_two_checkpoints_is_their_elementwise_mean(run, tmp_path):
    out = average_checkpoints(run, names=["step-4", "step-12"], out=tmp_path / "avg")
    _, first, _ = load_state(run / "checkpoints" / "step-4")
    _, second, _ = load_state(run / "checkpoints" / "step-12")
    _, mean, meta = load_state(out)
    assert set(mean) == set(first)
    for name in first:
        assert mean[name].dtype == first[name].dtype
        torch.testing.assert_close(mean[name], (first[name] + second[name]) / 2, rtol=0, atol=1e-7)
    assert any(not torch.equal(mean[name], first[name]) for name in first)
    assert meta["averaged"]["steps"] == [4, 12] and meta["step"] == 12
    assert meta["run"] == str(run.resolve())
    assert "training_state.pt" not in {p.name for p in out.iterdir()}


def test_last_n_averages_the_newest_step_checkpoints_into_the_runs_checkpoints(run):
    out = average_checkpoints(run, last=2)
    assert out == run / "checkpoints" / "average-8-12"
    meta = json.loads((out / "config.json").read_text())
    assert [p.rsplit("/", 1)[-1] for p in meta["averaged"]["checkpoints"]] == ["step-8", "step-12"]
    model = slmkit.load(out)  # a normal checkpoint: loads, with its tokenizer
    from slmkit.generate import model_tokenizer

    assert model_tokenizer(model).decode(model_tokenizer(model).encode("the king")) == "the king"
    with pytest.raises(SlmError, match="already exists; choose another --out or pass --overwrite"):
        average_checkpoints(run, last=2)
    assert average_checkpoints(run, last=2, overwrite=True) == out  # its own output: replaceable


def test_averaging_refuses_fewer_than_two_a_missing_or_a_repeated_checkpoint(run):
    with pytest.raises(SlmError, match="at least 2 checkpoints"):
        average_checkpoints(run, names=["step-4"])
    with pytest.raises(SlmError, match="at least 2 checkpoints; give --last 2"):
        average_checkpoints(run, last=1)
    with pytest.raises(SlmError, match=r"--last 5: run .* has 3 step-N checkpoints \(step-4, step-8, step-12\)"):
        average_checkpoints(run, last=5)
    with pytest.raises(SlmError, match=r"checkpoint 'step-5' not found in .*checkpoints \(it holds: .*step-4"):
        average_checkpoints(run, names=["step-4", "step-5"])
    with pytest.raises(SlmError, match="is given twice"):
        average_checkpoints(run, names=["step-4", "step-4"])
    with pytest.raises(SlmError, match="--last N .* or --checkpoints"):
        average_checkpoints(run)


def test_averaging_refuses_other_networks_and_other_runs(run, tmp_path):
    config, weights, meta = load_state(run / "checkpoints" / "step-4")
    other_run = tmp_path / "other"
    write_checkpoint(other_run, config, weights, extra={**{k: v for k, v in meta.items()
                                                           if k in ("step", "tokens")}, "run": "/elsewhere/run"})
    with pytest.raises(SlmError, match=r"comes from run /elsewhere/run.*one run only"):
        average_checkpoints([run / "checkpoints" / "step-8", other_run])
    wider = tmp_path / "wider"
    write_checkpoint(wider, config.__class__.from_dict({**config.to_dict(), "d_mlp": 96}),
                     {**weights}, extra={"run": meta["run"]})
    with pytest.raises(SlmError, match=r"another model config .*d_mlp: 64 vs 96.*one network only"):
        average_checkpoints([run / "checkpoints" / "step-8", wider])


def test_averaging_never_writes_over_an_input(run):
    with pytest.raises(SlmError, match="will not replace .*step-8: it is the input"):
        average_checkpoints(run, names=["step-4", "step-8"], out=run / "checkpoints" / "step-8", overwrite=True)
    assert json.loads((run / "checkpoints" / "step-8" / "config.json").read_text())["step"] == 8


def test_slm_average_cli_writes_the_average_and_scores_it(run, tmp_path, capsys):
    out = tmp_path / "cli-avg"
    assert main(["average", str(run), "--checkpoints", "step-8", "last", "--out", str(out), "--eval"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: the mean of 2 checkpoints" in printed
    assert "step-8" in printed and "checkpoints/last" in printed
    assert printed.count("| ") >= 3 and "bits/byte" in printed  # the table: both inputs and the average
    assert (out / "model.safetensors").is_file()
    shutil.rmtree(out)
    assert main(["average", str(run), "--last", "1"]) == 2
    assert "at least 2 checkpoints" in capsys.readouterr().err


def test_eval_of_a_runs_checkpoints_scores_its_averages_too(run, tmp_path):
    from slmkit.eval.perplexity import evaluate_checkpoints, evaluate_models

    average = average_checkpoints(run, last=2, overwrite=True)
    report = evaluate_checkpoints(run, out=tmp_path, progress=False, max_tokens=256)
    names = [result.name for result in report.results]
    assert names[-1] == average.name and {"step-4", "step-8", "step-12", "last"} <= set(names)
    alone = evaluate_models([average], data=json.loads((run / "config.json").read_text())["data"]["path"],
                                progress=False, max_tokens=256).results[0]
    assert report.results[-1].loss == pytest.approx(alone.loss, rel=1e-6)
