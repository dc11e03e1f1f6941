"""Process-level speed settings: the memory allocator, CPU threads and the measured matmul peak.

Nothing here changes results beyond float rounding, only speed (a different thread count can
change the order of float reductions: bitwise-equal runs need a fixed count). The trainer calls
`tune_allocator()` and `configure_threads()` at start-up and, on CPU with train.threads = "auto",
lets a `ThreadGovernor` follow the load of other processes; `measure_matmul_peak()` gives the
denominator for MFU. Why each exists, with figures, is in docs/performance.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from slmkit.utils import affinity_cpus

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
    count = affinity_cpus()
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        if quota != "max":
            count = min(count, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return count


def threads_fixed_by_environment() -> bool:
    """True when the user chose the thread count with OMP_NUM_THREADS or MKL_NUM_THREADS."""
    return "OMP_NUM_THREADS" in os.environ or "MKL_NUM_THREADS" in os.environ


def configure_threads(threads: int | str = "auto", processes: int = 1) -> int:
    """Set torch's intra-op thread count once; returns the count in use.

    threads: a number is used as given. "auto" keeps the user's OMP_NUM_THREADS/MKL_NUM_THREADS
    when set, else gives each of `processes` processes on this machine an equal share of the CPUs
    the process may use (at least one). PyTorch sizes its pool from the machine's cores, which in
    a container can exceed the CPUs the process may use; oversubscribed OpenMP threads spin and
    wait on each other. `ThreadGovernor` adapts the count to other processes' load afterwards.
    """
    if isinstance(threads, int):
        count = threads
    elif threads_fixed_by_environment():
        return torch.get_num_threads()
    else:
        count = max(1, available_cpus() // max(1, processes))
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return torch.get_num_threads()


# -- a thread count that follows the load of other processes -------------------------------------

THREAD_CHECK_SECONDS = 10.0  # wall time between two looks at the other processes' CPU use
# Hysteresis, in CPUs used by other processes: a CPU counts as taken from `_TAKEN_AT` of its use
# on, and as free again below `_FREE_BELOW`; between the two the count stays as it is. Measured on
# 2 cores (docs/performance.md): a busy loop beside 2 threads reads 0.66 (our threads squeeze it),
# and 1 thread beats 2 from about 0.65 CPU of other demand on.
_TAKEN_AT = 0.5
_FREE_BELOW = 0.4
_CPU_FIELDS_BUSY = (0, 1, 2, 5, 6, 7)  # /proc/stat: user nice system (idle iowait) irq softirq steal


def busy_cpu_seconds(cpus: set[int] | None = None, path: str = "/proc/stat") -> float | None:
    """CPU-seconds all processes together have spent on the CPUs `cpus` (default: this process's
    affinity mask) since boot, from /proc/stat; None where there is no /proc/stat (macOS, Windows).

    Steal time counts as busy: a hypervisor that takes the CPU is load like any other.
    """
    if cpus is None:
        try:
            cpus = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            cpus = None
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, _, values = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        fields = values.split()
        ticks += sum(int(fields[i]) for i in _CPU_FIELDS_BUSY if i < len(fields))
    return ticks / os.sysconf("SC_CLK_TCK") if ticks else None


class OtherProcessesLoad:
    """Callable: how many CPUs other processes kept busy since the previous call (a float, or None
    when it cannot tell).

    Busy time of the CPUs this process may use (/proc/stat) minus this process's own CPU time,
    over the wall time between calls. The first call measures over at least `first_window`
    seconds, sleeping for the rest. Without /proc/stat it falls back to the 1-minute load average
    minus this process's threads, and to None where there is none (Windows).
    """

    def __init__(self, first_window: float = 0.25, busy: Callable[[], float | None] = busy_cpu_seconds,
                 own: Callable[[], float] = time.process_time, clock: Callable[[], float] = time.monotonic):
        self.first_window = first_window
        self._busy, self._own, self._clock = busy, own, clock
        self._last = self._sample()

    def _sample(self) -> tuple[float | None, float, float]:
        return self._busy(), self._own(), self._clock()

    def __call__(self) -> float | None:
        if self._last[0] is None:
            try:
                return max(0.0, os.getloadavg()[0] - torch.get_num_threads())
            except (AttributeError, OSError):
                return None
        waited = self._clock() - self._last[2]
        if waited < self.first_window:
            time.sleep(self.first_window - waited)
        (busy0, own0, wall0), (busy1, own1, wall1) = self._last, self._sample()
        self._last = (busy1, own1, wall1)
        if busy1 is None or wall1 <= wall0:
            return None
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)


@dataclass(frozen=True)
class ThreadChange:
    """A change of the intra-op thread count, and the other processes' load (CPUs) that caused it."""

    previous: int
    threads: int
    other_cpus: float


class ThreadGovernor:
    """Chooses torch's intra-op thread count from the CPU use of other processes, and applies it.

    On a busy machine, OpenMP threads that must wait for each other while another process holds
    a CPU make a step many times slower than fewer threads would (2 cores, one busy loop beside
    the run: 12.4K tokens/s on 1 thread, 7.3K on 2). So: one thread per CPU left free, with
    hysteresis (a CPU is taken when others use >= 0.5 of it, free again below 0.4), at least one.

    cpus: the CPUs this process may use (`available_cpus()`); watched: how many CPUs the load is
    measured on (the affinity mask; default `cpus`). load: a callable returning other processes'
    CPUs since its previous call, or None when unknown (default `OtherProcessesLoad()`; tests
    inject a fake). check() looks at most every `interval` seconds of `clock` time.
    """

    def __init__(self, cpus: int, load: Callable[[], float | None] | None = None, watched: int | None = None,
                 interval: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.cpus = max(1, cpus)
        self.watched = max(self.cpus, watched or self.cpus)
        self.load = load if load is not None else OtherProcessesLoad()
        self.interval = THREAD_CHECK_SECONDS if interval is None else interval
        self.clock = clock
        self.threads = self.cpus  # the first choice starts from every CPU, as `configure_threads` does
        self.other_cpus = self.load() or 0.0
        self.threads = self.choose(self.other_cpus)
        self._last_check = clock()
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def choose(self, other_cpus: float) -> int:
        """The thread count for `other_cpus` CPUs used by other processes, given the current count."""
        def free(taken_at: float) -> int:
            taken = math.floor(other_cpus + 1 - taken_at)
            return min(self.cpus, max(1, self.watched - taken))

        fewer, more = free(_TAKEN_AT), free(_FREE_BELOW)
        if fewer < self.threads:
            return fewer
        if more > self.threads:
            return more
        return self.threads

    def check(self) -> ThreadChange | None:
        """Measure and apply a new count when `interval` seconds have passed since the last look;
        the change made, or None (too soon, load unknown, or the same count)."""
        now = self.clock()
        if now - self._last_check < self.interval:
            return None
        self._last_check = now
        other_cpus = self.load()
        if other_cpus is None:
            return None
        self.other_cpus = other_cpus
        threads = self.choose(other_cpus)
        if threads == self.threads:
            return None
        change = ThreadChange(self.threads, threads, other_cpus)
        self.threads = threads
        torch.set_num_threads(threads)
        return change


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


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one), for labelling measured figures."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
