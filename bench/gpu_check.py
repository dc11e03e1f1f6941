"""GPU readiness check (issue 14): training speed and MFU of gpt2-124m, and decode speed against
transformers, on one CUDA device, recorded in a JSON file (and docs/benchmarks.md with --write-docs).

Training: gpt2-124m from the preset, bf16 autocast, torch.compile, context 1024, built from the
trainer's own pieces (Transformer, setup_device, build_optimizer's fused AdamW, language_model_loss,
gradient clipping as the trainer clips); a few warm-up steps (the first one compiles), then timed
steps on synthetic token rows that a model can learn (so a loss that falls shows the step trains).
tokens/s comes from the median step; MFU is model FLOPs per token (slmkit.model.stats) times tokens/s
over the device's datasheet peak (slmkit.train.device.peak_flops), and also over the bf16 matmul
rate measured in the same run. Target: 45% MFU against the datasheet peak.

Decode: the same architecture with random weights in bf16, greedy, batch 1 and 8: slmkit's
`generate` eager and compiled (static cache) against transformers' `generate` on the model exported
by `slmkit.interop.hf.export_hf`, best of a few runs taken in turn.

--dry-run runs the same sequence on the CPU with a tiny model (the nano preset at context 64, a
few steps), so CI proves every piece but the device (tests/test_gpu_check.py). Without CUDA and
without --dry-run the script stops at once with exit status 2.

    python bench/gpu_check.py --json runs/gpu-check/gpu_check.json --write-docs    # on a GPU
    python bench/gpu_check.py --dry-run --json /tmp/gpu_check.json                 # on a CPU
    python bench/gpu_check.py --render runs/gpu-check/gpu_check.json --write-docs  # docs from a JSON

bench/gpu_check.sh runs the CUDA-marked tests first and then this script, in one go.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from slmkit.train.device import GPU_PEAK_TFLOPS  # noqa: E402
from slmkit.utils import write_json_atomic, write_text_atomic  # noqa: E402

BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"
DOCS_HEADING = "## GPU (issue 14)"
DOCS_BEGIN = "<!-- gpu-check results: begin (written by bench/gpu_check.py --write-docs) -->"
DOCS_END = "<!-- gpu-check results: end -->"
MFU_TARGET = 0.45  # issue 14's target for gpt2-124m (nanoGPT reaches about 30% on an A100, llm.c about 60%)
SCHEMA = 1


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What one check runs: the model, the training batch and steps, the decode lengths."""

    preset: str
    context: int
    batch: int  # sequences per training step (halved on CUDA out-of-memory, at most 3 times)
    warmup: int  # untimed steps first (the first compiles)
    steps: int  # timed steps
    prompt_tokens: int
    new_tokens: int
    repeats: int  # decode runs per engine and batch, taken in turn; the best counts
    matmul_size: int  # side of the square bf16 matmul timed for the measured peak


GPU_SIZES = Sizes(preset="gpt2-124m", context=1024, batch=32, warmup=5, steps=30, prompt_tokens=16,
                  new_tokens=128, repeats=3, matmul_size=8192)
DRY_RUN_SIZES = Sizes(preset="nano", context=64, batch=4, warmup=2, steps=4, prompt_tokens=8, new_tokens=12,
                      repeats=1, matmul_size=256)
DECODE_BATCHES = (1, 8)


class CheckError(Exception):
    """A problem the person running the check can fix (said in one line, no traceback)."""


# -- the peak a device's MFU is measured against -----------------------------------------------
def datasheet_peak(device_name: str, precision: str = "bf16") -> tuple[float | None, str]:
    """(dense peak FLOP/s, source) of a GPU named as torch.cuda.get_device_name names it, from
    slmkit.train.device's datasheet table (the same lookup as peak_flops: the first table key the
    name contains; TF32 at half the bf16 rate); (None, why) for a GPU the table does not know."""
    for key, tflops in GPU_PEAK_TFLOPS.items():
        if key in device_name:
            scale = 0.5 if precision == "fp32" else 1.0
            return tflops * 1e12 * scale, f"datasheet peak of the {key} ({precision})"
    return None, f"no datasheet peak known for {device_name!r}; pass --peak-tflops"


