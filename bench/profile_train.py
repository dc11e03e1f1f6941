"""Where a slmkit training step's time goes on this machine: matmuls against everything else.

Runs the trainer's step (model, fused chunked cross-entropy, fused AdamW, bf16 autocast where the
CPU has it) under torch.profiler and groups the operators' own time into matmuls (mm, addmm, bmm,
baddbmm), the compiled cross-entropy kernel, the optimizer, and the rest (elementwise, norms,
copies). For the matmuls it also gives the FLOP rate they reached, against the fastest 2048^3
matmul measured in the same run with the same thread count: when matmuls take most of the step at
close to that rate, no change to the code outside them can make the step much faster.

    python bench/profile_train.py                                   # slm-25m, 16 x 256, bf16
    python bench/profile_train.py --preset gpt2-124m --batch 4 --precision fp32 --threads 1
    python bench/profile_train.py --peaks                           # matmul peaks, 1 thread and all
    python bench/profile_train.py --optimizers                      # AdamW step: fused vs foreach
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
OPTIMIZER_OPS = ("aten::_fused_adamw_", "aten::_foreach_")


def category(name: str) -> str:
    if name in MATMUL_OPS:
        return "matmuls"
    if name.startswith(OPTIMIZER_OPS):
        return "optimizer"
    if "CompiledFxGraph" in name or name.startswith("## Call Compiled"):
        return "compiled cross-entropy kernel"
    return "everything else"


def print_peaks() -> None:
    """The fastest 2048^3 matmul in fp32 and bf16 on 1 thread and on every usable CPU: whether the
    cores scale (real cores, not SMT siblings) and what each core reaches."""
    from slmkit.runtime import available_cpus, measure_matmul_peak

    cpus = available_cpus()
    print("| threads | fp32 GFLOP/s | bf16 GFLOP/s | bf16 / fp32 |")
    print("|---:|---:|---:|---:|")
    for threads in sorted({1, cpus}):
        torch.set_num_threads(threads)
        measure_matmul_peak.cache_clear()
        fp32 = measure_matmul_peak(torch.float32, "cpu", seconds=2.0)
        bf16 = measure_matmul_peak(torch.bfloat16, "cpu", seconds=2.0)
        print(f"| {threads} | {fp32:,.0f} | {bf16:,.0f} | {bf16 / fp32:.2f}x |")


def print_optimizer_steps(preset: str, threads: int | None, repeats: int = 10) -> None:
    """One AdamW step over the preset's parameters, the trainer's (fused) against the multi-tensor
    foreach form, on the same random gradients, taking turns; median of `repeats` each."""
    import statistics

    from slmkit.config import load_model_config
    from slmkit.model.transformer import Transformer
    from slmkit.runtime import available_cpus
    from slmkit.train.config import TrainConfig
    from slmkit.train.optim import build_optimizer

    torch.set_num_threads(threads or available_cpus())
    torch.manual_seed(0)
    model = Transformer(load_model_config(preset))
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter) * 1e-3
    fused = build_optimizer(model, TrainConfig(lr=1e-4), "cpu")
    groups = [{k: v for k, v in group.items() if k not in ("fused", "foreach")}
              for group in fused.optimizers[0].param_groups]
    foreach = torch.optim.AdamW(groups, foreach=True)
    times = {"fused (trainer)": [], "foreach": []}
    for _ in range(repeats + 2):
        for name, optimizer in (("fused (trainer)", fused), ("foreach", foreach)):
            start = time.perf_counter()
            optimizer.step()
            times[name].append(time.perf_counter() - start)
    print(f"{preset}, {sum(p.numel() for p in model.parameters()):,} parameters, {torch.get_num_threads()} threads")
    for name, values in times.items():
        print(f"AdamW {name}: {statistics.median(values[2:]) * 1000:.1f} ms per step")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="slm-25m")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per usable CPU)")
    parser.add_argument("--steps", type=int, default=2, help="profiled steps (after two warm-up steps)")
    parser.add_argument("--peaks", action="store_true",
                        help="only measure the fp32 and bf16 matmul peaks on 1 thread and on every usable CPU")
    parser.add_argument("--optimizers", action="store_true",
                        help="only time one AdamW step of the preset: fused (the trainer's) against foreach")
    args = parser.parse_args(argv)
    if args.peaks:
        print_peaks()
        return
    if args.optimizers:
        print_optimizer_steps(args.preset, args.threads)
        return

    from torch.profiler import ProfilerActivity, profile

    from slmkit.config import load_model_config
    from slmkit.model.stats import model_stats
    from slmkit.model.transformer import Transformer
    from slmkit.runtime import available_cpus, measure_matmul_peak, tune_allocator
    from slmkit.train.config import TrainConfig
    from slmkit.train.loss import language_model_loss
    from slmkit.train.optim import build_optimizer

    tune_allocator()
    torch.set_num_threads(args.threads or available_cpus())
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    config = load_model_config(args.preset)
    torch.manual_seed(0)
    model = Transformer(config).train()
    optimizer = build_optimizer(model, TrainConfig(lr=3e-4), "cpu")
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = language_model_loss(model, tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        wall = (time.perf_counter() - start) / args.steps
    peak = measure_matmul_peak(dtype, "cpu", seconds=1.0)

    seconds, flops = {}, 0.0
    for event in prof.key_averages():
        kind = category(event.key)
        seconds[kind] = seconds.get(kind, 0.0) + event.self_cpu_time_total / 1e6 / args.steps
        if kind == "matmuls":
            flops += (event.flops or 0) / args.steps
    profiled = sum(seconds.values())
    model_flops = model_stats(config, context=args.seq).training_flops_per_token * args.batch * args.seq

    print(f"{args.preset}, {args.batch} x {args.seq}, {args.precision}, {torch.get_num_threads()} threads, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"step {wall * 1000:,.0f} ms ({args.batch * args.seq / wall:,.0f} tokens/s); "
          f"model FLOPs {model_flops / 1e9:,.0f} G per step; measured {args.precision} matmul peak "
          f"{peak:,.0f} GFLOP/s; MFU {model_flops / wall / 1e9 / peak:.1%}\n")
    print("| part | ms per step | share of profiled time |")
    print("|---|---:|---:|")
    for kind in ("matmuls", "compiled cross-entropy kernel", "optimizer", "everything else"):
        if kind in seconds:
            print(f"| {kind} | {seconds[kind] * 1000:,.0f} | {seconds[kind] / profiled:.0%} |")
    if seconds.get("matmuls"):
        rate = flops / seconds["matmuls"] / 1e9
        print(f"\nmatmuls: {flops / 1e9:,.0f} GFLOP per step at {rate:,.0f} GFLOP/s, {rate / peak:.0%} of the "
              f"measured peak. A step with every non-matmul part removed would run at most "
              f"{profiled / seconds['matmuls']:.2f}x faster.")


if __name__ == "__main__":
    main()
