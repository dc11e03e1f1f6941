"""ONNX decode speed and size: onnxruntime over the exported KV-cache graph, float32, int8 and int4, against
slmkit's own decode, same run; and what int8 and int4 cost in quality on a trained model.

For each preset (random weights, float32, CPU): the checkpoint is exported with `export_onnx` (with
the cache) three times, in float32, with `quantize="int8"` (onnxruntime's dynamic quantization) and with
`quantize="int4"` (onnxruntime's MatMulNBitsQuantizer, default blocks), then four engines decode greedily
at batch 1 from the same prompt: slmkit's `generate` (KVCache, PyTorch) and `OnnxModel.generate` over
each graph (onnxruntime, past/present tensors). Decode tokens/s come from the
time of N new tokens less the time of 1 (prefill and first token left out), best of --repeats runs taken
in turn, so that load from other processes hurts all alike. The greedy tokens are compared with slmkit's.

With --trained RUN (an slmkit run, e.g. `runs/quickstart` from `slm quickstart`): the run's best
checkpoint is exported all three ways and its validation tokens (the run's dataset, val.bin) are scored by
PyTorch and each graph: loss, top-1 agreement and logit differences against
float32, and the greedy continuations of prompts taken from the validation text.

    python bench/bench_onnx.py                                        # print the tables
    python bench/bench_onnx.py --trained runs/quickstart --write      # also replace the ONNX section of docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: benchdocs

from bench_generate import matmul_floor  # noqa: E402
from benchdocs import write_section  # noqa: E402

sys.path.insert(0, str(ROOT))

from slmkit.config import load_model_config  # noqa: E402
from slmkit.generate import GenerationConfig, generate  # noqa: E402
from slmkit.interop.hf import export_hf  # noqa: E402
from slmkit.interop.onnx import OnnxModel, export_onnx  # noqa: E402
from slmkit.model import Transformer, save_model  # noqa: E402
from slmkit.model.checkpoint import load_state, load_weights  # noqa: E402
from slmkit.rundir import resolve_checkpoint_dir  # noqa: E402

SECTION = "## ONNX (issue 13)"
SLMKIT, FLOAT32, INT8, INT4 = "slmkit (PyTorch)", "onnxruntime float32", "onnxruntime int8", "onnxruntime int4"
TRANSFORMERS = "transformers (PyTorch)"
DTYPES = {FLOAT32: "float32", INT8: "int8", INT4: "int4"}  # engine -> export_onnx's dtype


def best_time(fn, repeats: int = 1) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def graph_megabytes(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.iterdir() if p.name.startswith("model.onnx")) / 1e6


def export_all(ckpt: Path, workdir: Path, name: str) -> dict:
    """{dtype: (directory, export seconds)} for float32, int8 and int4."""
    result = {}
    for dtype, quantize in (("float32", None), ("int8", "int8"), ("int4", "int4")):
        start = time.perf_counter()
        directory = export_onnx(ckpt, workdir / f"{name}-{dtype}", quantize=quantize)
        result[dtype] = (directory, time.perf_counter() - start)
    return result


def matching_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def measure(preset: str, args, workdir: Path) -> dict:
    torch.manual_seed(0)
    model = Transformer(load_model_config(preset=preset)).eval()
    ckpt = save_model(model, workdir / preset)
    exports = export_all(ckpt, workdir, preset)
    graphs = {name: OnnxModel(exports[dtype][0], threads=args.threads) for name, dtype in DTYPES.items()}
    prompt = torch.randint(3, model.config.vocab_size, (args.prompt_tokens,),
                           generator=torch.Generator().manual_seed(1)).tolist()
    greedy = GenerationConfig(temperature=0.0, ignore_eot=True)
    engines = {SLMKIT: lambda n: generate(model, prompt, greedy, max_new_tokens=n).tokens}
    for name, graph in graphs.items():  # eot -1: no id stops it
        engines[name] = lambda n, graph=graph: graph.generate(prompt, max_new_tokens=n, eot_id=-1)
    engines[TRANSFORMERS] = transformers_engine(ckpt, workdir / f"{preset}-hf", prompt)
    n = args.new_tokens
    reference = engines[SLMKIT](n)
    agreement = {name: matching_prefix(engines[name](n), reference) for name in engines if name != SLMKIT}
    rates = dict.fromkeys(engines, 0.0)
    with torch.inference_mode():
        for run in engines.values():  # warm up
            run(3)
        for _ in range(args.repeats):  # in turn, so that load hurts all alike
            for name, run in engines.items():
                total, one = best_time(lambda: run(n)), best_time(lambda: run(1))  # noqa: B023
                rates[name] = max(rates[name], (n - 1) / max(total - one, 1e-9))
    return {"rates": rates, "agreement": agreement, "params": sum(p.numel() for p in model.parameters()),
            "floor": matmul_floor(model, args.repeats),
            "size_mb": {dtype: graph_megabytes(directory) for dtype, (directory, _) in exports.items()},
            "export_s": {dtype: seconds for dtype, (_, seconds) in exports.items()}}


def transformers_engine(ckpt: Path, out: Path, prompt: list[int]):
    """The peer: the same weights exported with `export_hf` and loaded by transformers, decoding greedily with
    its own `generate` and KV cache (float32); a function of the number of new tokens, as the other engines."""
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(export_hf(ckpt, out, card=False, audit=False)).eval()
    ids = torch.tensor([prompt])

    def run(n: int) -> list[int]:
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                          min_new_tokens=n, eos_token_id=None, pad_token_id=0)
        return out[0, ids.shape[1]:].tolist()

    return run


def validation_tokens(run: Path) -> np.ndarray:
    """The run's dataset's val.bin (the path its config.json names), as token ids."""
    data = Path(json.loads((run / "config.json").read_text())["data"]["path"])
    dtype = json.loads((data / "meta.json").read_text())["dtype"]
    return np.memmap(data / "val.bin", dtype=dtype, mode="r")


def quality(run: Path, args, workdir: Path) -> dict:
    """Loss, logit differences and greedy agreement of PyTorch and the float32, int8 and int4 graphs on
    --quality-rows x the context of the run's validation tokens."""
    ckpt = resolve_checkpoint_dir(run)
    config, state, _ = load_state(ckpt)
    model = Transformer(config)
    load_weights(model, state, str(ckpt))
    model = model.float().eval()
    exports = export_all(ckpt, workdir, "trained")
    graphs = {dtype: OnnxModel(directory, threads=args.threads) for dtype, (directory, _) in exports.items()}
    length = min(128, config.context_length)
    ids = torch.from_numpy(validation_tokens(run)[:args.quality_rows * length + 1].astype(np.int64))
    inputs, targets = ids[:-1].view(args.quality_rows, length), ids[1:].view(args.quality_rows, length)

    def loss(logits) -> float:
        logits = torch.as_tensor(logits).double()
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).item()

    with torch.no_grad():
        logits = {"PyTorch": model(inputs).numpy()}
    for dtype, graph in graphs.items():
        logits[dtype] = graph.forward(inputs.numpy())[0]
    prompts = [inputs[row, :16].tolist() for row in range(args.quality_rows)]
    new = min(32, config.context_length - 16)
    reference = [generate(model, prompt, "greedy", max_new_tokens=new, eot_id=-1).tokens for prompt in prompts]
    rows = {}
    for name, values in logits.items():
        difference = np.abs(values - logits["float32"])
        row = {"loss": loss(values), "top1": float((values.argmax(-1) == logits["float32"].argmax(-1)).mean()),
               "max_diff": float(difference.max()), "mean_diff": float(difference.mean())}
        if name in graphs:
            continuations = graphs[name].generate(prompts, max_new_tokens=new, eot_id=-1)
            prefixes = [matching_prefix(a, b) for a, b in zip(continuations, reference)]
            row.update(identical=sum(p == new for p in prefixes), prefix=sum(prefixes) / len(prefixes),
                       size_mb=graph_megabytes(exports[name][0]))
        rows[name] = row
    return {"rows": rows, "tokens": inputs.numel(), "length": length, "new": new, "run": str(run), "prompts": len(prompts),
            "params": sum(p.numel() for p in model.parameters()), "name": config.name}


