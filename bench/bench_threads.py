"""CPU threads under load: training tokens/s on one thread, on every CPU, and with
train.threads = "auto" (`slmkit.runtime.ThreadGovernor`), on the machine as found and beside N
busy-loop processes that this script starts and stops itself.

One training step is forward + backward + AdamW as the trainer runs it (slmkit's Transformer,
`language_model_loss`, `build_optimizer`, bf16 autocast where the CPU has it, the allocator tuned),
at batch 8 x 256 random tokens of the `nano` preset by default. The cases of one scenario take
turns in chunks of a few seconds (the order rotating every round), so a change in the machine's
own load hits them alike; tokens/s is all tokens over all time of a case (what a run sees, slow
steps included). "auto" keeps one governor for the whole scenario, looking at the load every
`slmkit.runtime.THREAD_CHECK_SECONDS` as the trainer does; the threads it used are shown with
their share of the time.

    .venv/bin/python bench/bench_threads.py                    # nano, 1 busy loop, ~2-3 min on 2 cores
    .venv/bin/python bench/bench_threads.py --preset slm-25m --busy 2
    .venv/bin/python bench/bench_threads.py --write-docs       # also update docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: benchdocs, peers

from benchdocs import write_section  # noqa: E402

DOCS_SECTION = "## CPU threads under load"


@dataclass
class Case:
    """One thread setting: a fixed count, or "auto" with its governor (made per scenario)."""

    name: str
    threads: int | str
    governor: object = None
    tokens: int = 0
    seconds: float = 0.0
    seconds_at: dict[int, float] = field(default_factory=dict)  # thread count -> seconds run with it

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def threads_used(self) -> str:
        shares = sorted(self.seconds_at.items(), key=lambda item: -item[1])
        if len(shares) == 1:
            return str(shares[0][0])
        total = sum(self.seconds_at.values())
        return ", ".join(f"{count} ({100 * seconds / total:.0f}%)" for count, seconds in shares)


@contextlib.contextmanager
def busy_loops(count: int):
    """`count` Python processes spinning on a CPU each, stopped on the way out (even on an error)."""
    processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        if processes:
            time.sleep(1.0)  # let the scheduler settle with them
        yield
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.wait()


def training_step(preset: str, batch: int, seq: int, precision: str):
    """A function running one training step of `preset` on random tokens; its precision."""
    from slmkit.config import load_model_config
    from slmkit.model.transformer import Transformer
    from slmkit.train.config import TrainConfig
    from slmkit.train.device import setup_device
    from slmkit.train.loss import language_model_loss
    from slmkit.train.optim import build_optimizer

    setup = setup_device("cpu", precision)
    config = load_model_config(preset=preset)
    torch.manual_seed(0)
    model = Transformer(config)
    model.train()
    optimizer = build_optimizer(model, TrainConfig(lr=3e-4), "cpu")
    tokens = torch.randint(0, config.vocab_size, (batch, seq + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def step() -> None:
        with setup.autocast():
            loss = language_model_loss(model, inputs, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, setup.precision


def run_scenario(cases: list[Case], step, tokens_per_step: int, rounds: int, chunk: float) -> None:
    """Each case runs `chunk` seconds of steps per round (at least one step), in rotating order."""
    for round_index in range(rounds):
        order = cases[round_index % len(cases):] + cases[:round_index % len(cases)]
        for case in order:
            if case.governor is not None:
                torch.set_num_threads(case.governor.threads)
            else:
                torch.set_num_threads(case.threads)
            start = time.perf_counter()
            while True:
                threads = torch.get_num_threads()
                step_start = time.perf_counter()
                step()
                now = time.perf_counter()
                case.seconds_at[threads] = case.seconds_at.get(threads, 0.0) + now - step_start
                case.tokens += tokens_per_step
                if case.governor is not None:
                    case.governor.check()  # may change the count for the next step, as in the trainer
                if now - start >= chunk:
                    break
            case.seconds += time.perf_counter() - start


def markdown_table(results: list[dict], cpus: int) -> str:
    every = f"{cpus} threads" if cpus > 1 else "1 thread (all)"
    lines = [f"| machine | 1 thread | {every} | auto | auto threads used | auto / {every} | auto / 1 thread |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for row in results:
        one, every_cpu, auto = row["tokens_per_s"]["1"], row["tokens_per_s"]["all"], row["tokens_per_s"]["auto"]
        lines.append(f"| {row['scenario']} (load {row['load_before']:.1f} -> {row['load_after']:.1f}) "
                     f"| {one:,.0f} | {every_cpu:,.0f} | {auto:,.0f} | {row['auto_threads']} "
                     f"| {auto / every_cpu:.2f}x | {auto / one:.2f}x |")
    return "\n".join(lines)


def docs_section(table: str, args, precision: str, cpus: int, stamp: str) -> str:
    command = ("python bench/bench_threads.py" + (f" --preset {args.preset}" if args.preset != "nano" else "")
               + (f" --busy {args.busy}" if args.busy != 1 else ""))
    return (f"{DOCS_SECTION}\n\n"
            f"`{command}`, {stamp}, {platform.processor() or platform.machine()}, {cpus} CPUs usable, "
            f"torch {torch.__version__}. Preset {args.preset}, forward + backward + AdamW, batch {args.batch} x "
            f"{args.seq} random tokens, {precision}; tokens/s over {args.rounds} rounds of {args.chunk:g} s per "
            f"case, the cases taking turns. \"as found\": the machine with whatever else runs on it; \"+ N busy "
            f"loop\": beside {args.busy} busy-loop process(es) started by the script; \"load\" is the 1-minute "
            f"load average before and after a row. "
            f"\"auto\" is train.threads = \"auto\": `slmkit.runtime.ThreadGovernor` looking at other "
            f"processes' CPU use every {args.check:g} s (docs/performance.md).\n\n{table}\n")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="nano", help="a model preset (nano, slm-25m, ...)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--precision", default="auto", help="auto (bf16 where the CPU has it), bf16 or fp32")
    parser.add_argument("--busy", type=int, default=1, help="busy-loop processes beside the run in the busy rows")
    parser.add_argument("--rounds", type=int, default=3, help="turns each case takes per scenario")
    parser.add_argument("--chunk", type=float, default=6.0, help="seconds of steps per case per turn")
    parser.add_argument("--check", type=float, default=None,
                        help="seconds between the governor's looks (default: the trainer's)")
    parser.add_argument("--write-docs", action="store_true", help="update the section of docs/benchmarks.md")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.busy < 1 or args.rounds < 1 or args.chunk <= 0:
        parser.error("--busy and --rounds must be >= 1 and --chunk > 0")
    return args


def main(argv=None) -> None:
    from slmkit import runtime

    args = parse_args(argv)
    args.check = runtime.THREAD_CHECK_SECONDS if args.check is None else args.check
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so the busy loops are stopped on kill too
    runtime.tune_allocator()
    cpus = runtime.available_cpus()
    step, precision = training_step(args.preset, args.batch, args.seq, args.precision)
    for threads in sorted({1, cpus}):  # warm-up: first-step allocations, both thread pools
        torch.set_num_threads(threads)
        step()
    results = []
    for scenario, busy in (("as found", 0), (f"+ {args.busy} busy loop{'s' if args.busy > 1 else ''}", args.busy)):
        with busy_loops(busy):
            load_before = os.getloadavg()[0]
            cases = [Case("1", 1), Case("all", cpus),
                     Case("auto", "auto", runtime.ThreadGovernor(cpus, watched=runtime.affinity_cpus(),
                                                                 interval=args.check))]
            run_scenario(cases, step, args.batch * args.seq, args.rounds, args.chunk)
            load_after = os.getloadavg()[0]
        results.append({"scenario": scenario, "busy_processes": busy, "load_before": load_before,
                         "load_after": load_after, "tokens_per_s": {c.name: c.tokens_per_s for c in cases},
                         "auto_threads": cases[2].threads_used(),
                         "seconds_at": {c.name: c.seconds_at for c in cases}})
        print(f"{scenario}: " + ", ".join(f"{c.name} {c.tokens_per_s:,.0f} tok/s" for c in cases)
              + f" (auto used {cases[2].threads_used()})", flush=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = markdown_table(results, cpus)
    print()
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "precision": precision, "cpus": cpus,
                                               "time": stamp, "results": results}, indent=2) + "\n")
    if args.write_docs:
        write_section(docs_section(table, args, precision, cpus, stamp))
        print(f"\nwrote {ROOT / 'docs' / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
