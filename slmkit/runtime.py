"""Process-level speed settings: the memory allocator, CPU threads and the measured matmul peak.

Nothing here changes results, only speed. The trainer calls `tune_allocator()` and
`configure_threads()` once at start-up; `measure_matmul_peak()` gives the denominator for MFU.
Why each exists, with figures, is in docs/performance.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import time

import torch

# glibc mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

_ALLOCATOR_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")


@functools.cache
def tune_allocator() -> bool:
    """Keep freed memory in the process instead of returning it to the OS after every step (glibc).

    A training step frees hundreds of MB of activations and allocates them again in the next step.
    glibc serves such blocks with mmap and unmaps them on free, so every step page-faults its
    activations back in (on a 2-core CPU, nanoGPT ran 2,731 instead of 4,159 tokens/s). This turns
    off mmap for large blocks, never trims the heap and grows it 1 GiB at a time, like
    `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge> MALLOC_TOP_PAD_=1GiB`. The cost: the
    process keeps its peak memory until it exits.

    Idempotent; does nothing (returns False) off glibc, when the user set any MALLOC_* tuning
    variable themselves, or when SLMKIT_TUNE_ALLOCATOR=0. Never raises. Returns True when applied.
    """
    if os.environ.get("SLMKIT_TUNE_ALLOCATOR", "1") == "0":
        return False
    if not sys.platform.startswith("linux") or any(name in os.environ for name in _ALLOCATOR_ENV):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        # mallopt returns 1 on success. The threshold is an int here; -1 reads as SIZE_MAX in glibc.
        return bool(
            mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, -1) and mallopt(_M_TOP_PAD, 1 << 30)
        )
    except (OSError, AttributeError):  # musl, macOS or a libc without mallopt
        return False


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, further capped by a cgroup CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        if quota != "max":
            count = min(count, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return count


def configure_threads() -> int:
    """Use one intra-op thread per available CPU unless the user chose (OMP_NUM_THREADS).

    PyTorch sizes its pool from the machine's cores, which in a container can exceed the CPUs the
    process may use; oversubscribed OpenMP threads spin and wait on each other. Returns the count.
    """
    if "OMP_NUM_THREADS" in os.environ or "MKL_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    cpus = available_cpus()
    if torch.get_num_threads() != cpus:
        torch.set_num_threads(cpus)
    return torch.get_num_threads()


@functools.cache
def measure_matmul_peak(dtype: torch.dtype = torch.float32, device: str = "cpu", size: int = 2048,
                        seconds: float = 1.0) -> float:
    """Measured dense matmul throughput (GFLOP/s) of `size` x `size` products in `dtype` on `device`.

    The fastest single product within `seconds` after a warm-up: what this machine's matmul library
    reaches when nothing else runs, the honest denominator for MFU on CPUs whose datasheet peak is
    unknown (the fastest, not the mean, so that a busy machine does not flatter the MFU). Cached
    per process.
    """
    device = torch.device(device)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.no_grad():
        for _ in range(2):
            torch.mm(a, b)
        sync()
        fastest = float("inf")
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            torch.mm(a, b)
            sync()
            fastest = min(fastest, time.perf_counter() - start)
    return 2 * size**3 / fastest / 1e9


def mfu(tokens_per_second: float, flops_per_token: float, peak_gflops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak (a fraction, 0 to 1)."""
    return tokens_per_second * flops_per_token / (peak_gflops * 1e9) if peak_gflops > 0 else 0.0


def peak_flops(device: torch.device | str, dtype: torch.dtype = torch.float32) -> float:
    """Measured matmul peak of `device` in `dtype`, in FLOP/s (see `measure_matmul_peak`)."""
    device = torch.device(device)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        dtype = torch.float32
    return measure_matmul_peak(dtype, str(device)) * 1e9
