"""Evaluation speed: `slm eval` against the trainer's own evaluation and a plain transformers loop, on
the same model and the same windows, in the same run.

The slm-25m preset with the GPT-2 tokenizer's 50,257 ids (random weights, saved as an slmkit
checkpoint and exported with `slmkit.interop.hf.export_hf`) scores the first --tokens tokens of the
validation split of Shakespeare prepared with the GPT-2 tokenizer, in windows of --context tokens with
no overlap, in float32 and bfloat16 (autocast, on a CPU that has it). Engines, taken in turn
--repeats times (best of each, so that load from other processes hurts all alike):

- slm eval: `slmkit.eval.perplexity.evaluate_models` (scoring time; loading and tokenizing left out);
- trainer's eval: `slmkit.train.evaluator.Evaluator.split_loss` over the same windows and batch size;
- transformers, guide loop: the loop of the transformers perplexity guide (one window per call,
  `model(input_ids, labels=...)`) on the exported model, under the same autocast;
- transformers, batched: the same with --batch-size windows per call.

    python bench/bench_eval.py                  # print the table
    python bench/bench_eval.py --write-docs     # also replace the Evaluation section of docs/benchmarks.md
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: benchdocs

from benchdocs import write_section  # noqa: E402

sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from slmkit.config import load_model_config  # noqa: E402
from slmkit.data import open_dataset, prepare  # noqa: E402
from slmkit.eval.perplexity import evaluate_models  # noqa: E402
from slmkit.interop.hf import export_hf  # noqa: E402
from slmkit.model import Transformer, load_model, save_model  # noqa: E402
from slmkit.train.device import cpu_supports_bf16, setup_device  # noqa: E402
from slmkit.train.evaluator import Evaluator  # noqa: E402

SHAKESPEARE = ROOT.parent / "shared" / "data" / "shakespeare"


def build(workdir: Path, preset: str, corpus: Path):
    """(dataset, slmkit checkpoint dir, HF dir): the corpus prepared with GPT-2 ids, a random model."""
    dataset = prepare([str(corpus)], workdir / "data", tokenizer="gpt2", progress=False)
    torch.manual_seed(0)
    model = Transformer(load_model_config(preset=preset, overrides=[f"vocab_size={dataset.vocab_size}"]))
    tokenizer_files = {p.name: p for p in dataset.dir.iterdir() if p.is_file() and p.suffix != ".bin"
                       and p.name != "meta.json" and not p.name.startswith(".")}
    save_model(model, workdir / "ckpt", extra_files=tokenizer_files)
    export_hf(workdir / "ckpt", workdir / "hf")
    return dataset, workdir / "ckpt", workdir / "hf"


def ids_and_windows(dataset, n_windows: int, context: int) -> torch.Tensor:
    return torch.from_numpy(dataset.split("val")[:n_windows * context + 1].astype("int64"))


def slm_eval(ckpt: Path, data: Path, args, precision: str) -> tuple[float, float]:
    result = evaluate_models([ckpt], data=data, context=args.context, batch_size=args.batch_size,
                             max_tokens=args.windows * args.context + 1, device="cpu", precision=precision,
                             progress=False).results[0]
    return result.tokens_per_s, result.loss


def trainer_eval(model, dataset, args, precision: str) -> tuple[float, float]:
    batches = args.windows // args.batch_size
    evaluator = Evaluator(dataset, seq_len=args.context, batch_size=args.batch_size, batches=batches,
                          setup=setup_device("cpu", precision))
    start = time.perf_counter()
    loss = evaluator.split_loss(model, "val")
    return batches * args.batch_size * args.context / (time.perf_counter() - start), loss


def transformers_loop(hf, ids: torch.Tensor, args, precision: str, batch: int) -> tuple[float, float]:
    """The guide's loop with max_length = context + 1 and stride = context: window k predicts tokens
    k x context + 1 .. (k + 1) x context, so every label counts and none is scored twice."""
    context = args.context
    starts = list(range(0, len(ids) - context, context))
    setup = setup_device("cpu", precision)
    nll, count = 0.0, 0
    start_time = time.perf_counter()
    with torch.no_grad():
        for first in range(0, len(starts), batch):
            rows = torch.stack([ids[s:s + context + 1] for s in starts[first:first + batch]])
            with setup.autocast():
                outputs = hf(rows, labels=rows)
            n = rows.shape[0] * context  # the labels left after the model's shift by one
            nll += outputs.loss.float().item() * n
            count += n
    return count / (time.perf_counter() - start_time), nll / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="slm-25m")
    parser.add_argument("--corpus", default=str(SHAKESPEARE))
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--windows", type=int, default=48, help="windows scored per measurement (a multiple of the batch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine two threads stall on each other)")
    parser.add_argument("--precisions", default="fp32,bf16" if cpu_supports_bf16() else "fp32")
    parser.add_argument("--write-docs", action="store_true", help="replace the Evaluation section of docs/benchmarks.md")
    args = parser.parse_args()
    import transformers

    torch.set_num_threads(args.threads)
    loads = [os.getloadavg()[0]]
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        dataset, ckpt, hf_dir = build(Path(tmp), args.preset, Path(args.corpus))
        dataset = open_dataset(dataset.dir)
        model = load_model(ckpt)
        hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        ids = ids_and_windows(dataset, args.windows, args.context)
        engines = {
            "slm eval": lambda p: slm_eval(ckpt, dataset.dir, args, p),
            "trainer's eval": lambda p: trainer_eval(model, dataset, args, p),
            "transformers, guide loop (batch 1)": lambda p: transformers_loop(hf, ids, args, p, 1),
            f"transformers, batched ({args.batch_size})": lambda p: transformers_loop(hf, ids, args, p, args.batch_size),
        }
        results: dict[str, dict[str, tuple[float, float]]] = {}
        first_call: dict[str, float] = {}
        for precision in args.precisions.split(","):
            start = time.perf_counter()
            slm_eval(ckpt, dataset.dir, args, precision)  # warm-up: compiles the fused loss's kernel once
            first_call[precision] = time.perf_counter() - start
            for run in engines.values():  # every engine warmed up once
                run(precision)
            best: dict[str, tuple[float, float]] = {}
            for _ in range(args.repeats):
                for name, run in engines.items():
                    rate, loss = run(precision)
                    if name not in best or rate > best[name][0]:
                        best[name] = (rate, loss)
            results[precision] = best
            loads.append(os.getloadavg()[0])
            print(f"{precision} done", flush=True)
    body = report(results, first_call, args, loads, started, transformers.__version__)
    print(body)
    if args.write_docs:
        write_section(body)


def report(results, first_call, args, loads, started, transformers_version: str) -> str:
    command = "python bench/bench_eval.py " + " ".join(sys.argv[1:])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Evaluation (slm eval)",
        "",
        f"Tokens scored per second by `slm eval` against the trainer's own evaluation (`Evaluator.split_loss`) "
        f"and a plain transformers loop on the exported model (`export_hf`; the loop of the transformers "
        f"perplexity guide, `model(input_ids, labels=...)`, one window per call, and batched), on the same "
        f"windows, in the same run. Model: the `{args.preset}` preset with the GPT-2 tokenizer's 50,257 ids, random "
        f"weights; data: the first {args.windows * args.context:,} tokens of the validation split of Shakespeare "
        f"prepared with `gpt2`, {args.windows} windows of {args.context} tokens, batch {args.batch_size} (the loop "
        f"of the guide: 1). bf16 is autocast on float32 weights for every engine, as the trainer runs it. Best of "
        f"{args.repeats} runs taken in turn; ratio = slm eval / the engine.",
        "",
        f"- Date: {stamp}; {(time.time() - started) / 60:.1f} min",
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (AVX512-BF16: "
        f"{cpu_supports_bf16()}), torch {torch.__version__}, transformers {transformers_version}, Python "
        f"{platform.python_version()}, {args.threads} torch thread(s); 1-minute load average "
        f"{', '.join(f'{x:.1f}' for x in loads)} at the start and after each precision",
        f"- Command: `{command}`",
        "",
        "| precision | engine | tokens/s | slm eval / this | loss (nats) |",
        "|---|---|---:|---:|---:|",
    ]
    for precision, engines in results.items():
        ours = engines["slm eval"][0]
        for name, (rate, loss) in engines.items():
            ratio = "" if name == "slm eval" else f"**{ours / rate:.2f}x**"
            lines.append(f"| {precision} | {name} | {rate:,.0f} | {ratio} | {loss:.4f} |")
    lines += ["", "`slm eval` and the trainer's evaluation run one implementation (`slmkit.eval.scoring` with the "
              "trainer's fused loss), so their ratio is 1 within the noise of a shared machine. The transformers "
              "loops make the full logits (50,257 per token) and take the cross-entropy on them in float32; "
              "slmkit's fused loss makes them a chunk of rows at a time with a compiled kernel, which is where "
              "most of the bf16 lead comes from. The first `slm eval` call of a process, loading included (it "
              "compiles that kernel once where the vocabulary is large): "
              + ", ".join(f"{p} {s:.1f} s" for p, s in first_call.items()) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