def speed_table(results: dict, args) -> list[str]:
    rows = ["| model | engine | model.onnx | export | decode, tok/s | / float32 ONNX | / slmkit | / transformers "
            "| greedy tokens as slmkit's | PyTorch weight matmuls alone, tok/s |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for preset, r in results.items():
        rates, base, ours, peer = r["rates"], r["rates"][FLOAT32], r["rates"][SLMKIT], r["rates"][TRANSFORMERS]

        def agreement(name: str) -> str:
            same = r["agreement"][name]  # noqa: B023
            return f"{'all' if same == args.new_tokens else f'first {same}'} of {args.new_tokens}"

        rows.append(f"| `{preset}` ({r['params'] / 1e6:.1f}M) | {SLMKIT} | | | {ours:.0f} | {ours / base:.2f}x | 1.00x "
                    f"| {ours / peer:.2f}x | | {r['floor']:.0f} |")
        rows.append(f"| | {TRANSFORMERS} | | | {peer:.0f} | {peer / base:.2f}x | {peer / ours:.2f}x | 1.00x "
                    f"| {agreement(TRANSFORMERS)} | |")
        for name, dtype in DTYPES.items():
            size = f"{r['size_mb'][dtype]:.1f} MB"
            if dtype != "float32":
                size += f" ({r['size_mb']['float32'] / r['size_mb'][dtype]:.1f}x smaller)"
            rows.append(f"| | {name} | {size} | {r['export_s'][dtype]:.0f} s | {rates[name]:.0f} "
                        f"| {rates[name] / base:.2f}x | {rates[name] / ours:.2f}x | {rates[name] / peer:.2f}x "
                        f"| {agreement(name)} | |")
    return rows


def quality_table(q: dict) -> list[str]:
    rows = ["| logits of | loss, nats/token | loss - float32 graph's | top-1 as float32's | largest / mean abs logit "
            "difference to float32 | greedy continuations identical to PyTorch's | mean tokens before the first "
            "difference |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    float32 = q["rows"]["float32"]["loss"]
    for name, label in (("PyTorch", "PyTorch"), ("float32", "float32 graph"), ("int8", "int8 graph"),
                        ("int4", "int4 graph")):
        r = q["rows"][name]
        greedy = (f"{r['identical']} of {q['prompts']}", f"{r['prefix']:.1f} of {q['new']}") if "identical" in r \
            else ("", "")
        rows.append(f"| {label} | {r['loss']:.4f} | {r['loss'] - float32:+.4f} | {100 * r['top1']:.1f}% "
                    f"| {r['max_diff']:.3g} / {r['mean_diff']:.3g} | {greedy[0]} | {greedy[1]} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="nano,slm-25m")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and onnxruntime intra-op threads (default 1: a shared 2-core machine)")
    parser.add_argument("--trained", type=Path, default=None, metavar="RUN",
                        help="an slmkit run whose best checkpoint and validation tokens measure int8's and int4's "
                             "quality cost")
    parser.add_argument("--quality-rows", type=int, default=8, help="rows of the context (at most 128) to score")
    parser.add_argument("--write", action="store_true", help=f"replace the '{SECTION}' section of docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loads = [os.getloadavg()[0]]
    results, cost = {}, None
    with tempfile.TemporaryDirectory() as workdir:
        for preset in args.presets.split(","):
            results[preset] = measure(preset, args, Path(workdir))
            loads.append(os.getloadavg()[0])
            print(f"{preset} done", flush=True)
        if args.trained is not None:
            cost = quality(args.trained, args, Path(workdir))
            loads.append(os.getloadavg()[0])
    import onnxruntime

    command = "python bench/bench_onnx.py " + " ".join(sys.argv[1:])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = (f"{stamp}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
            f"{torch.__version__}, onnxruntime {onnxruntime.__version__}; {args.threads} thread(s) for all, niceness "
            f"{os.nice(0)}; "
            f"1-minute load average {', '.join(f'{x:.1f}' for x in loads)} at the start and after each model)")
    body = [
        f"Command: `{command.strip()}` ({info}). Random weights, CPU; batch 1, greedy, prompt {args.prompt_tokens} "
        f"tokens, {args.new_tokens} new tokens; decode tokens/s = (N - 1) / (time of N new tokens - time of 1), best "
        f"of {args.repeats} runs taken in turn. slmkit decodes with its KVCache (`slmkit.generate`, eager PyTorch, "
        f"float32); transformers decodes the same weights exported by `export_hf` with its own `generate` and KV "
        f"cache (float32; `min_new_tokens` holds it to N tokens); onnxruntime runs the `slm export-onnx` graph (past/present tensors, every step's present fed "
        f"back as the next past) through `OnnxModel.generate`, float32, `--quantize int8` (onnxruntime's "
        f"`quantize_dynamic`: uint8 weights per output channel, activations quantized per call) or `--quantize int4` "
        f"(onnxruntime's `MatMulNBitsQuantizer`: 4-bit weights in blocks of 32 with a scale and zero point each, "
        f"MatMulNBits at accuracy_level 4, the embedding a GatherBlockQuantized). Ratios are "
        f"against the float32 graph, slmkit and transformers of this same run. The export column is the time of `export_onnx` on "
        f"this loaded machine (int8, int4: the float32 export, then onnxruntime's pre-processing and quantization). The "
        f"weight-matmul column times PyTorch's `F.linear` over every weight matrix once (bench_generate's floor of a "
        f"batch-1 step, float32). Greedy tokens: how many of the {args.new_tokens} equal slmkit's before the first "
        f"difference (random weights give near-ties, so a quantized graph may leave slmkit's path early; see the trained model "
        f"below for what that costs).",
        "",
        *speed_table(results, args),
    ]
    if cost is not None:
        body += [
            "",
            f"Quality on a trained model: `{cost['run']}` (`{cost['name']}`, {cost['params'] / 1e6:.1f}M parameters, "
            f"the run's best checkpoint), {cost['tokens']} tokens of its validation split ({cost['prompts']} rows "
            f"of {cost['length']}) scored in one forward each; greedy continuations of {cost['new']} tokens from the "
            f"first 16 tokens of each row, compared with PyTorch's (slmkit `generate`). model.onnx: "
            f"{cost['rows']['float32']['size_mb']:.1f} MB float32, {cost['rows']['int8']['size_mb']:.1f} MB int8, "
            f"{cost['rows']['int4']['size_mb']:.2f} MB int4.",
            "",
            *quality_table(cost),
        ]
    body += [
        "",
        "Reading: on `nano` a decode step is a few small matmuls, so per-operator overhead sets its cost: "
        "slmkit's eager PyTorch pays Python and dispatch for every operation of every layer, onnxruntime runs "
        "the optimised graph from C++, and int8 gains less where the weights already fit in cache. On `slm-25m` "
        "a step reads every weight once (about 101 MB in float32, more than the 32 MiB L3 cache; see "
        "\"Generation\"), so memory traffic weighs more: int8 reads a quarter of the bytes per weight and its "
        "integer matmuls (VNNI on this CPU) are faster still; int4 reads about 5 bits per weight (4 bits, and a "
        "float scale and a 4-bit zero point per block of 32) and MatMulNBits at accuracy_level 4 multiplies them "
        "with int8 activations. The quantized files are larger than a quarter (int8) or an eighth (int4) of the "
        "float32 one because a tied embedding is stored twice (the Gather's table and the head's transposed "
        "copy), and int4's scales and zero points take about a fifth of its bytes. On a shared machine the ratios, taken in turn, are the figures to read. The ONNX cache grows by "
        "concatenation (each step copies the past into the present), which costs little at these lengths.",
    ]
    print("\n".join(body))
    if args.write:
        write_section(SECTION + "\n\n" + "\n".join(body) + "\n")


if __name__ == "__main__":
    main()
