"""What a run keeps when it goes wrong: a checkpoint is saved as good only when its weights give
finite logits, a non-finite evaluation stops the run, and the message names the newest healthy
checkpoint, from which the run resumes."""

import json

import pytest
import torch
from train_support import one_thread, tiny_overrides, train_events, write_dataset

from slmkit.api import train
from slmkit.errors import SlmError
from slmkit.model import load_model
from slmkit.train import evaluator as evaluator_module

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "ds")


def spoil_weights_at(step: int):
    """An on_step callback that makes the weights non-finite after optimizer step `step`."""
    def on_step(trainer):
        if trainer.step == step:
            with torch.no_grad():
                trainer.model.embed.weight.fill_(float("nan"))
    return on_step


def test_diverged_weights_are_never_saved_and_the_run_resumes_from_the_newest_healthy_checkpoint(data_dir, tmp_path):
    run = tmp_path / "run"
    overrides = tiny_overrides(data_dir, max_steps=12, eval_interval=0, checkpoint_interval=2)
    with pytest.raises(SlmError) as caught:
        train(data_dir, run, overrides=overrides, quiet=True, on_step=spoil_weights_at(3))
    message = str(caught.value)
    assert "training loss became nan at step 4" in message
    assert "the current weights give non-finite logits, so they were not saved" in message
    assert f"newest healthy checkpoint, {run / 'checkpoints' / 'last'} (step 2)" in message
    assert f"--resume {run}" in message
    last = json.loads((run / "checkpoints" / "last" / "config.json").read_text())
    assert last["step"] == 2  # the spoilt weights of step 3 did not replace it
    assert torch.isfinite(load_model(run / "checkpoints" / "last").embed.weight).all()
    assert train_events(run, "stopped")[-1]["reason"] == "training loss became nan at step 4"
    result = train(resume=run, quiet=True)  # the advice can be followed
    assert result.step == 12 and all(torch.isfinite(torch.tensor(e["loss"])) for e in train_events(run))


def test_a_non_finite_evaluation_stops_the_run_without_saving(data_dir, tmp_path, monkeypatch):
    real = evaluator_module.Evaluator.split_loss

    def split_loss(self, model, split):
        loss = real(self, model, split)
        return float("nan") if split == "val" and self.history else loss  # the second evaluation

    monkeypatch.setattr(evaluator_module.Evaluator, "split_loss", split_loss)
    run = tmp_path / "run"
    with pytest.raises(SlmError, match=r"validation loss became nan at step 20.*newest healthy checkpoint, .*"
                                       r"\(step 10\)"):
        train(data_dir, run, overrides=tiny_overrides(data_dir, max_steps=30, eval_interval=10,
                                                     checkpoint_interval=0), quiet=True)
    assert json.loads((run / "checkpoints" / "best" / "config.json").read_text())["step"] == 10
    assert not (run / "checkpoints" / "last").exists()  # never saved: nothing unhealthy was written
    assert [e["step"] for e in train_events(run, "eval")] == [10, 20]
