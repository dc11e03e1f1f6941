"""Quantization (issue 13): file size, decode speed and bits per byte of int8 / int4 against float, in one run.

For each preset (random weights: the architecture sets the speed): the float checkpoint and its
quantized copies (`slm quantize`) load with `slmkit.load`; slmkit's generation engine decodes greedily
at batch 1 and 8, every variant and transformers' fp32 `generate` on the `slm export-hf` copy taking
turns run by run (best of --repeats), so that other load on the machine hurts all alike. Decode
tokens/s = batch * (N - 1) / (time for N new tokens - time for 1), as bench/bench_generate.py, with
the time in CPU seconds of this (one-thread) process: on a machine shared with other jobs the wall
clock mostly measures waiting for a core (the wall-clock batch-1 rate is shown beside it).
Beside each row: the bytes of weights one decode step reads (every matrix once), and the floor that
this machine's memory bandwidth (measured here: a sum over a 512 MB tensor) puts on a batch-1 step.
Bits per byte: `slm eval` of a trained checkpoint (--trained, e.g. a quick-start run) and its
quantized copies on its dataset's validation split.

    python bench/bench_quantize.py --trained /tmp/q/run              # print the tables
    python bench/bench_quantize.py --trained /tmp/q/run --write      # also docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch._dynamo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: benchdocs

from benchdocs import write_section  # noqa: E402

sys.path.insert(0, str(ROOT))

import slmkit.api  # noqa: E402
from slmkit.config import load_model_config  # noqa: E402
from slmkit.generate import GenerationConfig, generate  # noqa: E402
from slmkit.model import Transformer, save_model  # noqa: E402
from slmkit.model.quantized import QuantizedLinear  # noqa: E402
from slmkit.quantize import quantize_checkpoint  # noqa: E402

# name -> (quantize_checkpoint arguments or None for float, dtype the model is loaded in)
VARIANTS = {
    "fp32": (None, torch.float32),
    "bf16": (None, torch.bfloat16),
    "int8": ({"to": "int8"}, torch.bfloat16),
    "int8 + head": ({"to": "int8", "quantize_head": True}, torch.float32),
    "int8 + head, bf16 rest": ({"to": "int8", "quantize_head": True}, torch.bfloat16),
    "int8 dynamic + head": ({"to": "int8", "mode": "dynamic", "quantize_head": True}, torch.float32),
    "int4 (group 64)": ({"to": "int4", "group_size": 64}, torch.bfloat16),
    "int4 (group 64) + head": ({"to": "int4", "group_size": 64, "quantize_head": True}, torch.float32),
}
PEER = "transformers fp32"
COMPILED = ", compiled"  # a row of the same model decoding with slmkit's compiled step
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}


def build_variants(preset: str, root: Path) -> dict[str, Path]:
    """The float checkpoint of `preset` (random weights, seed 0) and its quantized copies: name -> directory."""
    torch.manual_seed(0)
    float_dir = save_model(Transformer(load_model_config(preset=preset)), root / preset / "float")
    dirs = {}
    for name, (arguments, _) in VARIANTS.items():
        dirs[name] = float_dir if arguments is None else quantize_checkpoint(
            float_dir, root / preset / name.replace(" ", "_"), **arguments)
    return dirs


def hf_peer(float_dir: Path, root: Path):
    import transformers

    out = slmkit.api.export_hf(float_dir, root / "hf")
    return transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()


def weight_bytes(model) -> int:
    """Bytes of the matrices one decode step reads: every Linear weight (a tied head once) and
    every quantized layer's integer weights and scales."""
    total = 0
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            total += sum(t.numel() * t.element_size() for t in (module.qweight, module.scales, module.zeros)
                         if t is not None)
        elif isinstance(module, torch.nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
    return total


def matmul_rate(model, repeats: int = 10) -> float:
    """Tokens/s if a batch-1 step cost only its weight matmuls: every Linear (float or quantized) once,
    on one row in the model's dtype, the best of `repeats` in CPU time."""
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, QuantizedLinear))]
    dtype = next(model.parameters()).dtype
    rows = {layer.in_features: torch.randn(1, layer.in_features, dtype=dtype) for layer in layers}
    with torch.inference_mode():
        return 1.0 / min(timed(lambda: [layer(rows[layer.in_features]) for layer in layers])[1]
                         for _ in range(repeats))


