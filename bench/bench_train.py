"""Training throughput: slmkit against Hugging Face transformers and a nanoGPT-style peer on the
same config and batch.

One invocation measures forward + backward + AdamW step tokens/s, and MFU against the matmul peak
measured in the same run, for
  - slmkit (slm-25m preset, Llama style) vs LlamaForCausalLM with the same config,
  - slmkit GPT-2 style (d 384, 6 layers, 32K vocab, ~23M) vs GPT2LMHeadModel with the same config
    and vs a nanoGPT-style GPT-2 of the same config (bench/peers/nanogpt_style.py, our
    re-implementation after nanoGPT's model.py, proved equal to slmkit's model by
    tests/test_bench_nanogpt_style.py),
in fp32 and bf16 autocast, eager and torch.compile, at batch 16 x 256 on random tokens (or windows
of a prepared dataset with --data).

Each case runs in its own process, so no case inherits another's compiled code, allocator state
or memory fragmentation. The cases compared with each other (same family, precision and mode) are
warmed up one after the other, then take turns step by step (ABBA order), so a change in the
machine's load hits them alike and their ratio holds on a busy machine.

Each side runs as its user gets it out of the box: slmkit as its trainer runs it (fused chunked
cross-entropy, plain attention on CPU bf16, `slmkit.runtime.tune_allocator`), Hugging Face with
its defaults (SDPA, full logits, glibc's default allocator). `--hf-allocator tuned` (or `both`)
also gives Hugging Face slmkit's allocator setting; `--ablations allocator,attention,loss` adds
slmkit runs with one of its speed-ups turned off, to measure what each brings. The nanoGPT-style
peer runs as nanoGPT's train.py runs it (full logits and F.cross_entropy, SDPA) with the glibc
tuning of issue 4 set in its environment (`MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000
MALLOC_TOP_PAD_=1073741824`): "nanoGPT's best tuned" figure, measured here in the same run;
`--nanogpt-allocator both` also runs it with glibc's defaults.

Each side uses the optimizer it uses out of the box, all AdamW (lr 3e-4, betas 0.9/0.95, weight
decay 0.1): slmkit its trainer's `slmkit.train.optim.build_optimizer` (fused kernel on CPU, decay
on matrices only); Hugging Face the Trainer's default with torch >= 2.8, "adamw_torch_fused"
(torch.optim.AdamW(fused=True)); nanoGPT-style nanoGPT's `configure_optimizers` (decay on 2-D
parameters, fused only on CUDA, so PyTorch's default for-loop AdamW on CPU). The implementation
each case ran is recorded in its result ("optimizer").

    .venv/bin/python bench/bench_train.py                       # everything, ~10 min on 2 cores
    .venv/bin/python bench/bench_train.py --families llama --precisions bf16 --modes compile
    .venv/bin/python bench/bench_train.py --write-docs          # also update docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: benchdocs, peers

from benchdocs import write_section  # noqa: E402

NANOGPT_BEST_TUNED = 4159  # tokens/s, nanoGPT compiled bf16 with a tuned allocator on issue 4's CPU
NANOGPT_BEST_TUNED_MFU = 0.64  # the same figure as a share of that CPU's measured bf16 matmul peak
# glibc tuning of issue 4 for nanoGPT: keep freed activations in the heap instead of unmapping them
NANOGPT_TUNED_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000",
                     "MALLOC_TOP_PAD_": "1073741824"}
DOCS_SECTION = "## Training"


# -- configs ----------------------------------------------------------------------------------
def model_config(family: str, seq: int):
    """The slmkit ModelConfig of a benchmark family: slm-25m, or a GPT-2 of the same size."""
    from slmkit.config import load_model_config
    from slmkit.model.config import ModelConfig

    if family == "llama":
        return load_model_config(preset="slm-25m")
    return ModelConfig(
        name="gpt2-23m", family="gpt2", vocab_size=32000, context_length=max(seq, 256), n_layers=6, d_model=384,
        n_heads=6, mlp="gelu", d_mlp=1536, norm="layernorm", norm_bias=True, position="learned",
        attention_bias=True, mlp_bias=True, tie_embeddings=True,
    )


def build_model(family: str, impl: str, seq: int):
    import torch

    config = model_config(family, seq)
    torch.manual_seed(0)
    if impl == "slmkit":
        from slmkit.model.transformer import Transformer

        return Transformer(config), config
    if impl == "nanogpt":
        from peers import nanogpt_style

        return nanogpt_style.GPT(nanogpt_style.config_from_slmkit(config)), config
    import transformers

    from slmkit.interop.hf_config import config_to_hf

    hf = config_to_hf(config)
    if family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf))
    else:
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf))
    return model, config


# -- one case, in a worker process ------------------------------------------------------------
def serve_case(case: dict, args) -> None:
    """Build one case, then answer the driver: "step" runs one timed training step, "quit" reports."""
    import torch

    from slmkit import runtime

    ablation = case.get("ablation")  # one slmkit speed-up turned off, to measure what it brings
    if case["allocator"] == "tuned" and not case.get("env"):  # else the environment tunes glibc
        runtime.tune_allocator()
    if ablation == "attention":
        from slmkit.model import layers

        layers.plain_attention_is_faster = lambda q, k: False
    model, config = build_model(case["family"], case["impl"], args.seq)
    model.train()
    optimizer = optimizer_for(model, case["impl"])
    batches = token_batches(args, config.vocab_size)
    compiled = torch.compile(model) if case["mode"] == "compile" else model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=case["precision"] == "bf16")

    if case["impl"] == "slmkit" and ablation == "loss":
        def loss_of(inputs, targets):  # full float32 logits, then F.cross_entropy
            logits = compiled(inputs).float()
            return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    elif case["impl"] == "slmkit":
        from slmkit.train.loss import language_model_loss

        def loss_of(inputs, targets):
            return language_model_loss(compiled, inputs, targets)
    elif case["impl"] == "nanogpt":
        def loss_of(inputs, targets):  # full logits, then F.cross_entropy inside the model
            return compiled(inputs, targets)[1]
    else:
        def loss_of(inputs, targets):  # HF shifts the labels itself; the last position is ignored
            return compiled(input_ids=inputs, labels=inputs).loss

    def step():
        inputs, targets = next(batches)
        with autocast:
            loss = loss_of(inputs, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    print("READY", flush=True)
    times, losses = [], []
    for line in sys.stdin:
        if line.strip() != "step":
            break
        start = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - start)
        print(f"STEP {times[-1]:.6f}", flush=True)
    result = {**case, "step_seconds": times, "optimizer": optimizer_kind(optimizer),
              "losses": losses, "threads": torch.get_num_threads(),
              "parameters": sum(p.numel() for p in model.parameters())}
    print("RESULT " + json.dumps(result), flush=True)


def optimizer_for(model, impl: str):
    """The AdamW each side uses out of the box, with the same learning rate, betas and weight decay."""
    import torch

    if impl == "slmkit":
        from slmkit.train import optim
        from slmkit.train.config import TrainConfig

        return optim.build_optimizer(model, TrainConfig(lr=3e-4, weight_decay=0.1), "cpu")
    if impl == "nanogpt":
        return model.configure_optimizers(weight_decay=0.1, learning_rate=3e-4, betas=(0.9, 0.95), device_type="cpu")
    # Hugging Face Trainer's default optimizer with torch >= 2.8: "adamw_torch_fused"
    return torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)


def optimizer_kind(optimizer) -> str:
    """Which AdamW implementation runs: "fused", "foreach" or "for-loop" (PyTorch's default on CPU,
    where it picks foreach only for CUDA-like devices)."""
    groups = optimizer.param_groups
    if all(g.get("fused") for g in groups):
        return "fused"
    if all(g.get("foreach") for g in groups):
        return "foreach"
    if any(g.get("fused") or g.get("foreach") for g in groups):
        return "mixed"
    return "for-loop"


class Worker:
    """A case's process, stepped on command so that cases can take turns step by step."""

    def __init__(self, case: dict, args):
        self.case, self.error, self.tokens = case, None, args.batch * args.seq
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(case),
                   "--batch", str(args.batch), "--seq", str(args.seq)]
        if args.data:
            command += ["--data", str(args.data)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc defaults
        env.update(case.get("env", {}))  # a case's own allocator tuning (nanoGPT's, by environment)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=env)
        self._expect("READY")

    def _expect(self, word: str) -> str | None:
        if self.error:
            return None
        for line in self.process.stdout:
            if line.startswith(word):
                return line[len(word):].strip()
        self.error = " | ".join(self.process.stderr.read().strip().splitlines()[-3:]) or "worker exited"
        return None

    def step(self) -> float | None:
        if self.error:
            return None
        try:
            self.process.stdin.write("step\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            self.error = "worker exited"
            return None
        answer = self._expect("STEP")
        return float(answer) if answer is not None else None

    def finish(self, warmup: int) -> dict:
        if not self.error:
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
            answer = self._expect("RESULT")
        self.process.wait()
        if self.error:
            return {**self.case, "error": self.error}
        result = json.loads(answer)
        times = result["step_seconds"]
        timed = times[warmup:]
        median = statistics.median(timed)
        result.update(tokens_per_second=self.tokens / median, step_ms=median * 1000,
                      best_tokens_per_second=self.tokens / min(timed), first_step_s=times[0],
                      warmup_s=sum(times[:warmup]))
        return result


def token_batches(args, vocab_size: int):
    """Endless (inputs, targets) batches of shape (batch, seq): random tokens or dataset windows."""
    import numpy as np
    import torch

    generator = torch.Generator().manual_seed(0)
    if args.data is None:
        while True:
            tokens = torch.randint(0, vocab_size, (args.batch, args.seq + 1), generator=generator)
            yield tokens[:, :-1], tokens[:, 1:]
    data_dir = Path(args.data)
    meta = json.loads((data_dir / "meta.json").read_text())
    dtype = np.dtype(meta.get("dtype", "uint16"))
    data = np.memmap(data_dir / "train.bin", dtype=dtype, mode="r")
    if int(meta.get("vocab_size", 0)) > vocab_size:
        raise SystemExit(f"{data_dir} has a vocab of {meta['vocab_size']} tokens; the benchmark models have "
                         f"{vocab_size}. Prepare a dataset with a tokenizer of at most {vocab_size} tokens.")
    while True:
        starts = torch.randint(0, len(data) - args.seq - 1, (args.batch,), generator=generator).tolist()
        tokens = torch.from_numpy(np.stack([data[s:s + args.seq + 1].astype(np.int64) for s in starts]))
        yield tokens[:, :-1], tokens[:, 1:]


# -- the driver -------------------------------------------------------------------------------
def case_groups(args) -> list[list[dict]]:
    """Cases that are compared with each other (same family, precision, mode), to be run in turns."""
    choices = {"default": ["default"], "tuned": ["tuned"], "both": ["default", "tuned"]}
    hf_allocators, nanogpt_allocators = choices[args.hf_allocator], choices[args.nanogpt_allocator]
    groups = []
    for family in args.families:
        for precision in args.precisions:
            for mode in args.modes:
                group = []
                ablated = f"{family}/{precision}/{mode}" in args.ablate_in
                for impl in args.impls:
                    if impl == "nanogpt" and family != "gpt2":
                        continue  # nanoGPT's model is a GPT-2; there is no nanoGPT Llama
                    allocators = {"slmkit": ["tuned"], "hf": hf_allocators, "nanogpt": nanogpt_allocators}[impl]
                    if impl == "hf" and ablated and "allocator" in args.ablations and "tuned" not in allocators:
                        allocators = allocators + ["tuned"]  # the allocator's effect on the peer too
                    for allocator in allocators:
                        case = {"family": family, "impl": impl, "precision": precision, "mode": mode,
                                "allocator": allocator}
                        if impl == "nanogpt" and allocator == "tuned":
                            case["env"] = NANOGPT_TUNED_ENV
                        group.append(case)
                    if impl != "slmkit" or not ablated:
                        continue
                    for ablation in args.ablations:
                        group.append({"family": family, "impl": impl, "precision": precision, "mode": mode,
                                      "allocator": "default" if ablation == "allocator" else "tuned",
                                      "ablation": ablation})
                groups.append(group)
    return groups


def run_group(group: list[dict], args) -> list[dict]:
    """Warm each case up in turn, then step them in turns (ABBA order), so that a change in the
    machine's load during the group hits every case alike."""
    workers = []
    for case in group:
        worker = Worker(case, args)
        for _ in range(args.warmup):
            worker.step()
        workers.append(worker)
    for round_index in range(args.steps):
        for worker in workers if round_index % 2 == 0 else workers[::-1]:
            worker.step()
    return [worker.finish(args.warmup) for worker in workers]


def measure_peaks() -> dict:
    import torch

    from slmkit.runtime import measure_matmul_peak

    return {"fp32": measure_matmul_peak(torch.float32, "cpu", seconds=1.0),
            "bf16": measure_matmul_peak(torch.bfloat16, "cpu", seconds=1.0)}


def add_ratios_and_mfu(results: list[dict], peaks: dict, seq: int) -> None:
    from slmkit.model.stats import model_stats

    for r in results:
        if "error" in r:
            continue
        flops = model_stats(model_config(r["family"], seq), context=seq).training_flops_per_token
        r["mfu"] = r["tokens_per_second"] * flops / (peaks[r["precision"]] * 1e9)
        r["model_gflop_per_s"] = r["tokens_per_second"] * flops / 1e9
    for r in results:
        if r["impl"] != "slmkit" or "error" in r:
            continue
        for peer in results:
            same = all(peer[k] == r[k] for k in ("family", "precision", "mode")) and "error" not in peer
            if same and peer["impl"] == "hf":
                r[f"vs_hf_{peer['allocator']}"] = r["tokens_per_second"] / peer["tokens_per_second"]
            if same and peer["impl"] == "nanogpt" and peer["allocator"] == "tuned":
                r["vs_nanogpt_tuned"] = r["tokens_per_second"] / peer["tokens_per_second"]
            if same and peer["impl"] == "slmkit" and not peer.get("ablation") and r.get("ablation"):
                r["gain"] = peer["tokens_per_second"] / r["tokens_per_second"]


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    import transformers

    return {"cpu": cpu, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg())}


NAMES = {("llama", "slmkit"): "slmkit slm-25m", ("llama", "hf"): "HF LlamaForCausalLM",
         ("gpt2", "slmkit"): "slmkit GPT-2 23M", ("gpt2", "hf"): "HF GPT2LMHeadModel",
         ("gpt2", "nanogpt"): "nanoGPT-style GPT-2 23M"}


ABLATION_NAMES = {"allocator": ", glibc default allocator", "attention": ", SDPA attention",
                  "loss": ", full-logits cross-entropy"}


def table(results: list[dict]) -> str:
    lines = ["| model | precision | mode | allocator | tokens/s | best step, tokens/s | MFU | vs HF (default alloc.) "
             "| vs HF (tuned alloc.) | vs nanoGPT-style (tuned) | full slmkit / this | first step s |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        name = NAMES[(r["family"], r["impl"])] + (ABLATION_NAMES[r["ablation"]] if r.get("ablation") else "")
        if "error" in r:
            lines.append(f"| {name} | {r['precision']} | {r['mode']} | {r['allocator']} | failed: "
                         f"{r['error'][:120]} | | | | | | | |")
            continue
        ratio = {k: f"{r[k]:.2f}x" if k in r else ""
                 for k in ("vs_hf_default", "vs_hf_tuned", "vs_nanogpt_tuned", "gain")}
        lines.append(
            f"| {name} | {r['precision']} | {r['mode']} | {r['allocator']} | {r['tokens_per_second']:,.0f} "
            f"| {r['best_tokens_per_second']:,.0f} | {100 * r['mfu']:.1f}% | {ratio['vs_hf_default']} | {ratio['vs_hf_tuned']} "
            f"| {ratio['vs_nanogpt_tuned']} | {ratio['gain']} | {r['first_step_s']:.1f} |")
    return "\n".join(lines)


def same_group(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in ("family", "precision", "mode"))


def nanogpt_comparison(results: list[dict], peaks: dict, seq: int) -> str:
    """The summary under the table: slmkit GPT-2 23M's best figure against the nanoGPT-style peer
    (tuned allocator) of the same group, MFU against issue 4's 64%, and what issue 4's absolute
    4,159 tokens/s would mean on this machine."""
    from slmkit.model.stats import model_stats

    measured = [r for r in results if "error" not in r and not r.get("ablation") and r["family"] == "gpt2"]
    ours = [r for r in measured if r["impl"] == "slmkit" and "vs_nanogpt_tuned" in r]
    peers = [r for r in measured if r["impl"] == "nanogpt" and r["allocator"] == "tuned"]
    lines = []
    if ours:
        top = max(ours, key=lambda r: r["tokens_per_second"])
        peer = next(p for p in peers if same_group(p, top))
        verdict = "is at or above" if top["tokens_per_second"] >= peer["tokens_per_second"] else "is below"
        lines.append(
            f"Best slmkit GPT-2 23M figure: {top['tokens_per_second']:,.0f} tokens/s ({top['precision']}, "
            f"{top['mode']}); it {verdict} the nanoGPT-style peer with issue 4's tuned allocator measured in the "
            f"same run, same precision and mode ({peer['tokens_per_second']:,.0f} tokens/s): "
            f"{top['vs_nanogpt_tuned']:.2f}x.")
    ours_bf16 = next((r for r in ours if (r["precision"], r["mode"]) == ("bf16", "compile")), None)
    if ours_bf16:
        peer = next(p for p in peers if same_group(p, ours_bf16))
        lines.append(
            f"Issue 4 measured nanoGPT compiled bf16 at {NANOGPT_BEST_TUNED_MFU:.0%} of its CPU's bf16 matmul peak "
            f"(tuned allocator); here, compiled bf16, the nanoGPT-style peer (tuned allocator) reaches "
            f"{peer['mfu']:.0%} MFU and slmkit GPT-2 23M {ours_bf16['mfu']:.0%}.")
    flops = model_stats(model_config("gpt2", seq), context=seq).training_flops_per_token
    needed = NANOGPT_BEST_TUNED * flops / 1e9
    lines.append(
        f"Issue 4's absolute figure, {NANOGPT_BEST_TUNED:,} tokens/s for nanoGPT compiled bf16 on its CPU, does "
        f"not carry across machines: at {flops / 1e6:.0f} MFLOP per token it means {needed:.0f} GFLOP/s, "
        f"{needed / peaks['bf16']:.0%} of the bf16 matmul peak measured in this run.")
    return " ".join(lines) + "\n\n"


def optimizers_used(results: list[dict]) -> str:
    """Which AdamW implementation each side ran, from the results ("fused", "for-loop", ...)."""
    described = {"slmkit": "slmkit its trainer's `build_optimizer` (decay on matrices only)",
                 "hf": "Hugging Face the Trainer's default with torch >= 2.8, `adamw_torch_fused`",
                 "nanogpt": "nanoGPT-style nanoGPT's `configure_optimizers` (decay on 2-D parameters, "
                            "fused only on CUDA)"}
    parts = []
    for impl, text in described.items():
        kinds = sorted({r["optimizer"] for r in results if r["impl"] == impl and "optimizer" in r})
        if kinds:
            parts.append(f"{text} (ran: {' and '.join(kinds)})")
    return "; ".join(parts)


def docs_section(results, peaks, info, args, command: str, started: str, elapsed: float) -> str:
    best_line = nanogpt_comparison(results, peaks, args.seq)
    data = f"windows of `{args.data}`" if args.data else "random tokens"
    return (
        f"{DOCS_SECTION}\n\n"
        f"Forward + backward + AdamW step, batch {args.batch} x {args.seq} tokens, {data}; "
        f"{args.warmup} warm-up steps, then {args.steps} timed steps per case; tokens/s, MFU and the ratios come "
        f"from the median step, \"best step\" from the fastest (the least disturbed by other load). Each case "
        f"runs in its own process; the cases of one row group take turns step by step, so their ratios hold "
        f"under load. slmkit runs as its trainer runs (fused chunked cross-entropy, plain attention on CPU "
        f"bf16, glibc allocator tuned by `slmkit.runtime.tune_allocator`); Hugging Face runs with its defaults "
        f"(SDPA attention, full logits, glibc's default allocator) and, where shown, with slmkit's allocator "
        f"setting too. The nanoGPT-style GPT-2 (bench/peers/nanogpt_style.py, our re-implementation after "
        f"nanoGPT's model.py, equal to slmkit's GPT-2 by tests/test_bench_nanogpt_style.py) runs as nanoGPT's "
        f"train.py runs it (SDPA attention, full logits and F.cross_entropy) with issue 4's glibc tuning "
        f"(`MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 MALLOC_TOP_PAD_=1073741824`) unless its "
        f"allocator reads default. Each side uses the AdamW it uses out of the box (lr 3e-4, betas 0.9/0.95, "
        f"weight decay 0.1): {optimizers_used(results)}. MFU is model FLOPs (6N + attention, "
        f"`slmkit.model.stats`) over the fastest 2048^3 matmul measured in the same run: fp32 "
        f"{peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s. \"First step\" includes compilation."
        f"\n\n"
        f"- Machine: {info['cpu']}, {info['cores']} cores (AVX512-BF16: {info['avx512_bf16']}), "
        f"torch {info['torch']}, transformers {info['transformers']}, Python {info['python']}, "
        f"{info['threads']} threads\n"
        f"- Date: {started} UTC; {elapsed / 60:.1f} min; load average (1, 5, 15 min) at the start "
        f"{info['load_before']}, at the end {info['load_average']}\n"
        f"- Command: `{command}`\n\n"
        f"{table(results)}\n\n{best_line}"
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", type=lambda s: s.split(","), default=["llama", "gpt2"],
                        help="comma list of: llama (slm-25m), gpt2")
    parser.add_argument("--impls", type=lambda s: s.split(","), default=["slmkit", "hf", "nanogpt"],
                        help="comma list of: slmkit, hf, nanogpt (the nanoGPT-style peer; gpt2 family only)")
    parser.add_argument("--precisions", type=lambda s: s.split(","), default=["bf16", "fp32"])
    parser.add_argument("--modes", type=lambda s: s.split(","), default=["compile", "eager"])
    parser.add_argument("--hf-allocator", choices=["default", "tuned", "both"], default="default")
    parser.add_argument("--nanogpt-allocator", choices=["default", "tuned", "both"], default="tuned",
                        help="glibc tuning of the nanoGPT-style peer: issue 4's MALLOC_* variables (tuned), "
                             "glibc's defaults, or both")
    parser.add_argument("--ablations", type=lambda s: [a for a in s.split(",") if a], default=[],
                        help="also run slmkit with one speed-up off, each of: allocator, attention, loss")
    parser.add_argument("--ablate-in", type=lambda s: s.split(","), default=["llama/bf16/compile"],
                        help="the family/precision/mode groups that get the ablation runs")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation happens here)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps; the median is reported")
    parser.add_argument("--data", default=None, help="a prepared dataset directory (train.bin, meta.json)")
    parser.add_argument("--write-docs", action="store_true", help="update the Training section of docs/benchmarks.md")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, allowed in (("families", {"llama", "gpt2"}), ("impls", {"slmkit", "hf", "nanogpt"}),
                          ("precisions", {"fp32", "bf16"}), ("modes", {"eager", "compile"}),
                          ("ablations", {"allocator", "attention", "loss"})):
        wrong = set(getattr(args, name)) - allowed
        if wrong:
            parser.error(f"--{name}: unknown {sorted(wrong)}; choose from {sorted(allowed)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        sys.path.insert(0, str(ROOT))
        serve_case(json.loads(args.worker), args)
        return
    sys.path.insert(0, str(ROOT))
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    clock = time.perf_counter()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average before: {load_before}", flush=True)
    peaks = measure_peaks()
    print(f"measured matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s", flush=True)
    results = []
    for group in case_groups(args):
        for result in run_group(group, args):
            results.append(result)
            label = " ".join(str(result.get(k) or "") for k in
                             ("family", "impl", "precision", "mode", "allocator", "ablation"))
            shown = result.get("error") or (f"{result['tokens_per_second']:,.0f} tokens/s "
                                            f"(first step {result['first_step_s']:.1f} s)")
            print(f"{label:40s} {shown}", flush=True)
    add_ratios_and_mfu(results, peaks, args.seq)
    info = {**machine(), "load_before": load_before}
    print()
    print(table(results))
    command = "python bench/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = docs_section(results, peaks, info, args, command.strip(), started, time.perf_counter() - clock)
    if args.json:
        Path(args.json).write_text(json.dumps({"peaks": peaks, "machine": info, "results": results}, indent=1))
    if args.write_docs:
        write_section(section)
        print(f"\nwrote the {DOCS_SECTION!r} section of docs/benchmarks.md")


if __name__ == "__main__":
    main()