# -- environment ------------------------------------------------------------------------------
def environment(setup) -> dict:
    """What ran the check: device, versions, the fast-math switches in force."""
    info = {"device": str(setup.device), "description": setup.description, "precision": setup.precision,
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "platform": platform.platform()}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    if setup.device.type == "cuda":
        properties = torch.cuda.get_device_properties(setup.device)
        info.update(device_name=torch.cuda.get_device_name(setup.device), gpu_count=torch.cuda.device_count(),
                    capability=list(torch.cuda.get_device_capability(setup.device)),
                    memory_gib=round(properties.total_memory / 2**30, 1),
                    multiprocessors=properties.multi_processor_count,
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
                    flash_sdp_enabled=torch.backends.cuda.flash_sdp_enabled())
    else:
        info.update(device_name=platform.processor() or platform.machine(), gpu_count=0)
    return info


def flash_attention_works(setup, config) -> bool:
    """Whether SDPA's flash kernel runs the model's attention shapes (causal, head_dim, bf16)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dtype = setup.autocast_dtype or torch.float32
    shape = (1, config.n_heads, config.context_length, config.head_dim)
    q, k, v = (torch.randn(shape, device=setup.device, dtype=dtype) for _ in range(3))
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return True
    except RuntimeError:
        return False


# -- training ---------------------------------------------------------------------------------
def learnable_batches(vocab: int, count: int, batch: int, length: int, device, seed: int = 0):
    """`count` batches (x, y) of rows that count up by a row's own stride (1 to 4) from a random start,
    modulo the vocabulary: next-token prediction a model learns within a few dozen steps."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, vocab, (count, batch, 1), generator=generator)
    strides = torch.randint(1, 5, (count, batch, 1), generator=generator)
    rows = (starts + strides * torch.arange(length + 1)) % vocab
    rows = rows.to(device)
    return [(rows[i, :, :-1].contiguous(), rows[i, :, 1:].contiguous()) for i in range(count)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def check_training(setup, config, sizes: Sizes, compile: bool, peak: float | None, measured_peak: float | None) -> dict:
    """Train `config` for sizes.warmup + sizes.steps steps as the trainer does; tokens/s and MFU."""
    batch = sizes.batch
    notes = []
    while True:
        try:
            return _train_and_time(setup, config, sizes, batch, compile, peak, measured_peak, notes)
        except Exception as error:
            if not is_out_of_memory(error) or batch <= max(1, sizes.batch // 8):
                raise
            notes.append(f"batch {batch} ran out of device memory; halved")
            batch //= 2
            if setup.device.type == "cuda":
                torch.cuda.empty_cache()


def _train_and_time(setup, config, sizes: Sizes, batch: int, compile: bool, peak, measured_peak, notes) -> dict:
    from slmkit.model.stats import model_stats
    from slmkit.model.transformer import Transformer
    from slmkit.train.config import TrainConfig
    from slmkit.train.loss import language_model_loss
    from slmkit.train.optim import build_optimizer
    from slmkit.train.parallelize import compile_model

    torch.manual_seed(0)
    model = Transformer(config).to(setup.device).train()
    train_config = TrainConfig(lr=6e-4, weight_decay=0.1, grad_clip=1.0)
    optimizer = build_optimizer(model, train_config, setup.device.type)
    compiled = compile_model(model, compile)
    batches = learnable_batches(config.vocab_size, 4, batch, sizes.context, setup.device)
    record = {"model": sizes.preset, "parameters": model.num_parameters(), "precision": setup.precision,
              "compile": compile, "batch_size": batch, "seq_len": sizes.context,
              "tokens_per_step": batch * sizes.context, "warmup_steps": sizes.warmup, "timed_steps": sizes.steps,
              "optimizer": "fused AdamW" if all(g.get("fused") for g in optimizer.param_groups) else "AdamW",
              "notes": notes}

    def step(index: int) -> float:
        x, y = batches[index % len(batches)]
        with setup.autocast():
            loss = language_model_loss(compiled, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()  # the trainer reads every step's loss: a sync, as in a real run

    losses, seconds = [], []
    for index in range(sizes.warmup + sizes.steps):
        synchronize(setup.device)
        start = time.perf_counter()
        try:
            losses.append(step(index))
        except Exception as error:
            if index > 0 or compiled is model or is_out_of_memory(error):
                raise
            # as the trainer does: a compile that fails at the first step falls back to eager
            record["compile_error"] = f"{type(error).__name__}: {str(error)[:300]}"
            optimizer.zero_grad(set_to_none=True)
            compiled = model
            losses.append(step(index))
        synchronize(setup.device)
        seconds.append(time.perf_counter() - start)
        if index == 0:
            print(f"  first training step (compiles) {seconds[0]:.1f} s, loss {losses[0]:.3f}", flush=True)
    timed = seconds[sizes.warmup:]
    tokens = batch * sizes.context
    median, best = statistics.median(timed), min(timed)
    flops_per_token = model_stats(config, context=sizes.context).training_flops_per_token
    record.update(
        compiled=compiled is not model, first_step_seconds=round(seconds[0], 3),
        step_seconds=[round(s, 5) for s in timed], tokens_per_s=tokens / median, best_step_tokens_per_s=tokens / best,
        mean_tokens_per_s=tokens * len(timed) / sum(timed), flops_per_token=flops_per_token,
        model_tflops_per_s=tokens / median * flops_per_token / 1e12,
        losses=[round(v, 4) for v in losses], loss_fell=losses[-1] < losses[0],
    )
    record["mfu"] = record["tokens_per_s"] * flops_per_token / peak if peak else None
    record["mfu_vs_measured_matmul"] = record["tokens_per_s"] * flops_per_token / measured_peak if measured_peak else None
    record["mfu_target"] = MFU_TARGET
    record["target_met"] = record["mfu"] is not None and record["mfu"] >= MFU_TARGET
    if setup.device.type == "cuda":
        record["max_memory_gib"] = round(torch.cuda.max_memory_allocated(setup.device) / 2**30, 2)
    return record


# -- decoding ---------------------------------------------------------------------------------
def check_decode(setup, config, sizes: Sizes, compile: bool, workdir: Path) -> dict:
    """Greedy decode tokens/s at batch 1 and 8: slmkit (eager, and compiled) against transformers'
    generate on the exported model, same weights, same dtype, same device."""
    import transformers

    from slmkit.generate import GenerationConfig, generate
    from slmkit.interop.hf import export_hf
    from slmkit.model.checkpoint import save_model
    from slmkit.model.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(config).eval()
    save_model(model, workdir / "checkpoint")
    export_hf(workdir / "checkpoint", workdir / "hf")
    dtype = setup.autocast_dtype or torch.float32
    model = model.to(setup.device, dtype)
    hf = transformers.AutoModelForCausalLM.from_pretrained(workdir / "hf").to(setup.device, dtype).eval()
    generator = torch.Generator().manual_seed(1)
    prompts = torch.randint(3, config.vocab_size, (max(DECODE_BATCHES), sizes.prompt_tokens), generator=generator)
    greedy = GenerationConfig(temperature=0.0, ignore_eot=True)

    def slmkit_engine(compiled: bool):
        def run(batch: int, new: int):
            rows = prompts[:batch].tolist()
            generate(model, rows[0] if batch == 1 else rows, greedy, max_new_tokens=new, compile=compiled)
        return run

    def transformers_engine(batch: int, new: int):
        ids = prompts[:batch].to(setup.device)
        hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                    min_new_tokens=new, eos_token_id=None, pad_token_id=0)

    engines = {"slmkit": slmkit_engine(False)}
    if compile:
        engines["slmkit_compiled"] = slmkit_engine(True)
    engines["transformers"] = transformers_engine

    def timed(run, batch: int, new: int) -> float:
        synchronize(setup.device)
        start = time.perf_counter()
        run(batch, new)
        synchronize(setup.device)
        return time.perf_counter() - start

    record = {"model": sizes.preset, "dtype": str(dtype).removeprefix("torch."), "prompt_tokens": sizes.prompt_tokens,
              "new_tokens": sizes.new_tokens, "repeats": sizes.repeats, "warmup_seconds": {},
              "transformers_attention": getattr(hf.config, "_attn_implementation", None)}
    with torch.inference_mode():
        for name, run in engines.items():  # warm up every path (the compiled one compiles here)
            start = time.perf_counter()
            for batch in DECODE_BATCHES:
                run(batch, 3)
            record["warmup_seconds"][name] = round(time.perf_counter() - start, 2)
            print(f"  decode warm-up, {name}: {record['warmup_seconds'][name]:.1f} s", flush=True)
        rates = {name: {} for name in engines}
        for _ in range(sizes.repeats):  # in turn, so that other load hurts every engine alike
            for name, run in engines.items():
                for batch in DECODE_BATCHES:
                    # the first token (prefill) is timed apart and taken off: decode steps only
                    total, first = timed(run, batch, sizes.new_tokens), timed(run, batch, 1)
                    rate = batch * (sizes.new_tokens - 1) / max(total - first, 1e-9)
                    key = f"batch_{batch}"
                    rates[name][key] = max(rates[name].get(key, 0.0), rate)
        record["tokens_per_s"] = rates
        record["vs_transformers"] = {
            name: {key: value / rates["transformers"][key] for key, value in figures.items()}
            for name, figures in rates.items() if name != "transformers"}
        record.update(greedy_agreement(model, hf, prompts[0], setup.device, greedy))
    return record


def greedy_agreement(model, hf, prompt: torch.Tensor, device, greedy, new: int = 32) -> dict:
    """How many of the first `new` greedy tokens slmkit and transformers agree on (random weights make
    near-ties, which low precision may break either way: informative, not a failure)."""
    from slmkit.generate import generate

    ours = generate(model, prompt.tolist(), greedy, max_new_tokens=new).tokens
    ids = prompt[None].to(device)
    theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                         min_new_tokens=new, eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    agreed = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return {"greedy_tokens_equal": ours == theirs, "greedy_tokens_agreed": agreed, "greedy_tokens_compared": new}


# -- the run ----------------------------------------------------------------------------------
def pytest_summary(log: Path | None) -> str | None:
    """The closing line of a pytest log ("12 passed, 3 skipped in 80.1s"); None without a log."""
    if log is None or not log.is_file():
        return None
    for line in reversed(log.read_text(errors="replace").splitlines()):
        stripped = line.strip("= ").strip()
        if re.search(r"\b(passed|failed|skipped|error|errors|no tests ran)\b", stripped) and " in " in stripped:
            return stripped
    return f"no closing line in {log} (stopped by its timeout?)"


def run_check(args) -> dict:
    """Every phase of the check; a phase that fails is recorded in "errors" and the others still run."""
    from slmkit.config import load_model_config
    from slmkit.runtime import measure_matmul_peak
    from slmkit.train.device import configure_training_threads, peak_flops, setup_device

    sizes = DRY_RUN_SIZES if args.dry_run else GPU_SIZES
    sizes = dataclasses.replace(sizes, **{k: v for k, v in (("steps", args.steps), ("batch", args.batch)) if v})
    setup = setup_device("cpu" if args.dry_run else "cuda", args.precision)
    configure_training_threads("auto", setup.device)  # as the trainer sets them (OMP_NUM_THREADS wins)
    config = dataclasses.replace(load_model_config(preset=sizes.preset), context_length=sizes.context).validate()
    compile = not args.no_compile
    result = {"schema": SCHEMA, "dry_run": args.dry_run,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python bench/gpu_check.py " + " ".join(args.argv), "sizes": dataclasses.asdict(sizes),
              "environment": environment(setup), "cuda_tests": pytest_summary(args.pytest_log), "errors": {}}
    if args.peak_tflops:
        peak, source = args.peak_tflops * 1e12, "--peak-tflops"
    else:
        peak, source = peak_flops(setup)
    lookup = datasheet_peak(result["environment"]["device_name"], setup.precision) if setup.device.type == "cuda" else None
    result["peak"] = {"flops": peak, "source": source, "datasheet_lookup": lookup and {"flops": lookup[0], "source": lookup[1]}}
    start = time.perf_counter()
    measured = measure_matmul_peak(setup.autocast_dtype or torch.float32, str(setup.device), size=sizes.matmul_size,
                                   seconds=1.0 if setup.device.type == "cuda" else 0.2) * 1e9
    result["peak"]["measured_matmul_flops"] = measured
    print(f"device: {setup.description}; peak {_tflops(peak)} TFLOP/s ({source}); "
          f"measured {sizes.matmul_size}^3 matmul {measured / 1e12:.2f} TFLOP/s ({time.perf_counter() - start:.1f} s)",
          flush=True)
    result["flash_attention"] = flash_attention_works(setup, config)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as workdir:
        phases = [("training", lambda: check_training(setup, config, sizes, compile, peak, measured))]
        if not args.skip_decode:
            phases.append(("decode", lambda: check_decode(setup, config, sizes, compile, Path(workdir))))
        for name, phase in phases:
            start = time.perf_counter()
            print(f"{name} ...", flush=True)
            try:
                result[name] = phase()
            except Exception as error:  # record and go on: a short GPU window should yield what it can
                traceback.print_exc()
                result["errors"][name] = f"{type(error).__name__}: {str(error)[:500]}"
            result.setdefault("phase_seconds", {})[name] = round(time.perf_counter() - start, 1)
            if setup.device.type == "cuda":
                torch.cuda.empty_cache()
    return result


# -- the docs ---------------------------------------------------------------------------------
def render_results(result: dict) -> str:
    """The markdown results block of docs/benchmarks.md's GPU section, from a check's JSON."""
    env, peak = result["environment"], result["peak"]
    kind = "CPU dry run (not a GPU measurement)" if result.get("dry_run") else "GPU run"
    lines = [f"{kind}, {result['date']}: `{result['command']}`", "",
             f"- Machine: {env.get('device_name')} ({env.get('gpu_count', 0)} GPU(s), {env.get('memory_gib', '?')} GiB), "
             f"torch {env['torch']}, CUDA {env.get('cuda')}, transformers {env.get('transformers')}, "
             f"Python {env['python']}",
             f"- CUDA-marked tests (tests/test_cuda.py): {result.get('cuda_tests') or 'not run'}",
             f"- Peak for MFU: {_tflops(peak.get('flops'))} TFLOP/s ({peak.get('source')}); "
             f"bf16 matmul measured in this run: {_tflops(peak.get('measured_matmul_flops'))} TFLOP/s; "
             f"flash SDPA runs the model's attention: {result.get('flash_attention')}"]
    training = result.get("training")
    if training:
        mfu = training.get("mfu")
        verdict = ("met" if training.get("target_met") else "not met") if mfu is not None else "unknown (no peak)"
        lines += ["", "| training | value |", "|---|---|",
                  f"| model | {training['model']} ({training['parameters']:,} parameters), {training['precision']}, "
                  f"{'compiled' if training.get('compiled') else 'eager'}, {training['optimizer']} |",
                  f"| batch | {training['batch_size']} x {training['seq_len']} tokens, {training['warmup_steps']} warm-up "
                  f"+ {training['timed_steps']} timed steps |",
                  f"| tokens/s (median step) | {training['tokens_per_s']:,.0f} (best step {training['best_step_tokens_per_s']:,.0f}) |",
                  f"| MFU vs the peak above | **{_percent(mfu)}** (target {training['mfu_target']:.0%}: {verdict}) |",
                  f"| MFU vs the measured matmul | {_percent(training.get('mfu_vs_measured_matmul'))} |",
                  f"| first step (compiles) | {training['first_step_seconds']:.1f} s |",
                  f"| loss, first -> last step | {training['losses'][0]:.3f} -> {training['losses'][-1]:.3f} |"]
        if training.get("max_memory_gib") is not None:
            lines.append(f"| peak memory | {training['max_memory_gib']} GiB |")
        if training.get("compile_error"):
            lines.append(f"| compile | failed, ran eager: {training['compile_error'][:200]} |")
    decode = result.get("decode")
    if decode:
        lines += ["", f"Decode, greedy, {decode['model']} random weights in {decode['dtype']}, prompt "
                  f"{decode['prompt_tokens']} tokens, {decode['new_tokens']} new tokens, best of {decode['repeats']}:", "",
                  "| engine | batch 1, tokens/s | batch 8, tokens/s | warm-up s |", "|---|---:|---:|---:|"]
        for name, figures in decode["tokens_per_s"].items():
            ratios = decode["vs_transformers"].get(name, {})
            cells = [f"{figures[f'batch_{b}']:,.0f}" + (f" ({ratios[f'batch_{b}']:.2f}x)" if ratios else "")
                     for b in DECODE_BATCHES]
            lines.append(f"| {name.replace('_', ' ')} | {' | '.join(cells)} | {decode['warmup_seconds'][name]:.1f} |")
        lines += ["", f"Greedy tokens of slmkit and transformers agree on the first {decode['greedy_tokens_agreed']} "
                  f"of {decode['greedy_tokens_compared']}."]
    for name, error in result.get("errors", {}).items():
        lines.append(f"- **{name} failed**: {error}")
    return "\n".join(lines)


def _tflops(flops: float | None) -> str:
    return "?" if flops is None else f"{flops / 1e12:,.1f}"


def _percent(share: float | None) -> str:
    return "?" if share is None else f"{share:.1%}"


def write_docs(result: dict, path: Path = BENCHMARKS_MD) -> None:
    """Replace the results block (between the markers) of the GPU section of `path`; nothing else changes."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    begin, end = text.find(DOCS_BEGIN), text.find(DOCS_END)
    if begin < 0 or end < begin:
        raise CheckError(f"{path} has no GPU results block (the lines {DOCS_BEGIN!r} and {DOCS_END!r} in its "
                         f"{DOCS_HEADING!r} section); restore them from git and run again")
    new = text[:begin + len(DOCS_BEGIN)] + "\n" + render_results(result) + "\n" + text[end:]
    write_text_atomic(path, new)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the whole check on the CPU with a tiny model")
    parser.add_argument("--json", type=Path, default=ROOT / "runs" / "gpu-check" / "gpu_check.json",
                        help="where the results go (default runs/gpu-check/gpu_check.json)")
    parser.add_argument("--write-docs", nargs="?", const=BENCHMARKS_MD, type=Path, metavar="MARKDOWN",
                        help="also replace the results block of the GPU section (default docs/benchmarks.md)")
    parser.add_argument("--render", type=Path, metavar="JSON", help="measure nothing: write the docs from this JSON")
    parser.add_argument("--pytest-log", type=Path, help="the CUDA-marked tests' output, summarised in the results")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--steps", type=int, help="timed training steps (default 30; dry run 4)")
    parser.add_argument("--batch", type=int, help="sequences per training step (default 32; dry run 4)")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense peak, for a GPU the table does not know")
    parser.add_argument("--no-compile", action="store_true", help="eager training and decoding")
    parser.add_argument("--skip-decode", action="store_true")
    args = parser.parse_args(argv)
    args.argv = list(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.render:
            try:
                result = json.loads(args.render.read_text())
            except ValueError as error:
                raise CheckError(f"{args.render} is not a gpu_check JSON ({error})") from None
        else:
            if not args.dry_run and not torch.cuda.is_available():
                raise CheckError(f"CUDA is not available (torch {torch.__version__}, built for CUDA "
                                 f"{torch.version.cuda}): run this on a CUDA machine with a CUDA build of PyTorch, "
                                 f"or use --dry-run for the CPU rehearsal")
            if args.dry_run and args.write_docs and args.write_docs.resolve() == BENCHMARKS_MD.resolve():
                raise CheckError("--dry-run measures a CPU, not a GPU: it does not write docs/benchmarks.md "
                                 "(give --write-docs another file)")
            result = run_check(args)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(args.json, result)
            print(f"results: {args.json}")
        if args.write_docs:
            write_docs(result, args.write_docs)
            print(f"updated {args.write_docs}")
    except (CheckError, OSError) as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return 2
    print(render_results(result))
    return 1 if result.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
