"""train.ema_decay: an exponential moving average of the weights, updated after every optimizer step
with the warm start min(decay, (1 + n) / (10 + n)), evaluated beside the raw weights, saved as
checkpoints/ema/, and carried through an exact resume."""

import json

import pytest
import torch
from train_support import one_thread, run_slm_under_torchrun, tiny_overrides, train_events, write_dataset

import slmkit
from slmkit.api import train
from slmkit.errors import SlmError
from slmkit.model.checkpoint import load_state
from slmkit.model.config import ModelConfig
from slmkit.model.transformer import Transformer
from slmkit.train.config import TrainConfig
from slmkit.train.ema import ExponentialMovingAverage, warm_decay

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "ds")


def tiny_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=40, context_length=16, n_layers=1, d_model=16, n_heads=2, d_mlp=32))


def test_warm_start_decay_rises_from_a_tenth_to_the_configured_decay():
    assert warm_decay(0.999, 0) == pytest.approx(0.1)
    assert warm_decay(0.999, 10) == pytest.approx(11 / 20)
    assert warm_decay(0.9, 1000) == 0.9  # capped at the configured decay


def test_ema_update_follows_the_formula_on_a_tiny_model():
    model = tiny_model()
    ema = ExponentialMovingAverage(model, 0.5)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    expected = dict(start)
    for update in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        decay = min(0.5, (1 + update) / (10 + update))
        expected = {name: decay * expected[name] + (1 - decay) * p.detach()
                    for name, p in model.named_parameters()}
        ema.update(model)
    assert ema.updates == 3
    for name, p in model.named_parameters():
        torch.testing.assert_close(ema.shadow[name], expected[name], rtol=1e-6, atol=1e-6)
        assert not torch.equal(ema.shadow[name], p)  # the average differs from the last weights


def test_applied_swaps_the_average_in_and_restores_the_weights_bit_for_bit():
    model = tiny_model()
    ema = ExponentialMovingAverage(model, 0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ema.update(model)
    with ema.applied(model):
        for name, p in model.named_parameters():
            assert torch.equal(p, ema.shadow[name])
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name])


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1, "0.9", True])
def test_ema_decay_outside_zero_to_one_is_refused(value):
    with pytest.raises(SlmError, match=r"train\.ema_decay = .*must be in \(0, 1\)"):
        TrainConfig(ema_decay=value).validate()


def test_ema_decay_with_fsdp_is_refused():
    with pytest.raises(SlmError, match=r"ema_decay = 0\.99 is not supported with train\.parallelism = \"fsdp\""):
        TrainConfig(ema_decay=0.99, parallelism="fsdp").validate()
    assert TrainConfig(ema_decay=0.99).validate().ema_decay == 0.99


def test_training_with_ema_logs_ema_figures_and_writes_a_loadable_ema_checkpoint(data_dir, tmp_path):
    run = tmp_path / "run"
    train(data_dir, run, overrides=tiny_overrides(data_dir, max_steps=12, eval_interval=6, ema_decay=0.9),
          quiet=True, report=False)
    evals = train_events(run, "eval")
    assert [e["step"] for e in evals] == [6, 12]
    for record in evals:
        for key in ("ema_val_loss", "ema_val_ppl", "ema_val_bpb", "ema_train_loss", "ema_train_bpb"):
            assert isinstance(record[key], float)
        assert record["ema_val_loss"] != record["val_loss"]
    meta = json.loads((run / "checkpoints" / "ema" / "config.json").read_text())
    assert meta["step"] == 12 and meta["ema"] == {"decay": 0.9, "updates": 12}
    model = slmkit.load(run / "checkpoints" / "ema")
    from slmkit.tokenizer import load_tokenizer

    assert load_tokenizer(run / "checkpoints" / "ema").encode("the king") == \
        load_tokenizer(data_dir).encode("the king")
    # the saved average is the one evaluated: its val loss matches the logged one
    from slmkit.data.loader import open_dataset
    from slmkit.train.device import setup_device
    from slmkit.train.evaluator import Evaluator

    evaluator = Evaluator(open_dataset(data_dir), 32, 4, 2, setup_device("cpu", "fp32"))
    assert evaluator.split_loss(model, "val") == pytest.approx(evals[-1]["ema_val_loss"], rel=1e-5)
    _, raw, _ = load_state(run / "checkpoints" / "last")
    _, averaged, _ = load_state(run / "checkpoints" / "ema")
    assert set(raw) == set(averaged)
    assert any(not torch.equal(raw[name], averaged[name]) for name in raw)


def test_a_resumed_run_with_ema_ends_with_the_uninterrupted_runs_ema_weights(data_dir, tmp_path):
    settings = tiny_overrides(data_dir, max_steps=10, grad_accum=2, dropout=0.1, eval_interval=4,
                              checkpoint_interval=0, ema_decay=0.8)
    whole = tmp_path / "whole"
    train(data_dir, whole, overrides=settings, quiet=True, report=False)

    def stop_at_step_5(trainer):
        if trainer.step == 5:
            trainer.request_stop("test")

    split = tmp_path / "split"
    first = train(data_dir, split, overrides=settings, quiet=True, report=False, on_step=stop_at_step_5)
    assert first.interrupted and first.step == 5
    assert json.loads((split / "checkpoints" / "ema" / "config.json").read_text())["step"] == 5
    train(resume=split, quiet=True, report=False)
    _, expected, _ = load_state(whole / "checkpoints" / "ema")
    _, resumed, _ = load_state(split / "checkpoints" / "ema")
    assert set(resumed) == set(expected)
    for name in expected:
        assert torch.equal(resumed[name], expected[name]), name
    ema_losses = [e["ema_val_loss"] for e in train_events(whole, "eval")]
    assert [e["ema_val_loss"] for e in train_events(split, "eval")] == ema_losses


