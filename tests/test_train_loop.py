"""The training loop on a tiny model: loss falls, the run directory holds what it should,
checkpoints are kept and pruned as configured, and the NaN guard stops or skips."""

import json
import math

import pytest
import torch
from train_support import one_thread, tiny_overrides, train_events, write_cycle_dataset, write_dataset

import slmkit
from slmkit.api import train
from slmkit.errors import SlmError
from slmkit.model import load_model
from slmkit.train.evaluator import honesty_warnings

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "ds")


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    """40 steps, evaluations every 10, step checkpoints every 10 with the last 2 kept."""
    run = tmp_path_factory.mktemp("runs") / "run"
    result = train(data_dir, run, overrides=tiny_overrides(data_dir, max_steps=40, keep_last=2, samples=1,
                                                           sample_tokens=20), quiet=True)
    return run, result


def test_loss_falls_on_a_tiny_model(finished_run):
    run, result = finished_run
    losses = [e["loss"] for e in train_events(run)]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.5  # from ~ln(24)=3.2 nats down by well over half a nat
    evals = train_events(run, "eval")
    assert [e["step"] for e in evals] == [10, 20, 30, 40]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert result.step == 40 and result.tokens == 40 * 4 * 32


def test_metrics_lines_carry_the_documented_fields(finished_run):
    run, _ = finished_run
    train_line = train_events(run)[-1]
    assert {"event", "step", "loss", "lr", "tokens", "tokens_per_s", "mfu", "time"} <= set(train_line)
    eval_line = train_events(run, "eval")[-1]
    assert {"val_loss", "val_ppl", "val_bpb", "train_loss", "step", "time"} <= set(eval_line)
    assert eval_line["val_ppl"] == pytest.approx(math.exp(eval_line["val_loss"]))
    meta = json.loads((run / "config.json").read_text())
    bytes_per_token = meta["data"]["splits"]["val"]["bytes"] / meta["data"]["splits"]["val"]["tokens"]
    assert eval_line["val_bpb"] == pytest.approx(eval_line["val_loss"] / math.log(2) / bytes_per_token)


def test_run_config_holds_the_resolved_model_and_train_config(finished_run, data_dir):
    run, _ = finished_run
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["d_model"] == 32 and config["train"]["max_steps"] == 40
    assert config["data"]["path"] == str(data_dir.resolve())
    assert config["tokens_per_step"] == 128 and config["parameters"] > 0


def test_keep_last_prunes_step_checkpoints_and_best_last_exist(finished_run):
    run, _ = finished_run
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best", "last", "step-30", "step-40"]
    last = json.loads((checkpoints / "last" / "config.json").read_text())
    assert last["step"] == 40
    evals = train_events(run, "eval")
    best_eval = min(evals, key=lambda e: e["val_loss"])
    best = json.loads((checkpoints / "best" / "config.json").read_text())
    assert best["step"] == best_eval["step"] and best["val_loss"] == pytest.approx(best_eval["val_loss"])
    for name in ("best", "last", "step-30"):
        assert (checkpoints / name / "training_state.pt").is_file()


def test_best_checkpoint_loads_and_reproduces_its_validation_loss(finished_run, data_dir):
    from slmkit.data.loader import open_dataset
    from slmkit.train.loss import language_model_loss

    run, _ = finished_run
    model = slmkit.load(run)  # a run dir resolves to checkpoints/best
    best = json.loads((run / "checkpoints" / "best" / "config.json").read_text())
    dataset = open_dataset(data_dir)
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in dataset.eval_batches("val", 4, 32, max_batches=2):
            total += language_model_loss(model, x, y, reduction="sum").item()
            count += y.numel()
    assert total / count == pytest.approx(best["val_loss"], rel=1e-5)


def test_evaluator_without_a_trainer_reproduces_the_runs_last_evaluation(finished_run, data_dir):
    from slmkit.data.loader import open_dataset
    from slmkit.train.device import setup_device
    from slmkit.train.evaluator import Evaluator

    run, result = finished_run
    model = load_model(run / "checkpoints" / "last")
    evaluator = Evaluator(open_dataset(data_dir), seq_len=32, batch_size=4, batches=2,
                          setup=setup_device("cpu", "fp32"))
    record = evaluator.evaluate(model, step=40, tokens=0)
    last = train_events(run, "eval")[-1]
    for key in ("val_loss", "train_loss", "val_bpb", "train_bpb", "val_ppl"):
        assert record[key] == pytest.approx(last[key], rel=1e-5), key
    assert not model.training  # the model is left in the mode it was given in


def test_samples_file_written_with_the_tokenizer(finished_run):
    run, _ = finished_run
    text = (run / "samples.md").read_text()
    assert text.startswith("# Samples at step 40") and "## Sample 1" in text


