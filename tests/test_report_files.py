"""The report: report.md with the numbers, warnings and evaluation table, and real PNG plots."""

import pytest
from train_support import one_thread, tiny_overrides, write_dataset

from slmkit.api import train
from slmkit.errors import SlmError
from slmkit.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = write_dataset(tmp_path_factory.mktemp("data") / "ds")
    run = tmp_path_factory.mktemp("runs") / "run"
    train(data, run, overrides=tiny_overrides(data, max_steps=12, eval_interval=4, samples=1, sample_tokens=10),
          quiet=True)
    return run


def test_training_writes_report_and_png_plots(run):
    for name in ("loss.png", "eval.png", "throughput.png"):
        path = run / "plots" / name
        assert path.read_bytes()[:8] == PNG_MAGIC, name
        assert path.stat().st_size > 5000  # a drawn figure, not an empty canvas
    text = (run / "report.md").read_text()
    for needle in ("| parameters |", "| tokens seen | 1,536 |", "final validation", "best validation",
                   "bits per byte", "| status | finished", "![training loss and learning rate](plots/loss.png)",
                   "## Samples"):
        assert needle in text, needle
    assert text.count("\n| 4 |") + text.count("\n| 8 |") + text.count("\n| 12 |") == 3  # one row per eval


def test_report_of_an_interrupted_run_says_so(tmp_path):
    data = write_dataset(tmp_path / "ds")

    def stop(trainer):
        if trainer.step == 3:
            trainer.request_stop("SIGTERM received")

    run = tmp_path / "run"
    train(data, run, overrides=tiny_overrides(data, max_steps=10, eval_interval=2), quiet=True, on_step=stop)
    text = (run / "report.md").read_text()
    assert "| status | interrupted (SIGTERM received) |" in text and "| steps | 3 of 10 |" in text


def test_report_of_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(SlmError, match="not an slmkit run directory"):
        write_report(tmp_path)
