"""Benchmark: peak memory and throughput of `slm prepare` on synthetic corpora of growing size (issue 14).

    .venv/bin/python bench/bench_prepare_memory.py [--sizes 50,500] [--bpe-sizes 50] [--workers 1]
        [--label after] [--baseline /tmp/prepare-memory-before.json] [--json OUT.json] [--no-write]

For each size (MB of JSON lines), the script writes a deterministic corpus into a temporary folder
(English-like pseudo-words with Zipf frequencies, documents of 1-10 KB, 1% exact and 3% near-duplicate
documents so that deduplication has work), then runs `slm prepare CORPUS --tokenizer gpt2 --quiet`
in a subprocess of its own, and records:

  peak tree RSS   the largest sum of the resident set sizes of the `slm` process and all its descendants
                  (the tokenizing workers), polled every 50 ms with psutil (shared pages of forked workers
                  count once per process: an upper bound of what the machine held)
  max process RSS the largest resident set size of any one process of the tree (`ru_maxrss` of wait4,
                  which the kernel tracks exactly, between polls too)
  MB/s            input MB (the corpus files' size) per wall second of the whole command, and per CPU
                  second of all its processes (what the machine's load does not move)

A trained BPE (`--tokenizer bpe:8192`) is measured for the sizes in --bpe-sizes. Peak memory must not
grow with the input: the ratio of the largest to the smallest size's peak is printed (target <= 1.3).
The section "## Data preparation memory (issue 14)" of docs/benchmarks.md is written, with the rows of
--baseline (an earlier run's --json, e.g. before a change) beside this run's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: benchdocs

from benchdocs import write_section  # noqa: E402

SECTION = "## Data preparation memory (issue 14)"
SYLLABLES = ("th", "e", "an", "re", "on", "at", "en", "nd", "ti", "es", "or", "te", "of", "ed", "is", "it",
             "al", "ar", "st", "to", "nt", "ng", "se", "ha", "as", "ou", "io", "le", "ve", "co", "me", "de",
             "hi", "ri", "ro", "ic", "ne", "ea", "ra", "ce", "li", "ch", "ll", "be", "ma", "si", "om", "ur")
VOCABULARY = 20_000
EXACT_DUPLICATE_SHARE = 0.01
NEAR_DUPLICATE_SHARE = 0.03
SHARD_BYTES = 32 << 20  # JSON lines files of about this size


def vocabulary(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pseudo-words of 1-4 syllables (lower case and capitalised) and their Zipf probabilities."""
    words: dict[str, None] = {}
    while len(words) < VOCABULARY:
        n = int(rng.integers(1, 5))
        words["".join(SYLLABLES[i] for i in rng.integers(0, len(SYLLABLES), n))] = None
    lower = np.array(list(words), dtype=object)
    capital = np.array([w.capitalize() for w in lower], dtype=object)
    p = 1.0 / np.arange(1, VOCABULARY + 1) ** 1.1
    return lower, capital, p / p.sum()


def document(rng, lower, capital, p) -> str:
    """One document: paragraphs of sentences of 4-24 words."""
    n_words = int(rng.integers(150, 1600))
    ids = rng.choice(len(lower), size=n_words, p=p)
    sentence_ends = np.cumsum(rng.integers(4, 25, size=n_words)) - 1
    sentence_ends = sentence_ends[sentence_ends < n_words - 1]
    words = lower[ids]
    starts = np.concatenate([[0], sentence_ends + 1])
    words[starts] = capital[ids[starts]]
    words[sentence_ends] = words[sentence_ends] + np.where(rng.random(len(sentence_ends)) < 0.15, ".\n\n", ".")
    words[-1] = words[-1] + "."
    return " ".join(words).replace("\n\n ", "\n\n")