def memory_bandwidth(repeats: int = 5) -> float:
    """Bytes/s of reading a 512 MB tensor once (a sum), the best of `repeats`."""
    data = torch.ones(1 << 27, dtype=torch.float32)
    best = min(timed(lambda: data.sum())[1] for _ in range(repeats))
    return data.numel() * 4 / best


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(models: dict, hf, vocab: int, new_tokens: int, repeats: int) -> dict[str, dict]:
    """Decode tokens/s at batch 1 and 8 per engine, best of `repeats` rounds taken in turn."""
    prompt = torch.randint(3, vocab, (8, 16), generator=torch.Generator().manual_seed(1))
    config = GenerationConfig(temperature=0.0, ignore_eot=True)

    def ours(model, batch, n, compile):
        rows = prompt[:batch].tolist() if batch > 1 else prompt[0].tolist()
        return lambda: generate(model, rows, config, max_new_tokens=n, compile=compile)

    def theirs(batch, n):
        ids = prompt[:batch]
        return lambda: hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                                   min_new_tokens=n, eos_token_id=None, pad_token_id=0)

    compiled = {name: name.endswith(COMPILED) for name in models}
    engines = {name: (lambda b, n, m=model, c=compiled[name]: ours(m, b, n, c)) for name, model in models.items()}
    engines[PEER] = theirs
    results = {name: {} for name in engines}
    with torch.inference_mode():
        for name, run in engines.items():  # warm up (and compile) every path once
            start = time.perf_counter()
            run(1, 3)()
            run(8, 3)()
            results[name]["warmup_s"] = time.perf_counter() - start
        for _ in range(repeats):
            for name, run in engines.items():
                for batch in (1, 8):
                    (wall, cpu), (wall_one, cpu_one) = timed(run(batch, new_tokens)), timed(run(batch, 1))
                    for key, seconds in ((f"b{batch}", cpu - cpu_one), (f"b{batch}_wall", wall - wall_one)):
                        rate = batch * (new_tokens - 1) / max(seconds, 1e-9)
                        results[name][key] = max(results[name].get(key, 0.0), rate)
    return results


