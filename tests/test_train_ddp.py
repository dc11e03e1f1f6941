"""DDP (and FSDP2, slow): `slm train` under torchrun with two CPU processes (gloo) equals one process
with the same global batch (gradient accumulation over the two ranks' micro-batches)."""

import json

import pytest
from train_support import one_thread, run_slm_under_torchrun, tiny_overrides, train_events, write_dataset

from slmkit.api import train

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "ds")


@pytest.mark.parametrize("parallelism", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_two_process_run_equals_one_process_with_accumulation(data_dir, tmp_path, parallelism):
    common = dict(max_steps=6, eval_interval=3, checkpoint_interval=3, batch_size=4)
    single = tmp_path / "single"
    train(data_dir, single, overrides=tiny_overrides(data_dir, grad_accum=2, **common), quiet=True, report=False)

    ddp = tmp_path / "ddp"
    arguments = ["train", "--data", str(data_dir), "--out", str(ddp), "--quiet"]
    for override in tiny_overrides(data_dir, grad_accum=1, parallelism=parallelism, **common):
        arguments += ["--set", override]
    done = run_slm_under_torchrun(arguments)
    assert done.returncode == 0, done.stderr[-3000:]

    config = json.loads((ddp / "config.json").read_text())
    assert config["world_size"] == 2 and config["tokens_per_step"] == 2 * 4 * 32
    single_losses = [e["loss"] for e in train_events(single)]
    ddp_losses = [e["loss"] for e in train_events(ddp)]
    assert len(ddp_losses) == len(single_losses) == 6
    assert ddp_losses == pytest.approx(single_losses, abs=1e-5)
    single_val = [e["val_loss"] for e in train_events(single, "eval")]
    assert [e["val_loss"] for e in train_events(ddp, "eval")] == pytest.approx(single_val, abs=1e-5)
    # rank 0 alone writes: one start event, checkpoints as configured
    assert len(train_events(ddp, "start")) == 1
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["best", "last", "step-3", "step-6"]
    # the gathered checkpoint holds the same weights as the single-process run's
    from slmkit.model import load_model

    for a, b in zip(load_model(ddp / "checkpoints" / "last").parameters(),
                    load_model(single / "checkpoints" / "last").parameters()):
        assert (a - b).abs().max() < 1e-4


def test_collective_tensors_stay_referenced_from_python_after_the_call(monkeypatch):
    """gloo's worker thread must never drop the last reference to a collective's tensor: freeing its
    Python object there needs the GIL, which the main thread holds while tearing the group down (the
    end-of-run hang). all_reduce_sum keeps its recent tensors alive from Python."""
    import weakref

    import torch

    from slmkit.train import distributed

    monkeypatch.setattr(distributed.dist, "all_reduce", lambda values, op=None: None)
    two = distributed.DistInfo(rank=0, world_size=2)
    values = torch.ones(3)
    alive = weakref.ref(values)
    assert distributed.all_reduce_sum(values, two) is values
    del values
    assert alive() is not None
    for _ in range(distributed._RECENT_COLLECTIVE_TENSORS.maxlen):  # later collectives let it go in time
        distributed.all_reduce_sum(torch.zeros(1), two)
    assert alive() is None
