"""Process-level speed settings: safe to call, idempotent, and honest about what they did."""

import subprocess
import sys

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


def test_thread_count_never_exceeds_the_cpus_available():
    assert 1 <= runtime.available_cpus() <= 4096
    threads = runtime.configure_threads()
    assert threads == torch.get_num_threads() >= 1


def test_measured_matmul_peak_and_mfu():
    peak = runtime.measure_matmul_peak(torch.float32, "cpu", size=256, seconds=0.05)
    assert peak > 0.1  # GFLOP/s
    assert runtime.mfu(1000.0, 1e9, 2000.0) == 0.5  # 1000 tokens/s x 1 GFLOP each over 2 TFLOP/s
    assert runtime.peak_flops("cpu", torch.int64) > 0  # unknown dtypes measure float32
