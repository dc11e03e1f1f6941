"""Bad input gets a clear SlmError (through the CLI: a message, no traceback) and changes nothing on disk."""

import json
from pathlib import Path

import pytest
import torch
from train_support import dataset_vocab, one_thread, tiny_overrides, write_dataset

from slmkit.api import train
from slmkit.cli import main
from slmkit.errors import SlmError

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "ds")


def test_missing_dataset_directory(tmp_path, data_dir):
    with pytest.raises(SlmError, match="dataset directory not found: .*nowhere.*slm prepare"):
        train(tmp_path / "nowhere", tmp_path / "run", overrides=tiny_overrides(data_dir), quiet=True)
    assert not (tmp_path / "run").exists()


def test_incomplete_dataset_directory(tmp_path, data_dir):
    broken = write_dataset(tmp_path / "broken")
    (broken / "val.bin").unlink()
    with pytest.raises(SlmError, match="incomplete: missing val.bin"):
        train(broken, tmp_path / "run", overrides=tiny_overrides(data_dir), quiet=True)
    truncated = write_dataset(tmp_path / "truncated")
    data = (truncated / "train.bin").read_bytes()
    (truncated / "train.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(SlmError, match="truncated, rebuild it"):
        train(truncated, tmp_path / "run", overrides=tiny_overrides(data_dir), quiet=True)
    assert not (tmp_path / "run").exists()


def test_dataset_vocab_differs_from_the_model_names_both_and_the_fix(tmp_path, data_dir):
    overrides = tiny_overrides(data_dir) + ["vocab_size=4096"]
    vocab = dataset_vocab(data_dir)
    with pytest.raises(SlmError, match=rf"tokenizer has {vocab} tokens but the model's vocab_size is 4,096; add "
                                       rf"--set vocab_size={vocab}"):
        train(data_dir, tmp_path / "run", overrides=overrides, quiet=True)
    assert not (tmp_path / "run").exists()


def test_sequence_longer_than_the_model_context(tmp_path, data_dir):
    with pytest.raises(SlmError, match="train.seq_len = 64 exceeds the model context 32"):
        train(data_dir, tmp_path / "run", overrides=tiny_overrides(data_dir, seq_len=64), quiet=True)


def test_out_of_memory_says_what_to_lower(tmp_path, data_dir, monkeypatch):
    import slmkit.train.trainer as trainer_module

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(trainer_module, "language_model_loss", out_of_memory)
    with pytest.raises(SlmError, match=r"out of memory .* batch_size 4 x seq_len 32: lower --set train.batch_size"):
        train(data_dir, tmp_path / "run", overrides=tiny_overrides(data_dir), quiet=True)
    assert not (tmp_path / "run").exists()  # nothing was trained: a re-run needs no --overwrite


def test_unknown_train_field_is_refused_with_a_suggestion(tmp_path, data_dir):
    with pytest.raises(SlmError, match="'learning_rate'"):
        train(data_dir, tmp_path / "run", overrides=tiny_overrides(data_dir) + ["train.learning_rate=1"], quiet=True)


def test_resume_of_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(SlmError, match="is not an slmkit run directory"):
        train(resume=tmp_path, quiet=True)


def test_cli_prints_the_message_without_a_traceback(tmp_path, data_dir, capsys):
    code = main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"),
                 *sum((["--set", o] for o in tiny_overrides(data_dir)), [])])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: dataset directory not found") and "Traceback" not in err


def test_cli_train_and_report_end_to_end(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", str(data_dir), "--out", str(run), "--quiet"]
    args += sum((["--set", o] for o in tiny_overrides(data_dir, max_steps=4, eval_interval=2)), [])
    assert main(args) == 0
    assert json.loads((run / "config.json").read_text())["train"]["max_steps"] == 4
    (run / "report.md").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.md").is_file()


def test_run_directory_defaults_to_runs_slash_the_model_name(tmp_path, data_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = tiny_overrides(data_dir, max_steps=1, eval_interval=0) + ["name=\"tiny\""]
    first = train(data_dir, overrides=overrides, quiet=True, report=False)
    second = train(data_dir, overrides=overrides, quiet=True, report=False)
    assert (first.run_dir, second.run_dir) == (Path("runs/tiny"), Path("runs/tiny-2"))
    assert (tmp_path / "runs" / "tiny-2" / "config.json").is_file()


def test_overwrite_replaces_a_run_but_never_an_input_or_a_folder_of_runs(tmp_path, data_dir):
    runs = tmp_path / "runs"
    first = runs / "first"
    train(data_dir, first, overrides=tiny_overrides(data_dir, max_steps=2, eval_interval=0), quiet=True,
          report=False)
    before = sorted(p.name for p in runs.iterdir())
    with pytest.raises(SlmError, match=f"will not replace {runs}: it holds"):
        train(data_dir, runs, overrides=tiny_overrides(data_dir, max_steps=2), overwrite=True, quiet=True)
    with pytest.raises(SlmError, match=rf"will not replace {data_dir}: it is the input"):
        train(data_dir, data_dir, overrides=tiny_overrides(data_dir, max_steps=2), overwrite=True, quiet=True)
    assert sorted(p.name for p in runs.iterdir()) == before and (data_dir / "meta.json").is_file()
    result = train(data_dir, first, overrides=tiny_overrides(data_dir, max_steps=3, eval_interval=0),
                   overwrite=True, quiet=True, report=False)  # a run itself may be replaced
    assert result.step == 3
