"""train.threads: a fixed count is used as given and never changed; "auto" follows the load of
other processes (faked here, so nothing depends on the real machine), logs each change, and leaves
a count chosen with OMP_NUM_THREADS alone."""

import pytest
import torch
from train_support import tiny_overrides, train_events, write_dataset

from slmkit import runtime
from slmkit.api import train
from slmkit.config import load_config_sections
from slmkit.errors import SlmError
from slmkit.train.config import TrainConfig


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "ds")


def settings(data_dir, **train):
    """A tiny run; a given peak for MFU saves the second-long matmul measurement."""
    return tiny_overrides(data_dir, peak_tflops=1.0, **train)


@pytest.fixture
def faked_load(monkeypatch):
    """Two CPUs, a check at every step, and other processes' load read from the list returned
    (one value per look; the last repeats)."""
    readings = []

    def load():
        return readings.pop(0) if len(readings) > 1 else readings[0]

    monkeypatch.setattr(runtime, "available_cpus", lambda: 2)
    monkeypatch.setattr(runtime, "affinity_cpus", lambda: 2)
    monkeypatch.setattr(runtime, "THREAD_CHECK_SECONDS", 0.0)
    monkeypatch.setattr(runtime, "OtherProcessesLoad", lambda: load)
    return readings


def test_threads_accepts_auto_or_a_whole_number_and_names_a_bad_value():
    assert TrainConfig().threads == "auto"
    assert TrainConfig(threads=2).validate().threads == 2
    for bad in (0, "many", 1.5, True):
        with pytest.raises(SlmError, match=r"train\.threads = .*must be \"auto\" or a whole number >= 1"):
            TrainConfig(threads=bad).validate()


def test_threads_is_set_from_the_command_line_and_a_toml_file(tmp_path):
    assert load_config_sections(overrides=["train.threads=1"])["train"]["threads"] == 1
    assert load_config_sections(overrides=["train.threads=auto"])["train"]["threads"] == "auto"
    file = tmp_path / "run.toml"
    file.write_text("[train]\nthreads = 3\n")
    sections = load_config_sections(file=file)
    assert TrainConfig.from_dict(sections["train"]).validate().threads == 3


def test_a_fixed_thread_count_is_used_and_kept_whatever_the_load(data_dir, tmp_path, threads_restored,
                                                                 faked_load):
    faked_load[:] = [0.0, 2.0, 0.0]  # would move an "auto" run: quiet, busy, quiet
    torch.set_num_threads(2)
    seen = []
    run = tmp_path / "run"
    train(data_dir, run, overrides=settings(data_dir, max_steps=4, threads=1), quiet=True, report=False,
          on_step=lambda trainer: seen.append(torch.get_num_threads()))
    assert train_events(run, "start")[0]["threads"] == 1
    assert seen == [1, 1, 1, 1]
    assert train_events(run, "threads") == []


def test_auto_gives_up_a_thread_while_another_process_is_busy_and_takes_it_back_after(
        data_dir, tmp_path, threads_restored, faked_load):
    # looks: at start-up, then after each step; one step runs on two threads (slow on a busy machine)
    faked_load[:] = [1.0, 1.0, 0.0, 1.0]
    seen = []
    run = tmp_path / "run"
    train(data_dir, run, overrides=settings(data_dir, max_steps=4, threads="auto"), quiet=True,
          report=False, on_step=lambda trainer: seen.append(torch.get_num_threads()))
    assert train_events(run, "start")[0]["threads"] == 1
    assert seen == [1, 2, 1, 1]
    changes = [(e["step"], e["previous"], e["threads"], e["other_cpus"]) for e in train_events(run, "threads")]
    assert changes == [(2, 1, 2, 0.0), (3, 2, 1, 1.0)]


def test_auto_keeps_the_count_the_user_chose_with_omp_num_threads(data_dir, tmp_path, threads_restored,
                                                                 faked_load, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    faked_load[:] = [0.0, 2.0, 0.0]
    seen = []
    run = tmp_path / "run"
    train(data_dir, run, overrides=settings(data_dir, max_steps=3), quiet=True, report=False,
          on_step=lambda trainer: seen.append(torch.get_num_threads()))
    assert seen == [1, 1, 1]
    assert train_events(run, "start")[0]["threads"] == 1
    assert train_events(run, "threads") == []
