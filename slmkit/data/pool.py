"""The worker processes of prepare: batches of documents go to a `DocumentProcessor` method in worker
processes and come back in order, with at most two batches per worker in flight (memory stays flat)
and the main process taking a share of the batches itself rather than wait idle.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from slmkit.data.clean import DocumentProcessor, init_worker, run_in_worker
from slmkit.data.options import PrepareOptions
from slmkit.utils import affinity_cpus


def default_workers() -> int:
    """Tokenizing processes when none are asked for: the usable cores not already busy (cores minus the
    1-minute load average, at least 1). On a machine other jobs keep busy, extra processes only add
    start-up, copying and switching; 1 means the main process does the work itself."""
    cores = affinity_cpus()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, min(cores, int(cores - load + 0.5)))


class Workers:
    """`count` processes (the main process among them) running DocumentProcessor methods with `options`.
    Spawned workers load the tokenizer from `tokenizer_dir`; forked ones inherit it."""

    def __init__(self, count: int, options: PrepareOptions, tokenizer_dir: Path):
        self.count = count
        self.options = options
        self.tokenizer_dir = tokenizer_dir

    def map(self, method: str, tasks: Iterable, tokenizer, dtype: np.dtype, bar) -> Iterator:
        """Yield (key, `DocumentProcessor.<method>(batch)`) for each (key, size, batch) of `tasks`, in
        order, advancing the progress `bar` by size."""
        pool = None
        if self.count > 1:
            start_method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            shared = tokenizer if start_method == "fork" or tokenizer is None else str(self.tokenizer_dir)
            pool = multiprocessing.get_context(start_method).Pool(
                self.count, initializer=init_worker, initargs=(self.options, shared, dtype.name)
            )
        local = getattr(DocumentProcessor(self.options, tokenizer, dtype), method)
        try:
            pending: deque = deque()
            for number, (key, size, batch) in enumerate(tasks, 1):
                # The main process takes every (count + 1)-th batch itself.
                if pool is None or number % (self.count + 1) == 0:
                    pending.append((key, size, local(batch)))
                else:
                    pending.append((key, size, pool.apply_async(run_in_worker, (method, batch))))
                while len(pending) > (2 * self.count if pool else 0):
                    yield _finish(pending.popleft(), bar)
            while pending:
                yield _finish(pending.popleft(), bar)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()


def _finish(entry, bar):
    """(key, results) of a pending batch, waiting for a worker's; the bar advances by its size."""
    key, size, results = entry
    if not isinstance(results, list):
        results = results.get()
    bar.update(size)
    return key, results
