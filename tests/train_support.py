"""Helpers for the training tests: tiny datasets in the exact on-disk format of `slm prepare`
(train.bin, val.bin, meta.json, a character tokenizer), and tiny configs."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

WORDS = ("the", "king", "queen", "speaks", "sleeps", "to", "a", "fool", "and", "knight", "rides",
         "sings", "of", "love", "war", "night", "day", "my", "lord", "good")


def synthetic_text(documents: int, seed: int) -> list[str]:
    """Documents of short sentences over a small word list: learnable within a few dozen steps."""
    rng = random.Random(seed)
    docs = []
    for _ in range(documents):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7))) + "." for _ in range(8)]
        docs.append(" ".join(sentences))
    return docs


def write_dataset(directory: Path, train_documents: int = 60, val_documents: int = 8, seed: int = 0,
                  vocab_size: int | None = None) -> Path:
    """A dataset directory as `slm prepare` writes it, tokenized with a character tokenizer.

    vocab_size: claim a different vocabulary size in meta.json (to test the mismatch message).
    """
    from slmkit.tokenizer import train_tokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    train_docs, val_docs = synthetic_text(train_documents, seed), synthetic_text(val_documents, seed + 1)
    tokenizer = train_tokenizer(train_docs + val_docs, "char")
    tokenizer.save(directory)
    splits = {}
    for split, docs in (("train", train_docs), ("val", val_docs)):
        ids = []
        for doc in docs:
            ids += tokenizer.encode(doc) + [tokenizer.eot_id]
        np.asarray(ids, dtype=np.uint16).tofile(directory / f"{split}.bin")
        n_bytes = sum(len(doc.encode()) for doc in docs)
        splits[split] = {"tokens": len(ids), "documents": len(docs), "bytes": n_bytes}
    meta = {"format": "slmkit-dataset", "version": 1, "vocab_size": vocab_size or tokenizer.vocab_size,
            "dtype": "uint16", "eot_id": tokenizer.eot_id, "splits": splits,
            "tokenizer": {"name": tokenizer.name, "kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
                          "eot_id": tokenizer.eot_id, "pad_id": tokenizer.pad_id}}
    (directory / "meta.json").write_text(json.dumps(meta, indent=2))
    return directory


def write_cycle_dataset(directory: Path) -> Path:
    """A tiny dataset whose splits are one short cycle of every token id, in both splits: learnt to a
    loss near zero within a few dozen steps (the write-ups' "loss 0.0000" failure)."""
    directory = write_dataset(directory, train_documents=4, val_documents=2)
    vocab = dataset_vocab(directory)
    for split in ("train", "val"):
        length = len(np.fromfile(directory / f"{split}.bin", dtype=np.uint16))
        np.resize(np.arange(vocab, dtype=np.uint16), length).tofile(directory / f"{split}.bin")
    return directory


def dataset_vocab(directory: Path) -> int:
    return json.loads((Path(directory) / "meta.json").read_text())["vocab_size"]


ROOT = Path(__file__).resolve().parents[1]


def run_slm_under_torchrun(arguments: list[str], nproc: int = 2, timeout: float = 180,
                           cpu: bool = True) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=nproc -m slmkit ARGUMENTS` on this machine, on the loopback only.

    Every address is 127.0.0.1 (--local-addr, GLOO_SOCKET_IFNAME=lo), so no hostname lookup can
    stall the rendezvous on a machine whose name does not resolve. A run that outlives `timeout`
    fails the test with every worker's Python stack (faulthandler on SIGABRT), and none of its
    processes is left behind (torchrun starts each worker in a session of its own).
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--local-addr=127.0.0.1",
               f"--nproc_per_node={nproc}", "-m", "slmkit", *arguments]
    env = {**os.environ, "PYTHONFAULTHANDLER": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if cpu:
        env["OMP_NUM_THREADS"] = "1"
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env)
        timed_out = False
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            workers = _descendants(process.pid)
            _signal_all(workers, signal.SIGABRT)  # each worker prints its stack, then dies
            time.sleep(5)
            _signal_all([process.pid, *workers], signal.SIGKILL)
            process.wait()
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if timed_out:
        pytest.fail(f"torchrun did not finish in {timeout:.0f} s; the workers' stacks:\n{stderr[-8000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _descendants(pid: int) -> list[int]:
    """The processes below `pid` (Linux /proc; none found elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _signal_all(pids: list[int], number: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, number)


def tiny_overrides(data_dir: Path, **train) -> list[str]:
    """--set overrides for a ~50K-parameter model on the dataset, fp32 on CPU, quiet extras off."""
    model = {"vocab_size": dataset_vocab(data_dir), "context_length": 32, "n_layers": 2, "d_model": 32,
             "n_heads": 4, "n_kv_heads": 2, "d_mlp": 64, "mlp": "swiglu", "norm": "rmsnorm", "position": "rope"}
    values = {"batch_size": 4, "seq_len": 32, "max_steps": 20, "warmup_steps": 2, "lr": 3e-3,
              "eval_interval": 10, "eval_batches": 2, "checkpoint_interval": 10, "log_interval": 1,
              "precision": "fp32", "device": "cpu", "samples": 0, "tensorboard": False, "wandb": False}
    values.update(train)
    out = [f"{k}={json.dumps(v)}" for k, v in model.items()]
    out += [f"train.{k}={_toml(v)}" for k, v in values.items()]
    return out


def train_bpe_base(root: Path, out: Path, documents: int = 16, steps: int = 10, report: bool = True) -> Path:
    """`out`: a tiny model (context 96) trained `steps` steps on a 512-token byte-level BPE of `documents`
    pseudo-word documents, with no chat tokens: the base a fine-tune test starts from."""
    from conftest import make_text

    from slmkit import api

    corpus = root / "corpus"
    corpus.mkdir()
    for index in range(documents):
        (corpus / f"doc{index}.txt").write_text(make_text(index), encoding="utf-8")
    data = api.prepare([str(corpus)], root / "data", "bpe:512", progress=False).dir
    overrides = [o for o in tiny_overrides(data, max_steps=steps, checkpoint_interval=0, threads=1)
                 if not o.startswith(("context_length", "train.seq_len"))]
    api.train(data, out, overrides=[*overrides, "context_length=96", "train.seq_len=96"], quiet=True, report=report)
    return out


def write_repeat_rows(path: Path) -> Path:
    """Fine-tuning rows in the bases' alphabet: "repeat W" -> "W W." (learnable in a few dozen steps)."""
    path.write_text("".join(json.dumps({"prompt": f"repeat {w}", "response": f"{w} {w}."}) + "\n" for w in WORDS))
    return path


def _toml(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def train_events(run_dir: Path, event: str = "train") -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == event]


@pytest.fixture(scope="module", autouse=False)
def one_thread():
    """Train with one intra-op thread: the tiny test models gain nothing from more, and on a busy
    machine OpenMP threads waiting on each other make each step up to 100x slower."""
    previous_env, previous_threads = os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = "1"  # slmkit.runtime.configure_threads honours it
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous_threads)
    if previous_env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = previous_env


@contextlib.contextmanager
def small_filesystem(directory: Path, size: str = "8m"):
    """A tmpfs of `size` mounted at `directory` (skips the test where mounting is not allowed: it
    needs root with CAP_SYS_ADMIN, which CI containers may not grant). Yields the mount point and a
    function that remounts it read-only."""
    import subprocess

    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here ({mounted.stderr.strip() or 'mount failed'})")

    def read_only():
        subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True, capture_output=True)

    try:
        yield directory, read_only
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True)