def test_existing_run_dir_is_not_overwritten_without_overwrite(finished_run, data_dir):
    run, _ = finished_run
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(SlmError, match="already exists; pass --overwrite"):
        train(data_dir, run, overrides=tiny_overrides(data_dir, max_steps=2), quiet=True)
    assert (run / "metrics.jsonl").read_text() == before


def poison_training_loss(monkeypatch, at_step: int, spoil) -> None:
    """Make the trainer's loss on its `at_step`-th training step (1-based) `spoil(loss)`; other
    steps and every evaluation are left alone."""
    import slmkit.train.trainer as trainer_module

    real_loss = trainer_module.language_model_loss
    calls = {"n": 0}

    def poisoned(model, x, y, segment_ids=None, reduction="mean"):
        loss = real_loss(model, x, y, segment_ids, reduction=reduction)
        if model.training:
            calls["n"] += 1
            if calls["n"] == at_step:
                return spoil(loss)
        return loss

    monkeypatch.setattr(trainer_module, "language_model_loss", poisoned)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_weights(data_dir, tmp_path, monkeypatch):
    poison_training_loss(monkeypatch, 6, lambda loss: loss * float("nan"))
    run = tmp_path / "run"
    with pytest.raises(SlmError, match=r"training loss became nan at step 6.*weights of step 5, the last finite step, are saved in .*last.*nan_policy=skip"):
        train(data_dir, run, overrides=tiny_overrides(data_dir, max_steps=20), quiet=True)
    last = json.loads((run / "checkpoints" / "last" / "config.json").read_text())
    assert last["step"] == 5
    model = load_model(run / "checkpoints" / "last")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_policy_skip_skips_the_step_and_trains_on(data_dir, tmp_path, monkeypatch):
    poison_training_loss(monkeypatch, 3, lambda loss: loss * float("inf"))
    run = tmp_path / "run"
    result = train(data_dir, run, overrides=tiny_overrides(data_dir, max_steps=8, nan_policy="skip",
                                                           eval_interval=0), quiet=True)
    skipped = train_events(run, "skipped_step")
    assert [e["step"] for e in skipped] == [3]
    assert result.step == 8 and 3 not in [e["step"] for e in train_events(run)]


def test_honesty_warnings_flag_memorising_val_below_train_and_near_zero_loss():
    # validation stalls above its best for three evaluations while training loss keeps falling
    stalled = [{"step": s, "val_loss": v, "train_loss": t}
               for s, v, t in [(1, 3.0, 3.0), (2, 2.6, 2.5), (3, 2.62, 2.3), (4, 2.65, 2.1), (5, 2.7, 2.0)]]
    kinds = [kind for kind, _ in honesty_warnings(stalled)]
    assert kinds == ["memorising"]
    assert honesty_warnings(stalled[:4]) == []  # only two evaluations without a new best so far
    # a gap that is a large share of the validation loss, at once
    wide = honesty_warnings([{"step": 9, "val_loss": 2.0, "train_loss": 1.2}])
    assert [k for k, _ in wide] == ["memorising"] and "40% of the validation loss" in wide[0][1]
    assert [k for k, _ in honesty_warnings([{"step": 1, "val_loss": 1.0, "train_loss": 2.0}])] == ["val_below_train"]
    near_zero = honesty_warnings([{"step": 9, "val_loss": 0.01, "train_loss": 0.01}])
    assert [k for k, _ in near_zero] == ["near_zero_loss"] and "perplexity 1.010" in near_zero[0][1]
    assert honesty_warnings([{"step": 9, "val_loss": 0.01, "train_loss": 0.01}], {"near_zero_loss"}) == []


def test_a_gap_that_widens_while_both_losses_fall_is_not_called_memorising():
    # the quick start's pattern: validation other works of the same author, learnt more slowly
    falling = [{"step": 100 * i, "val_loss": 4.83 - 0.045 * i, "train_loss": 4.80 - 0.09 * i} for i in range(6)]
    assert [e["val_loss"] - e["train_loss"] for e in falling] == sorted(e["val_loss"] - e["train_loss"]
                                                                         for e in falling)  # it widens
    assert honesty_warnings(falling) == []


def test_memorising_run_logs_warnings_that_reach_the_report(tmp_path):
    """Text that is one short cycle of tokens, in both splits, is learnt to a loss near zero: that must
    be flagged, in the log and in the report."""
    data = write_cycle_dataset(tmp_path / "ds")
    run = tmp_path / "run"
    train(data, run, overrides=tiny_overrides(data, max_steps=40, lr=3e-2, eval_interval=20,
                                              checkpoint_interval=0), quiet=True)
    kinds = [e["kind"] for e in train_events(run, "warning")]
    assert "near_zero_loss" in kinds
    assert "near_zero_loss" in (run / "report.md").read_text()


