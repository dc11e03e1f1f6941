"""The bounds of `slm serve`: what one request may ask for, and how many generations run or wait at once.

A generation runs in one of `concurrency` worker threads; at most `max_queue` more wait for a
thread. A request beyond that is refused at once (HTTP 429) rather than queued without end, so a
burst of requests cannot exhaust the machine's memory or make every caller wait minutes.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from slmkit.errors import SlmError
from slmkit.generate.config import PRESETS
from slmkit.runtime import available_cpus, threads_fixed_by_environment
from slmkit.utils import option

QUEUE_FULL = "queue full, try again"


@dataclass
class ServeOptions:
    """Where `slm serve` listens and what it allows. Counts are characters, tokens or requests."""

    host: str = option("127.0.0.1", "address to listen on (127.0.0.1: this machine only; 0.0.0.0: every "
                                    "interface)")
    port: int = option(7860, "port to listen on")
    max_prompt_chars: int = option(4000, "longest prompt accepted, in characters (longer: HTTP 413)")
    max_prompt_tokens: int = option(1024, "longest prompt accepted, in tokens (longer: HTTP 413)")
    max_new_tokens: int = option(256, "most tokens one request may generate (more: HTTP 400)")
    max_queue: int = option(8, "requests that may wait for a free generation slot (more: HTTP 429)")
    concurrency: int = option(2, "generations running at once, each in a worker thread")
    threads: int | None = option(None, "torch threads per generation (default: the CPUs / --concurrency, or "
                                       "OMP_NUM_THREADS)")
    preset: str = option("coherent", "sampling preset of a request that names none", choices=tuple(PRESETS))

    def validate(self) -> ServeOptions:
        """Raise SlmError naming the first value that cannot work; return self otherwise."""
        for name, low in (("port", 0), ("max_prompt_chars", 1), ("max_prompt_tokens", 1), ("max_new_tokens", 1),
                          ("max_queue", 0), ("concurrency", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise SlmError(f"{name} = {value!r}: must be a whole number >= {low}")
        if self.port > 65535:
            raise SlmError(f"port = {self.port}: must be at most 65535")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise SlmError(f"threads = {self.threads!r}: must be a whole number >= 1 (or unset for automatic)")
        if self.preset not in PRESETS:
            raise SlmError(f"unknown generation preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        return self

    def threads_per_generation(self) -> int:
        """torch threads for each worker: as set, else the user's OMP_NUM_THREADS, else an equal share
        of this process's CPUs among the concurrent generations (so they do not oversubscribe the cores)."""
        if self.threads is not None:
            return self.threads
        if threads_fixed_by_environment():
            return torch.get_num_threads()
        return max(1, available_cpus() // self.concurrency)


class QueueFull(Exception):
    """Every generation slot is busy and the queue is full: the caller should try again later."""

    def __init__(self):
        super().__init__(QUEUE_FULL)


class GenerationPool:
    """Runs jobs in `concurrency` worker threads with `threads` torch threads each; at most
    `concurrency + max_queue` jobs are admitted (running or waiting) at once, and `submit` raises
    QueueFull for one more. (torch keeps one thread count per process for threads started later, so
    those get `threads` too; the threads already running, the caller's included, keep theirs.)"""

    def __init__(self, concurrency: int, max_queue: int, threads: int):
        self.capacity = concurrency + max_queue
        self.concurrency = concurrency
        self._lock = threading.Lock()
        self._admitted = 0
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="slm-serve",
                                            initializer=torch.set_num_threads, initargs=(threads,))

    @property
    def admitted(self) -> int:
        """Jobs running or waiting now."""
        return self._admitted

    def submit(self, job, *args, **kwargs) -> Future:
        """Queue `job(*args, **kwargs)` for a worker thread; raises QueueFull when the pool is full."""
        with self._lock:
            if self._admitted >= self.capacity:
                raise QueueFull()
            self._admitted += 1
        try:
            future = self._executor.submit(job, *args, **kwargs)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)
        return future

    def _release(self, _future=None) -> None:
        with self._lock:
            self._admitted -= 1

    def shutdown(self) -> None:
        """Drop the waiting jobs and let the running ones finish in the background."""
        self._executor.shutdown(wait=False, cancel_futures=True)
