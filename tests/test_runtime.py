"""Process-level speed settings: safe to call, idempotent, and honest about what they did."""

import subprocess
import sys

import pytest
import torch

from slmkit import runtime


def test_tune_allocator_is_idempotent_and_never_raises():
    first = runtime.tune_allocator()
    assert runtime.tune_allocator() == first
    assert isinstance(first, bool)


def test_tune_allocator_respects_the_users_own_malloc_settings():
    code = "from slmkit.runtime import tune_allocator; print(tune_allocator())"
    env = {"MALLOC_ARENA_MAX": "2", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"SLMKIT_TUNE_ALLOCATOR": "0"}, check=True)
    assert off.stdout.strip() == "False"


def test_thread_count_never_exceeds_the_cpus_available(threads_restored):
    assert 1 <= runtime.available_cpus() <= runtime.affinity_cpus() <= 4096
    threads = runtime.configure_threads()
    assert threads == torch.get_num_threads() == runtime.available_cpus()


def test_processes_on_one_machine_share_its_cpus(threads_restored, monkeypatch):
    monkeypatch.setattr(runtime, "available_cpus", lambda: 8)
    assert runtime.configure_threads("auto", processes=3) == 2
    assert runtime.configure_threads("auto", processes=16) == 1


def test_a_fixed_count_or_omp_num_threads_is_used_as_given(threads_restored, monkeypatch):
    assert runtime.configure_threads(3) == torch.get_num_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert runtime.threads_fixed_by_environment()
    assert runtime.configure_threads("auto") == 2
    assert runtime.configure_threads(1) == 1  # train.threads = N is more specific than the environment


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def governor(readings, cpus=2, watched=None, interval=10.0):
    """A governor fed `readings` (other processes' CPUs, one per look) on a clock the test moves."""
    clock = Clock()
    looks = iter(readings)
    return runtime.ThreadGovernor(cpus, load=lambda: next(looks), watched=watched, interval=interval,
                                  clock=clock), clock


def test_governor_gives_up_a_thread_per_cpu_other_processes_use_and_takes_them_back(threads_restored):
    threads, clock = governor([0.0, 1.0, 3.2, 0.0], cpus=4)
    assert threads.threads == torch.get_num_threads() == 4
    clock.now = 10.0
    assert threads.check() == runtime.ThreadChange(4, 3, 1.0)
    clock.now = 20.0
    assert threads.check() == runtime.ThreadChange(3, 1, 3.2)  # never below one
    clock.now = 30.0
    assert threads.check() == runtime.ThreadChange(1, 4, 0.0)
    assert torch.get_num_threads() == 4


def test_governor_changes_nothing_between_the_thresholds_so_it_does_not_flap(threads_restored):
    # from 2 threads: 0.45 CPU of others is not enough to give one up, 0.6 is
    threads, clock = governor([0.0, 0.45, 0.6, 0.45, 0.42, 0.3])
    seen = []
    for step in range(1, 6):
        clock.now = 10.0 * step
        threads.check()
        seen.append(threads.threads)
    # ... and from 1 thread, 0.45 and 0.42 are not little enough to take it back, 0.3 is
    assert seen == [2, 1, 1, 1, 2]


def test_governor_looks_at_most_once_per_interval_and_ignores_an_unknown_load(threads_restored):
    threads, clock = governor([0.0, None, 1.0])
    clock.now = 9.9
    assert threads.check() is None  # too soon: the load is not even read
    clock.now = 10.0
    assert threads.check() is None and threads.threads == 2  # load unknown: keep the count
    clock.now = 19.0
    assert threads.check() is None
    clock.now = 20.0
    assert threads.check() == runtime.ThreadChange(2, 1, 1.0)


def test_governor_counts_load_on_cpus_beyond_a_cpu_quota_as_room_to_spare(threads_restored):
    # a quota of 2 CPUs on a 16-CPU machine where others use 10: 6 CPUs stay idle, so keep 2 threads
    threads, _ = governor([10.0], cpus=2, watched=16)
    assert threads.threads == 2
    threads, _ = governor([15.0], cpus=2, watched=16)
    assert threads.threads == 1


def test_other_processes_load_is_busy_cpu_time_minus_this_processs_own_over_wall_time():
    clock = Clock()
    samples = {"busy": 100.0, "own": 5.0}
    load = runtime.OtherProcessesLoad(first_window=0.0, busy=lambda: samples["busy"], own=lambda: samples["own"],
                                      clock=clock)
    clock.now, samples["busy"], samples["own"] = 10.0, 125.0, 15.0  # 25 CPU-s busy, 10 of them ours
    assert load() == pytest.approx(1.5)
    clock.now, samples["busy"], samples["own"] = 20.0, 145.0, 35.0  # all of it ours
    assert load() == 0.0


def test_busy_cpu_seconds_reads_the_busy_fields_of_the_watched_cpus(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  900 0 90 5000 10 0 10 0 0 0\n"
                    "cpu0 300 0 30 2000 5 0 5 0 0 0\n"
                    "cpu1 500 10 50 1000 5 0 5 30 0 0\n"
                    "cpu2 100 0 10 2000 0 0 0 0 0 0\n"
                    "intr 123 4 5\n")
    ticks = runtime.os.sysconf("SC_CLK_TCK")
    assert runtime.busy_cpu_seconds({0, 1}, str(stat)) == pytest.approx((335 + 595) / ticks)
    assert runtime.busy_cpu_seconds({2}, str(stat)) == pytest.approx(110 / ticks)
    assert runtime.busy_cpu_seconds({0}, str(tmp_path / "missing")) is None


def test_measured_matmul_peak_is_a_positive_rate():
    peak = runtime.measure_matmul_peak(torch.float32, "cpu", size=256, seconds=0.05)
    assert peak > 0.1  # GFLOP/s


def test_the_cpu_peak_for_mfu_is_measured_once_cached_and_named_with_its_source(tmp_path, monkeypatch):
    from slmkit.train import device

    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(runtime, "measure_matmul_peak", lambda dtype, dev: calls.append(dtype) or 123.0)
    setup = device.setup_device("cpu", "fp32")
    first, first_source = device.peak_flops(setup)
    second, second_source = device.peak_flops(setup)
    assert first == second == 123.0e9 and len(calls) == 1  # the second run divides by the same figure
    assert "measured on this machine now" in first_source and "measured on this machine on" in second_source
    assert str(tmp_path / "peak_flops.json") in second_source
    assert device.peak_flops(setup, configured_tflops=2.0) == (2.0e12, "train.peak_tflops")