def test_compile_failure_falls_back_to_eager_with_a_warning(data_dir, tmp_path, monkeypatch):
    import slmkit.train.trainer as trainer_module

    class BrokenCompiled(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.inner = model

        def forward(self, *args, **kwargs):
            raise RuntimeError("backend compiler failed")

    monkeypatch.setattr(trainer_module, "compile_model", lambda model, enabled: BrokenCompiled(model) if enabled else model)
    eager = tmp_path / "eager"
    train(data_dir, eager, overrides=tiny_overrides(data_dir, max_steps=3, eval_interval=0), quiet=True, report=False)
    compiled = tmp_path / "compiled"
    with pytest.warns(UserWarning, match="torch.compile failed .*backend compiler failed.*eager"):
        train(data_dir, compiled, overrides=tiny_overrides(data_dir, max_steps=3, eval_interval=0, compile=True),
              quiet=True, report=False)
    assert [e["loss"] for e in train_events(compiled)] == [e["loss"] for e in train_events(eager)]


def test_tokens_per_step_sets_accumulation_and_max_tokens_caps_the_steps(data_dir, tmp_path):
    from slmkit.train import resolve_run

    run = resolve_run(data_dir, tmp_path / "run", overrides=tiny_overrides(data_dir, tokens_per_step=512,
                                                                            max_tokens=5000))
    assert run.train.grad_accum == 4 and run.tokens_per_step == 512
    assert run.train.max_steps == 10  # ceil(5000 / 512)
    with pytest.raises(SlmError, match="tokens_per_step = 500 is not a multiple of .* 128; use a multiple, e.g. 512"):
        resolve_run(data_dir, tmp_path / "run", overrides=tiny_overrides(data_dir, tokens_per_step=500))
    assert not (tmp_path / "run").exists()


def test_tensorboard_and_wandb_receive_the_scalars_when_installed(data_dir, tmp_path, monkeypatch):
    import sys
    import types

    scalars, wandb_calls = [], {"init": None, "log": [], "finished": False}

    class FakeWriter:
        def __init__(self, log_dir):
            scalars.append(("dir", log_dir))

        def add_scalar(self, tag, value, step):
            scalars.append((tag, step))

        def close(self):
            pass

    class FakeRun:
        def log(self, values, step):
            wandb_calls["log"].append((step, sorted(values)))

        def finish(self):
            wandb_calls["finished"] = True

    def fake_init(**kwargs):
        wandb_calls["init"] = kwargs
        return FakeRun()

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=fake_init))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    import os

    run = tmp_path / "run"
    train(data_dir, run, overrides=tiny_overrides(data_dir, max_steps=2, eval_interval=2, tensorboard=True,
                                                  wandb=True), quiet=True, report=False)
    assert scalars[0] == ("dir", str(run / "tensorboard"))
    assert ("train/loss", 1) in scalars and ("eval/val_bpb", 2) in scalars
    assert os.environ.pop("WANDB_MODE") == "offline" and wandb_calls["init"]["dir"] == str(run)
    assert (2, sorted(wandb_calls["log"][-1][1])) == wandb_calls["log"][-1] and wandb_calls["finished"]
    assert "eval/val_loss" in wandb_calls["log"][-1][1]


def test_dataset_warnings_from_prepare_reach_the_log_and_report(tmp_path):
    data = write_dataset(tmp_path / "ds")
    meta = json.loads((data / "meta.json").read_text())
    meta["warnings"] = ["3.2% of validation 17-grams also occur in training: check for leakage"]
    (data / "meta.json").write_text(json.dumps(meta))
    run = tmp_path / "run"
    train(data, run, overrides=tiny_overrides(data, max_steps=2, eval_interval=2), quiet=True)
    warnings = train_events(run, "warning")
    assert [w["kind"] for w in warnings] == ["dataset"] and "3.2% of validation" in warnings[0]["message"]
    assert "3.2% of validation 17-grams" in (run / "report.md").read_text()


def test_non_finite_gradient_with_a_finite_loss_stops_before_the_weights_are_spoilt(data_dir, tmp_path, monkeypatch):
    def nan_gradient(loss):  # the loss stays finite; its gradient does not
        loss.register_hook(lambda grad: grad * float("nan"))
        return loss

    poison_training_loss(monkeypatch, 3, nan_gradient)
    run = tmp_path / "run"
    with pytest.raises(SlmError, match="gradient norm became nan at step 3"):
        train(data_dir, run, overrides=tiny_overrides(data_dir, max_steps=10), quiet=True)
    model = load_model(run / "checkpoints" / "last")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_logger_that_is_on_but_not_installed_is_named_once_at_the_start(data_dir, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails: not installed
    monkeypatch.setitem(sys.modules, "wandb", None)
    train(data_dir, tmp_path / "run", overrides=tiny_overrides(data_dir, max_steps=2, eval_interval=0,
                                                               tensorboard=True, wandb=False), report=False)
    out = capsys.readouterr().out
    assert out.count("note: train.tensorboard is on but the tensorboard package is not installed") == 1
    assert "pip install 'slmkit[loggers]'" in out and "train.wandb" not in out