def test_resuming_a_run_without_ema_with_ema_on_starts_the_average_there(data_dir, tmp_path):
    run = tmp_path / "run"
    train(data_dir, run, overrides=tiny_overrides(data_dir, max_steps=4, eval_interval=0), quiet=True, report=False)
    assert not (run / "checkpoints" / "ema").exists()
    train(resume=run, overrides=["train.max_steps=6", "train.ema_decay=0.5"], quiet=True, report=False)
    meta = json.loads((run / "checkpoints" / "ema" / "config.json").read_text())
    assert meta["step"] == 6 and meta["ema"]["updates"] == 2


def test_a_lora_fine_tune_with_ema_saves_the_averaged_adapters_merged_into_the_base(tmp_path):
    pytest.importorskip("peft")
    from train_support import train_bpe_base, write_repeat_rows

    from slmkit import api

    train_bpe_base(tmp_path, tmp_path / "base", documents=8, steps=4, report=False)
    rows = write_repeat_rows(tmp_path / "rows.jsonl")
    out = tmp_path / "lora"
    fast = ["train.max_steps=6", "train.eval_interval=6", "train.eval_batches=2", "train.batch_size=4",
            "train.warmup_steps=2", "train.lr=3e-3", "train.precision=\"fp32\"", "train.device=\"cpu\"",
            "train.tensorboard=false", "train.wandb=false", "train.threads=1", "train.ema_decay=0.5"]
    api.finetune(tmp_path / "base", api.FinetuneOptions(data=str(rows), out=str(out), data_dir=str(out) + ".data",
                                                        overrides=fast, lora=True), quiet=True)
    _, last, _ = load_state(out / "checkpoints" / "last")
    _, averaged, meta = load_state(out / "checkpoints" / "ema")
    assert set(averaged) == set(last) and meta["ema"]["updates"] == 6  # plain merged keys, no adapter tensors
    changed = {name for name in last if not torch.equal(last[name], averaged[name])}
    assert "blocks.0.attn.qkv.weight" in changed  # an adapted matrix: the average of its merged updates
    assert "blocks.0.attn_norm.weight" not in changed  # frozen: its average is itself
    assert isinstance(train_events(out, "eval")[-1]["ema_val_loss"], float)


@pytest.mark.slow  # torchrun with two processes: about 20 s on one core
def test_a_two_process_ddp_run_keeps_the_same_ema_as_one_process(data_dir, tmp_path):
    common = dict(max_steps=6, eval_interval=3, checkpoint_interval=0, batch_size=4, ema_decay=0.7)
    single = tmp_path / "single"
    train(data_dir, single, overrides=tiny_overrides(data_dir, grad_accum=2, **common), quiet=True, report=False)
    ddp = tmp_path / "ddp"
    arguments = ["train", "--data", str(data_dir), "--out", str(ddp), "--quiet"]
    for override in tiny_overrides(data_dir, grad_accum=1, **common):
        arguments += ["--set", override]
    done = run_slm_under_torchrun(arguments)
    assert done.returncode == 0, done.stderr[-3000:]
    _, expected, _ = load_state(single / "checkpoints" / "ema")
    _, got, meta = load_state(ddp / "checkpoints" / "ema")
    assert meta["ema"]["updates"] == 6
    for name in expected:
        assert (got[name] - expected[name]).abs().max() < 1e-4, name
    single_ema = [e["ema_val_loss"] for e in train_events(single, "eval")]
    assert [e["ema_val_loss"] for e in train_events(ddp, "eval")] == pytest.approx(single_ema, abs=1e-5)


def test_the_report_of_a_run_with_ema_gives_the_ema_weights_figures(data_dir, tmp_path):
    from slmkit.report import write_report
    from slmkit.utils import format_number

    run = tmp_path / "run"
    train(data_dir, run, overrides=tiny_overrides(data_dir, max_steps=8, eval_interval=4, ema_decay=0.9),
          quiet=True, report=False)
    evals = train_events(run, "eval")
    text = write_report(run).read_text()
    best = min(evals, key=lambda e: e["ema_val_loss"])
    assert (f"| final validation, EMA weights | {format_number(evals[-1]['ema_val_loss'])} | "
            f"{format_number(evals[-1]['ema_val_ppl'], 2)} |") in text
    assert f"| best validation, EMA weights | {format_number(best['ema_val_loss'])} |" in text
    assert (run / "plots" / "eval.png").stat().st_size > 0
    plain = tmp_path / "plain"  # without train.ema_decay: no EMA rows
    train(data_dir, plain, overrides=tiny_overrides(data_dir, max_steps=4, eval_interval=4), quiet=True, report=False)
    assert "EMA weights" not in write_report(plain).read_text()
