"""Benchmark: `slmkit.data.prepare` end to end against raw single-thread tiktoken on the same text.

    .venv/bin/python bench/bench_prepare.py [--data ../shared/data/shakespeare] [--repeats 3] [--no-write]

For each tokenizer (GPT-2; a BPE of 8,192 trained on the corpus), in the same process:
  raw      tiktoken `encode_ordinary` of every file's text, one thread, text already in memory;
  prepare  `prepare(...)` end to end: reading, decoding, cleaning, exact and near-duplicate detection,
           split, tokenization (worker processes), writing train/val.bin, health and leak reports.
Each figure is the best of --repeats runs. The ratio prepare / raw (throughput) is what is recorded in
docs/benchmarks.md, section "## Data preparation"; target >= 0.8.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: benchdocs, peers

from benchdocs import write_section  # noqa: E402

sys.path.insert(0, str(ROOT))

from slmkit.data import prepare, train_tokenizer_on_sources  # noqa: E402
from slmkit.tokenizer import load_tokenizer  # noqa: E402
from slmkit.utils import affinity_cpus  # noqa: E402

SECTION = "## Data preparation"


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the tokenizing workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of fn()."""
    start, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - start, cpu_seconds() - cpu


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def measure(data: Path, spec: str, tokenizer, repeats: int, workers: int | None) -> dict:
    texts = [p.read_text(encoding="utf-8") for p in sorted(data.iterdir()) if p.suffix == ".txt"]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    encoding = tokenizer.encoding  # tiktoken, for gpt2 and for the trained BPE's fast path
    tokens = sum(len(encoding.encode_ordinary(t)) for t in texts)
    scratch = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    raw_times, prepare_times = [], []
    try:
        for _ in range(repeats):  # interleaved, so both see the same machine load
            raw_times.append(timed(lambda: [encoding.encode_ordinary(t) for t in texts]))
            prepare_times.append(timed(lambda: prepare([str(data)], scratch / "ds", tokenizer=tokenizer, force=True,
                                                       progress=False, workers=workers)))
        meta = prepare([str(data)], scratch / "ds", tokenizer=tokenizer, force=True, progress=False,
                       workers=workers).meta
        timings = meta["timings"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    raw, prepared = min(t[0] for t in raw_times), min(t[0] for t in prepare_times)
    raw_cpu, prepare_cpu = min(t[1] for t in raw_times), min(t[1] for t in prepare_times)
    return {"spec": spec, "bytes": n_bytes, "files": len(texts), "tokens": tokens, "raw_s": raw,
            "prepare_s": prepared, "ratio": raw / prepared, "cpu_ratio": raw_cpu / prepare_cpu,
            "timings": timings, "workers": meta["machine"]["workers"]}


def record(results: list[dict], command: str, data: Path, train_s: float) -> str:
    lines = [
        SECTION,
        "",
        "`slm prepare` end to end versus raw single-thread tiktoken `encode_ordinary` on the same text, in the same "
        "run (best of several runs each). Ratio = prepare throughput / raw tokenizer throughput; target >= 0.8.",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- Machine: {cpu_name()}, {affinity_cpus()} usable cores, load average "
        f"{os.getloadavg()[0]:.1f}, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"- Data: `{data}` ({results[0]['bytes'] / 1e6:.2f} MB, {results[0]['files']} files)",
        f"- Command: `{command}`",
        "",
        "| tokenizer | processes | tokens | raw tiktoken MB/s | prepare MB/s | prepare / raw (wall) | raw CPU / prepare CPU |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['spec']} | {r['workers']} | {r['tokens']:,} | {r['bytes'] / r['raw_s'] / 1e6:.1f} | "
                     f"{r['bytes'] / r['prepare_s'] / 1e6:.1f} | **{r['ratio']:.2f}x** | {r['cpu_ratio']:.2f}x |")
    lines += [
        "",
        f"Training the 8,192-token BPE on the same corpus (not part of the prepare figure): {train_s:.1f} s.",
        "Where prepare's time goes (last run, seconds): "
        + "; ".join(f"{r['spec']}: " + ", ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in r["timings"].items())
                    for r in results) + ".",
        "Processes: tokenizing processes prepare used; by default the usable cores minus the 1-minute load "
        "average (at least 1, the main process itself), since on a busy machine more processes only add "
        "overhead. "
        "MB/s figures move with machine load; the wall ratio is the figure the target refers to. The CPU ratio "
        "(all prepare processes together against the one raw thread) is what prepare would reach with no spare "
        "core: its work besides tokenizing (cleaning, MinHash, hashing, writing, reports) costs 1 / ratio - 1.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "shakespeare"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        print(f"no data at {data}; pass --data DIR with .txt files", file=sys.stderr)
        return 1
    gpt2 = load_tokenizer("gpt2")
    results = [measure(data, "gpt2", gpt2, args.repeats, args.workers)]
    if args.workers is None and results[0]["workers"] != affinity_cpus():
        # What the load-adaptive default avoided: one process per core on this busy machine.
        forced = measure(data, "gpt2", gpt2, args.repeats, affinity_cpus())
        forced["spec"] = f"gpt2, forced --workers {affinity_cpus()}"
        results.append(forced)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bpe = train_tokenizer_on_sources([str(data)], "bpe:8192", Path(tmp) / "tok")
        train_s = time.perf_counter() - start
        if not bpe.uses_tiktoken:
            print("warning: the trained BPE has no tiktoken fast path", file=sys.stderr)
        results.append(measure(data, "bpe:8192 (trained)", load_tokenizer(Path(tmp) / "tok"), args.repeats, args.workers))
    command = "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    shown = os.path.relpath(data.resolve(), ROOT)
    section = record(results, command, shown, train_s)
    print(section)
    if not args.no_write:
        write_section(section)
        print(f"recorded in {ROOT / 'docs' / 'benchmarks.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
