"""Generation speed: slmkit against transformers' `generate` on the same weights, in the same run.

A ~22M Llama (the slm-25m preset, converted to transformers' LlamaForCausalLM) decodes greedily on
the CPU in float32 and bfloat16. For each: prefill tokens/s, decode tokens/s at batch 1 and 8, and
time to first token, as the best of --repeats runs taken in turn (slmkit, transformers, ...), so
that load from other processes hurts both alike. Also: the time of the weight matmuls alone (the
memory-bandwidth floor of a batch-1 step), and the KV-cache bytes of gemma3-270m at 32K tokens.

    python bench/bench_generate.py                       # print the table
    python bench/bench_generate.py --compile --write     # also a compiled step; update docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: benchdocs, peers

from benchdocs import write_section  # noqa: E402

sys.path.insert(0, str(ROOT))

from slmkit.config import load_model_config  # noqa: E402
from slmkit.generate import GenerationConfig, generate  # noqa: E402
from slmkit.generate.engine import prefill  # noqa: E402
from slmkit.model import Transformer  # noqa: E402
from slmkit.model.checkpoint import model_state  # noqa: E402
from slmkit.model.kv_cache import KVCache  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build_pair(preset: str, dtype: torch.dtype):
    """(slmkit model, transformers model) with the same random weights."""
    import transformers

    from slmkit.interop.hf_config import config_to_hf
    from slmkit.interop.hf_state import state_to_hf

    torch.manual_seed(0)
    config = load_model_config(preset=preset)
    model = Transformer(config).eval()
    values = {k: v for k, v in config_to_hf(config).items() if k not in ("architectures", "model_type")}
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**values)).eval()
    hf.load_state_dict(state_to_hf(model_state(model), config), strict=False)
    hf.tie_weights()
    return model.to(dtype), hf.to(dtype)


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(model, hf, args, compiled=False) -> dict[str, dict[str, float]]:
    """Figures per engine: prefill, decode at batch 1 and 8 (tokens/s), time to first token (ms)."""
    vocab, n = model.config.vocab_size, args.new_tokens
    generator = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, vocab, (8, args.prompt_tokens), generator=generator)
    long_prompt = torch.randint(3, vocab, (1, args.prefill_tokens), generator=generator)
    config = GenerationConfig(temperature=0.0, ignore_eot=True)

    def ours(batch, new, compile=False):
        return lambda: generate(model, prompt[:batch].tolist() if batch > 1 else prompt[0].tolist(),
                                config, max_new_tokens=new, compile=compile)

    def theirs(batch, new):
        ids = prompt[:batch]
        return lambda: hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                                   min_new_tokens=new, eos_token_id=None, pad_token_id=0)

    def prefill_ours():  # as generation prefills: the output head on the last position only
        prefill(model, long_prompt, model.new_cache(1, args.prefill_tokens), None)

    def prefill_theirs():
        hf(long_prompt, use_cache=True, logits_to_keep=1)

    engines = {"slmkit": (ours, prefill_ours), "transformers": (theirs, prefill_theirs)}
    if compiled:
        engines = {"slmkit": (ours, prefill_ours),
                   "slmkit compiled": (lambda b, k: ours(b, k, True), prefill_ours),
                   "transformers": (theirs, prefill_theirs)}
    results = {name: {} for name in engines}
    with torch.inference_mode():
        for run, _ in engines.values():  # warm up every path once
            run(1, 3)()
            run(8, 3)()
        for _ in range(args.repeats):  # in turn, so that load hurts every engine alike
            for name, (run, read_prompt) in engines.items():
                r = results[name]
                r["prefill"] = max(r.get("prefill", 0), args.prefill_tokens / best_time(read_prompt, 1))
                first = best_time(run(1, 1), 1)
                r["ttft_ms"] = min(r.get("ttft_ms", 1e9), first * 1e3)
                for batch in (1, 8):
                    total = best_time(run(batch, n), 1)
                    one = best_time(run(batch, 1), 1)
                    rate = batch * (n - 1) / max(total - one, 1e-9)
                    r[f"decode_b{batch}"] = max(r.get(f"decode_b{batch}", 0), rate)
    return results


def matmul_floor(model, repeats: int) -> float:
    """Tokens/s if a batch-1 step cost only its weight matmuls (every weight read once per token)."""
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    x = {w.shape[1]: torch.randn(1, w.shape[1], dtype=w.dtype) for w in weights}

    def once():
        for w in weights:
            F.linear(x[w.shape[1]], w)

    with torch.inference_mode():
        once()
        return 1.0 / min(best_time(once, 1) for _ in range(max(repeats, 3) * 5))


def same_greedy_tokens(model, hf, n: int = 32) -> bool:
    prompt = torch.randint(3, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=n,
                             min_new_tokens=n, eos_token_id=None, pad_token_id=0)[0, 16:].tolist()
    return generate(model, prompt[0].tolist(), "greedy", max_new_tokens=n).tokens == theirs


def gemma_cache_bytes(tokens: int = 32768) -> tuple[int, int]:
    """(bytes of slmkit's cache for gemma3-270m at `tokens`, bytes if every layer kept every token), bf16."""
    config = load_model_config(preset="gemma3-270m")
    cache = KVCache(config, 1, tokens, device="meta", dtype=torch.bfloat16)
    per_layer_step = 2 * config.n_kv_heads * config.head_dim * 2
    return cache.nbytes(), per_layer_step * config.n_layers * tokens


def table(results: dict, floors: dict, threads: int) -> list[str]:
    """Markdown rows: one per engine and dtype, plus the floor."""
    lines = ["| dtype | engine | prefill tok/s | decode tok/s, batch 1 | decode tok/s, batch 8 | "
             "first token ms |", "|---|---|---|---|---|---|"]
    for dtype, engines in results.items():
        peer = engines["transformers"]
        for name, r in engines.items():
            ratios = {key: r[key] / peer[key] for key in ("prefill", "decode_b1", "decode_b8")}
            ratios["ttft_ms"] = peer["ttft_ms"] / r["ttft_ms"]
            cells = [f"{r[key]:.1f}" if key == "ttft_ms" else f"{r[key]:.0f}" for key in ratios]
            if name != "transformers":
                cells = [f"{c} ({ratios[key]:.2f}x)" for c, key in zip(cells, ratios)]
            lines.append(f"| {dtype} | {name} | " + " | ".join(cells) + " |")
        lines.append(f"| {dtype} | weight matmuls only (floor) | | {floors[dtype]:.0f} | | |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="slm-25m")
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--prefill-tokens", type=int, default=240)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", default="1",
                        help="comma-separated torch thread counts, one table each (default 1: on a shared "
                             "2-core machine two threads stall on each other's barriers)")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--compile", action="store_true", help="also time a torch.compile'd decode step")
    parser.add_argument("--write", action="store_true", help="replace the Generation section of docs/benchmarks.md")
    args = parser.parse_args()
    loads = [os.getloadavg()[0]]
    tables, checks = [], {}
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        results, floors = {}, {}
        for name in args.dtypes.split(","):
            model, hf = build_pair(args.preset, DTYPES[name])
            if args.compile:
                start = time.perf_counter()
                with torch.inference_mode():
                    generate(model, [5, 6, 7], "greedy", max_new_tokens=4, compile=True)
                    generate(model, [[5, 6, 7]] * 8, "greedy", max_new_tokens=4, compile=True)
                print(f"{name}: compiling the decode step (batch 1 and 8) took {time.perf_counter() - start:.0f} s")
            if name == "fp32":
                checks[threads] = same_greedy_tokens(model, hf)
            results[name] = measure(model, hf, args, args.compile)
            floors[name] = matmul_floor(model, args.repeats)
            print(f"{threads} thread(s), {name} done", flush=True)
        loads.append(os.getloadavg()[0])
        last_results, last_floors = results, floors
        tables += [f"**{threads} torch thread(s)**", "", *table(results, floors, threads), "",
                   *floor_note(results, floors), ""]
    cache, unbounded = gemma_cache_bytes()
    command = "python bench/bench_generate.py " + " ".join(sys.argv[1:])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = (f"{stamp}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
            f"{torch.__version__}; 1-minute load average {', '.join(f'{x:.1f}' for x in loads)} at the start "
            f"and after each table (other engineers' jobs shared the machine)")
    body = [
        f"Command: `{command}` ({info}). Model: `{args.preset}` preset, random weights, converted to "
        f"`LlamaForCausalLM`; greedy, prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, "
        f"prefill of {args.prefill_tokens} tokens. Best of {args.repeats} runs taken in turn; ratios are "
        f"slmkit / transformers in this run (first token: transformers' time / slmkit's). The floor row "
        f"times the model's weight matmuls alone for one token (batch 1): no engine can decode faster.",
        "",
        *tables,
        f"Why the batch-1 ratio stays near 1: one decode step reads every weight matrix once, "
        f"{weight_bytes(args.preset, 4) / 1e6:.0f} MB in fp32 and {weight_bytes(args.preset, 2) / 1e6:.0f} MB "
        f"in bf16, more than this CPU's 32 MiB L3 cache, so a step costs at least the floor row (its "
        f"arithmetic, about 44 MFLOP, would take far less). {target_note(last_results, last_floors)} The "
        f"issue's 3x target assumed that per-step overhead dominates; on this machine memory traffic does.",
        "",
        f"Greedy tokens identical to transformers' (fp32, 32 tokens): {all(checks.values())}.",
        "",
        f"KV cache of gemma3-270m generating 32,768 tokens (batch 1, bf16): {cache:,} bytes "
        f"({cache / 2**20:.1f} MiB): the 15 sliding layers keep 512 steps each; keeping every step on every "
        f"layer would take {unbounded:,} bytes ({unbounded / 2**20:.0f} MiB).",
    ]
    print("\n".join(body))
    if args.write:
        write_section("## Generation\n\n" + "\n".join(body) + "\n")


def weight_bytes(preset: str, element_size: int) -> int:
    """Bytes of the matrices one decode step multiplies by (every Linear weight, the head once)."""
    config = load_model_config(preset=preset)
    with torch.device("meta"):
        model = Transformer(config)
    return element_size * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def target_note(results: dict, floors: dict) -> str:
    """Where 3x transformers' batch-1 decode speed lies against the floor, per dtype."""
    parts = []
    for dtype, engines in results.items():
        target = 3 * engines["transformers"]["decode_b1"]
        side = "above" if target > floors[dtype] else "below"
        parts.append(f"{dtype}: 3x transformers would be {target:.0f} tok/s, {side} the floor of {floors[dtype]:.0f}")
    return "At batch 1, " + "; ".join(parts) + "."


def floor_note(results: dict, floors: dict) -> list[str]:
    notes = []
    for dtype, engines in results.items():
        parts = [f"{name} {r['decode_b1'] / floors[dtype]:.0%}" for name, r in engines.items()]
        notes.append(f"{dtype}, batch 1, share of the matmul floor reached: {', '.join(parts)}.")
    return [" ".join(notes)]


if __name__ == "__main__":
    main()