def near_duplicate(rng, text: str, lower) -> str:
    """`text` with about 4% of its words replaced and a line added: a near-duplicate of it."""
    words = text.split(" ")
    for i in rng.choice(len(words), size=max(1, len(words) // 25), replace=False):
        words[i] = str(lower[int(rng.integers(0, len(lower)))])
    return "Edited copy.\n\n" + " ".join(words)


def write_corpus(folder: Path, megabytes: int, seed: int = 14) -> dict:
    """Write about `megabytes` MB of JSON lines into `folder` (deterministic for a seed); return counts."""
    rng = np.random.default_rng(seed)
    lower, capital, p = vocabulary(rng)
    folder.mkdir(parents=True)
    target = megabytes * 1_000_000
    written, documents, shard, shard_bytes = 0, 0, [], 0
    recent: list[str] = []  # earlier documents that duplicates copy
    counts = {"documents": 0, "exact_duplicates": 0, "near_duplicates": 0}
    while written < target:
        u = rng.random()
        if recent and u < EXACT_DUPLICATE_SHARE:
            text = recent[int(rng.integers(0, len(recent)))]
            counts["exact_duplicates"] += 1
        elif recent and u < EXACT_DUPLICATE_SHARE + NEAR_DUPLICATE_SHARE:
            text = near_duplicate(rng, recent[int(rng.integers(0, len(recent)))], lower)
            counts["near_duplicates"] += 1
        else:
            text = document(rng, lower, capital, p)
            if len(recent) < 2000:
                recent.append(text)
            else:
                recent[int(rng.integers(0, len(recent)))] = text
        line = json.dumps({"text": text}) + "\n"
        shard.append(line)
        shard_bytes += len(line)
        written += len(line)
        documents += 1
        if shard_bytes >= SHARD_BYTES or written >= target:
            with open(folder / f"part-{documents:08d}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(shard)
            shard, shard_bytes = [], 0
    counts["documents"] = documents
    counts["bytes"] = sum(f.stat().st_size for f in folder.iterdir())
    return counts


def run_measured(command: list[str], poll_s: float = 0.05) -> dict:
    """Run `command`; return its wall and CPU seconds, peak tree RSS and max process RSS (bytes)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    root = psutil.Process(process.pid)
    peak_tree, peak_processes = 0, 1
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        total, count = 0, 0
        try:
            for member in [root, *root.children(recursive=True)]:
                try:
                    total += member.memory_info().rss
                    count += 1
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass
        peak_tree, peak_processes = max(peak_tree, total), max(peak_processes, count)
        time.sleep(poll_s)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    out, err = process.stdout.read().decode(), process.stderr.read().decode()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{out}\n{err}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_tree_rss": peak_tree,
            "max_process_rss": usage.ru_maxrss * 1024, "processes": peak_processes, "stderr": err}


def measure(corpus: Path, counts: dict, tokenizer: str, workers: int | None, scratch: Path, src: Path) -> dict:
    """Prepare `corpus` with `tokenizer` by the slmkit package under `src`; return the figures of the run."""
    out = scratch / f"ds-{tokenizer.replace(':', '')}"
    command = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(src)!r}); sys.argv[0] = 'slm'; "
               "from slmkit.cli import main; sys.exit(main())",
               "prepare", str(corpus), "--tokenizer", tokenizer, "--out", str(out), "--quiet", "--force"]
    if workers is not None:
        command += ["--workers", str(workers)]
    result = run_measured(command)
    meta = json.loads((out / "meta.json").read_text())
    shutil.rmtree(out)
    mb = counts["bytes"] / 1e6
    return {
        "tokenizer": tokenizer, "input_mb": round(mb, 1), "documents": counts["documents"],
        "workers": meta["machine"]["workers"], "processes": result["processes"],
        "tokens": meta["splits"]["train"]["tokens"] + meta["splits"]["val"]["tokens"],
        "peak_tree_rss_mb": round(result["peak_tree_rss"] / 1e6, 1),
        "max_process_rss_mb": round(result["max_process_rss"] / 1e6, 1),
        "wall_s": round(result["wall_s"], 1), "cpu_s": round(result["cpu_s"], 1),
        "mb_per_s": round(mb / result["wall_s"], 2), "mb_per_cpu_s": round(mb / result["cpu_s"], 2),
        "near_duplicate_pairs": meta["near_duplicates"]["pairs"],
        "exact_duplicates": meta["filters"]["exact_duplicate"],
        "timings": meta["timings"], "load_average": round(os.getloadavg()[0], 1),
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def table(rows: list[dict], label: str) -> list[str]:
    lines = []
    for r in rows:
        lines.append(f"| {label} | {r['tokenizer']} | {r['input_mb']:,.0f} | {r['documents']:,} | {r['workers']} | "
                     f"**{r['peak_tree_rss_mb']:,.0f}** | {r['max_process_rss_mb']:,.0f} | {r['mb_per_s']:.2f} | "
                     f"{r['mb_per_cpu_s']:.2f} | {r['load_average']} |")
    return lines


def growth(rows: list[dict], tokenizer: str = "gpt2") -> str:
    """Peak tree RSS of the largest size over the smallest's, for `tokenizer`."""
    chosen = sorted((r for r in rows if r["tokenizer"] == tokenizer), key=lambda r: r["input_mb"])
    if len(chosen) < 2:
        return "n/a"
    return f"{chosen[-1]['peak_tree_rss_mb'] / chosen[0]['peak_tree_rss_mb']:.2f}x"


def record(rows: list[dict], label: str, baseline: dict | None, command: str) -> str:
    lines = [
        SECTION, "",
        "`slm prepare CORPUS --tokenizer gpt2 --quiet` in a subprocess on synthetic JSON-lines corpora written by "
        "the script (pseudo-English, documents of 1-10 KB, 1% exact and 3% near-duplicates). Peak tree RSS: the "
        "largest sum of resident memory of the `slm` process and its tokenizing workers (psutil, polled every "
        "50 ms). Max process RSS: the largest single process (`ru_maxrss`). MB/s: input MB per wall second of the "
        "whole command, and per CPU second of all its processes. Target: peak memory at most 1.3x from 50 MB to "
        "500 MB, and MB/s not lower.", "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- Machine: {cpu_name()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"- Command: `{command}`", "",
        "| code | tokenizer | input MB | documents | workers | peak tree RSS MB | max process RSS MB | MB/s (wall) "
        "| MB/s per CPU s | load avg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if baseline:
        lines += table(baseline["rows"], baseline["label"])
    lines += table(rows, label)
    lines.append("")
    if baseline:
        lines.append(f"Growth of the peak from the smallest to the largest corpus (gpt2): {baseline['label']} "
                     f"{growth(baseline['rows'])}, {label} {growth(rows)}.")
    else:
        lines.append(f"Growth of the peak from the smallest to the largest corpus (gpt2): {growth(rows)}.")
    lines.append("Where the time goes (seconds, " + label + "): " + "; ".join(
        f"{r['tokenizer']} {r['input_mb']:,.0f} MB: " + ", ".join(
            f"{k.removesuffix('_s')} {v:.1f}" for k, v in r["timings"].items()) for r in rows) + ".")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,500", help="corpus sizes in MB, comma-separated")
    parser.add_argument("--bpe-sizes", default="", help="sizes also prepared with a trained bpe:8192")
    parser.add_argument("--workers", type=int, default=1, help="prepare's --workers (0: its default)")
    parser.add_argument("--label", default="this run", help="what the rows are (e.g. before, after)")
    parser.add_argument("--baseline", help="an earlier run's --json, shown beside this run")
    parser.add_argument("--json", help="write this run's rows here")
    parser.add_argument("--scratch", default=None, help="folder for the corpora (default: a temporary one)")
    parser.add_argument("--src", default=str(ROOT), help="the folder holding the slmkit package to measure "
                        "(e.g. an export of the commit before a change)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    bpe_sizes = {int(s) for s in args.bpe_sizes.split(",") if s}
    workers = args.workers or None
    scratch = Path(tempfile.mkdtemp(prefix="bench-prepare-memory-", dir=args.scratch))
    rows = []
    try:
        for size in sizes:
            corpus = scratch / f"corpus-{size}mb"
            started = time.perf_counter()
            counts = write_corpus(corpus, size)
            print(f"corpus {size} MB: {counts} ({time.perf_counter() - started:.0f} s to write)", flush=True)
            for tokenizer in ["gpt2"] + (["bpe:8192"] if size in bpe_sizes else []):
                row = measure(corpus, counts, tokenizer, workers, scratch, Path(args.src))
                print(json.dumps(row), flush=True)
                rows.append(row)
            shutil.rmtree(corpus)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"label": args.label, "rows": rows}, indent=1))
    baseline = json.loads(Path(args.baseline).read_text()) if args.baseline else None
    command = "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    section = record(rows, args.label, baseline, command)
    print(section)
    if not args.no_write:
        write_section(section)
        print(f"recorded in {ROOT / 'docs' / 'benchmarks.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