def speed_table(preset: str, dirs: dict, models: dict, results: dict, bandwidth: float) -> list[str]:
    float_size = (dirs["fp32"] / "model.safetensors").stat().st_size
    peer = results[PEER]["b1"]
    matmuls = {name: matmul_rate(model) for name, model in models.items()}
    lines = [f"**{preset}**", "",
             "| variant | float parts | file MB | weights read per token, MB | decode tok/s, batch 1 | vs bf16 | "
             "vs transformers fp32 | bandwidth floor, tok/s | share of floor | weight matmuls alone, tok/s (GB/s) | "
             "decode tok/s, batch 8 | batch 1, wall clock |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, model in models.items():
        variant = name.removesuffix(COMPILED)
        size = (dirs[variant] / "model.safetensors").stat().st_size
        if variant == "bf16":
            size = float_size // 2  # the bf16 row loads the fp32 file; a bf16 file is half of it
        read, r = weight_bytes(model), results[name]
        floor = bandwidth / read
        lines.append(f"| {name} | {DTYPE_NAMES[VARIANTS[variant][1]]} | {size / 1e6:.1f} | {read / 1e6:.1f} | "
                     f"{r['b1']:.0f} | {r['b1'] / bf16_rate(name, results):.2f}x | {r['b1'] / peer:.2f}x | "
                     f"{floor:.0f} | {r['b1'] / floor:.0%} | {matmuls[name]:.0f} ({matmuls[name] * read / 1e9:.1f}) | "
                     f"{r['b8']:.0f} | {r['b1_wall']:.0f} |")
    r = results[PEER]
    lines.append(f"| {PEER} (export-hf) | fp32 | {float_size / 1e6:.1f} | | {r['b1']:.0f} | "
                 f"{r['b1'] / results['bf16']['b1']:.2f}x | 1.00x | | | | {r['b8']:.0f} | {r['b1_wall']:.0f} |")
    return lines


def bf16_rate(name: str, results: dict) -> float:
    """Batch-1 rate of slmkit's bf16 decode in the same mode as `name` (compiled or eager)."""
    compiled = "bf16" + COMPILED
    return results[compiled]["b1"] if name.endswith(COMPILED) and compiled in results else results["bf16"]["b1"]


def speed_notes(preset: str, models: dict, results: dict) -> list[str]:
    """The issue's speed targets for int8 at batch 1, met or not, and what the bytes read allow."""
    peer, bf16_read = results[PEER]["b1"], weight_bytes(models["bf16"])
    notes = []
    for name in (name for name in models if name.startswith("int8")):
        rate, read, bf16 = results[name]["b1"], weight_bytes(models[name]), bf16_rate(name, results)
        verdict = [f"{rate / bf16:.2f}x bf16 (target 1.7x: {'met' if rate >= 1.7 * bf16 else 'missed'})",
                   f"{rate / peer:.2f}x transformers fp32 (target 3x: {'met' if rate >= 3 * peer else 'missed'})"]
        notes.append(f"{preset}, {name}: {', '.join(verdict)}; it reads {read / 1e6:.1f} MB of weights per token "
                     f"against bf16's {bf16_read / 1e6:.1f} MB (at the same share of the bandwidth floor: "
                     f"{bf16_read / read:.2f}x bf16).")
    return [" ".join(notes)]


def bits_per_byte(trained: Path, data: str | None, root: Path, max_tokens: int | None) -> list[str]:
    """Rows: bits per byte of the trained checkpoint and its quantized copies on its validation split."""
    source = slmkit.api.resolve_checkpoint_dir(trained)
    names, dirs = [], []
    for name, (arguments, _) in VARIANTS.items():
        if name == "bf16":
            continue
        names.append(name)
        dirs.append(source if arguments is None else quantize_checkpoint(
            source, root / "trained" / name.replace(" ", "_"), **arguments))
    report = slmkit.api.evaluate_models([str(d) for d in dirs], data=data, max_tokens=max_tokens,
                                        precision="fp32", progress=False)
    values = [result.bits_per_byte for result in report.results]
    scored = f"first {max_tokens:,} tokens" if max_tokens else f"{report.results[0].tokens:,} tokens"
    lines = [f"Bits per byte of `{source}` (trained) on its dataset's validation split ({scored}, context "
             f"{report.context}, float32 outside the kernels):", "",
             "| variant | bits per byte | change vs fp32 |", "|---|---:|---:|"]
    for name, value in zip(names, values, strict=True):
        lines.append(f"| {name} | {value:.4f} | {value / values[0] - 1:+.3%} |")
    change = {name: value / values[0] - 1 for name, value in zip(names, values, strict=True)}
    int8 = max(abs(v) for k, v in change.items() if k.startswith("int8"))
    int4 = max(abs(v) for k, v in change.items() if k.startswith("int4"))
    lines += ["", f"Targets: int8 within 1% of float: {'met' if int8 <= 0.01 else 'missed'} (largest int8 change "
                  f"{int8:.3%}); int4 within 5%: {'met' if int4 <= 0.05 else 'missed'} (largest int4 change {int4:.3%})."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="slm-25m,nano")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine two stall on each other)")
    parser.add_argument("--compile", default="", metavar="NAMES",
                        help="comma-separated variants to time again with slmkit's compiled decode step, e.g. "
                             "'bf16,int8 + head'")
    parser.add_argument("--trained", help="a trained run or checkpoint for the bits-per-byte table")
    parser.add_argument("--data", help="the dataset of --trained (default: its run's)")
    parser.add_argument("--max-tokens", type=int, default=None, help="score only the validation split's first N tokens")
    parser.add_argument("--write", action="store_true", help="replace the section in docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.compile:  # one process compiles the decode step of many models: keep every graph
        torch._dynamo.config.cache_size_limit = 256
    started, loads = time.perf_counter(), [os.getloadavg()[0]]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bandwidth = memory_bandwidth()
        for preset in args.presets.split(","):
            dirs = build_variants(preset, root)
            models = {name: slmkit.load(dirs[name], dtype=VARIANTS[name][1]) for name in VARIANTS}
            for name in filter(None, args.compile.split(",")):
                models[name + COMPILED] = models[name]
            hf = hf_peer(dirs["fp32"], root / preset)
            results = measure(models, hf, models["fp32"].config.vocab_size, args.new_tokens, args.repeats)
            body += [*speed_table(preset, dirs, models, results, bandwidth), "",
                     *speed_notes(preset, models, results), ""]
            loads.append(os.getloadavg()[0])
            print("\n".join(body[-len(models) - 8:]), flush=True)
        if args.trained:
            body += [*bits_per_byte(Path(args.trained), args.data, root, args.max_tokens), ""]
            print("\n".join(body[-len(VARIANTS) - 6:]), flush=True)
    command = "python bench/bench_quantize.py " + " ".join(sys.argv[1:])
    header = [
        f"Command: `{command}` ({stamp}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {args.threads} torch thread(s); {(time.perf_counter() - started) / 60:.1f} min; "
        f"1-minute load average {', '.join(f'{x:.1f}' for x in loads)} at the start and after each table). "
        f"Random weights for speed; greedy, prompt 16 tokens, {args.new_tokens} new tokens, best of "
        f"{args.repeats} rounds taken in turn; decode rates in CPU "
        f"time of the one-thread process (wall clock beside it). \"float parts\": the dtype the model is loaded in "
        f"(`slmkit.load(dtype=...)`), that of its embedding, norms, attention and a float head (fp32 is what "
        f"`slmkit.load` gives a quantized checkpoint by default); \"+ head\" quantizes the output head too; the "
        f"bf16 row's file MB is that of a bf16 copy. Memory bandwidth measured in the "
        f"same run: {bandwidth / 1e9:.1f} GB/s; floor = bandwidth / weights read per token. \"weight matmuls "
        f"alone\": the step's Linear layers, each once on one row, nothing else (the GB/s they read at).",
        "",
    ]
    print("\n".join(header))
    if args.write:
        write_section("## Quantization (issue 13)\n\n" + "\n".join(header + body) + "\n")


if __name__ == "__main__":
    main()
