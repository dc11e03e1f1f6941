"""report.md: what was trained, on what, how well, how fast, and what to distrust.

Built from the run directory alone (config.json, metrics.jsonl, samples.md), so `slm report RUN`
can rebuild it at any time, also for an interrupted run.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from slmkit.report.plots import plot_eval, plot_loss_and_lr, plot_throughput
from slmkit.rundir import read_metrics, read_run_config
from slmkit.utils import format_duration, format_number, write_text_atomic


def build_report(run_dir: str | Path) -> str:
    """The markdown text of the report of `run_dir` (plots are referenced, not drawn)."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    events = read_metrics(run_dir)
    train = [e for e in events if e["event"] == "train"]
    evals = [e for e in events if e["event"] == "eval"]
    warnings = [e for e in events if e["event"] == "warning"]
    ends = [e for e in events if e["event"] in ("end", "interrupted", "stopped")]
    model, train_config, data = config["model"], config["train"], config["data"]

    last_step = max((e["step"] for e in train + evals), default=0)
    tokens = max((e.get("tokens", 0) for e in train + evals), default=0)
    wall = max((e.get("time", 0.0) for e in events), default=None)
    rates = [e["tokens_per_s"] for e in train[1:] if e.get("tokens_per_s")]  # the first includes start-up
    mfus = [e["mfu"] for e in train[1:] if e.get("mfu") is not None]
    if mfus:
        source = config.get("peak_flops_source")
        mfu_text = f"{100 * statistics.median(mfus):.1f}%" + (f" (peak: {source})" if source else "")
    else:
        mfu_text = "n/a (peak FLOP/s of this device unknown; set train.peak_tflops)"
    best = min(evals, key=lambda e: e["val_loss"]) if evals else None
    final = evals[-1] if evals else None
    status = ends[-1]["event"] if ends else "running or killed"
    if ends and ends[-1]["event"] == "end":
        status = f"finished ({ends[-1].get('reason', '')})"
    elif ends:
        status = f"{ends[-1]['event']} ({ends[-1].get('reason', '')})"

    splits = data.get("splits") or {}
    tokenizer = data.get("tokenizer") or {}
    name = model.get("name") or run_dir.name
    lines = [f"# Training report: {run_dir.name}", ""]
    lines += ["| | |", "|---|---|",
              f"| status | {status} |",
              f"| data | `{data.get('path')}` |",
              f"| tokenizer | {tokenizer.get('name', 'n/a')} ({data.get('vocab_size'):,} tokens) |"
              if data.get("vocab_size") else f"| tokenizer | {tokenizer.get('name', 'n/a')} |"]
    for split in ("train", "val"):
        info = splits.get(split) or {}
        if info:
            lines.append(f"| {split} split | {info.get('tokens', 0):,} tokens, {info.get('documents', 0):,} documents, "
                         f"{info.get('bytes', 0):,} bytes |")
    lines += [
        f"| model | {name} ({model.get('family')}): {model.get('n_layers')} layers, d_model {model.get('d_model')}, "
        f"{model.get('n_heads')} heads / {model.get('n_kv_heads')} KV heads, context {model.get('context_length')} |",
        f"| parameters | {config.get('parameters', 0):,} |",
        f"| optimizer | {train_config.get('optimizer')} (lr {train_config.get('lr')}, {train_config.get('schedule')} "
        f"schedule, warmup {train_config.get('warmup_steps')}, weight decay {train_config.get('weight_decay')}) |",
        f"| batch | {config.get('tokens_per_step', 0):,} tokens per step ({train_config.get('batch_size')} x "
        f"{config.get('seq_len')} x {train_config.get('grad_accum')} accumulation x {config.get('world_size')} "
        f"process{'es' if config.get('world_size', 1) > 1 else ''}) |",
        f"| steps | {last_step:,} of {train_config.get('max_steps'):,} |" if not train_config.get("time_budget") else
        f"| steps | {last_step:,} (time budget {format_duration(train_config['time_budget'])}) |",
        f"| tokens seen | {tokens:,} |",
        f"| wall time | {format_duration(wall)} |",
        f"| device | {config.get('device')}, {config.get('precision')}"
        f"{', compiled' if config.get('compile') else ''} |",
        f"| throughput | {format_number(statistics.median(rates), 0) if rates else 'n/a'} tokens/s (median) |",
        f"| MFU | {mfu_text} |",
    ]
    if config.get("init_from"):
        lines.append(f"| initialised from | `{config['init_from']}` |")
    lines.append("")
    if final:
        lines += ["## Results", "", "| | loss (nats) | perplexity | bits per byte | step |", "|---|---|---|---|---|",
                  f"| final validation | {format_number(final['val_loss'])} | {format_number(final['val_ppl'], 2)} | "
                  f"{format_number(final.get('val_bpb'))} | {final['step']:,} |",
                  f"| best validation | {format_number(best['val_loss'])} | {format_number(best['val_ppl'], 2)} | "
                  f"{format_number(best.get('val_bpb'))} | {best['step']:,} |",
                  f"| final training sample | {format_number(final['train_loss'])} | {format_number(final['train_ppl'], 2)} | "
                  f"{format_number(final.get('train_bpb'))} | {final['step']:,} |"]
        ema = [e for e in evals if e.get("ema_val_loss") is not None]  # train.ema_decay: checkpoints/ema/
        if ema:
            best_ema = min(ema, key=lambda e: e["ema_val_loss"])
            lines += [f"| final validation, EMA weights | {format_number(ema[-1]['ema_val_loss'])} | "
                      f"{format_number(ema[-1]['ema_val_ppl'], 2)} | {format_number(ema[-1].get('ema_val_bpb'))} | "
                      f"{ema[-1]['step']:,} |",
                      f"| best validation, EMA weights | {format_number(best_ema['ema_val_loss'])} | "
                      f"{format_number(best_ema['ema_val_ppl'], 2)} | {format_number(best_ema.get('ema_val_bpb'))} | "
                      f"{best_ema['step']:,} |"]
        lines.append("")
        lines += ["Bits per byte divide the loss by ln 2 and by the split's bytes per token, so models with "
                  "different tokenizers compare fairly. The training sample is a fixed sample of the training "
                  "split of the same size as the validation sample.", ""]
    lines += _finetune_section(run_dir)
    lines += ["## Warnings", ""]
    if warnings:
        lines += [f"- **{w['kind']}**: {w['message']}" for w in warnings]
    else:
        lines.append("None: no widening train/val gap, no validation loss below training loss, no near-zero loss.")
    lines.append("")
    lines += ["## Plots", "", "![training loss and learning rate](plots/loss.png)", "",
              "![evaluation loss and perplexity](plots/eval.png)", "", "![throughput](plots/throughput.png)", ""]
    if evals:
        lines += ["## Evaluations", "",
                  "| step | tokens | val loss | val ppl | val bpb | train loss | gap (val - train) |",
                  "|---|---|---|---|---|---|---|"]
        for e in evals:
            lines.append(f"| {e['step']:,} | {e.get('tokens', 0):,} | {format_number(e['val_loss'])} | "
                         f"{format_number(e['val_ppl'], 2)} | {format_number(e.get('val_bpb'))} | {format_number(e['train_loss'])} | "
                         f"{format_number(e['val_loss'] - e['train_loss'])} |")
        lines.append("")
    samples = run_dir / "samples.md"
    if samples.is_file():
        text = samples.read_text()
        body = text.split("\n", 1)[1] if text.startswith("# ") else text
        lines += ["## Samples", "", body.replace("\n## ", "\n### ").strip(), ""]
    return "\n".join(lines)


def _finetune_section(run_dir: Path) -> list[str]:
    """A fine-tune's before/after figures and its data counts (from finetune.json), or nothing."""
    try:
        summary = json.loads((run_dir / "finetune.json").read_text())
    except (OSError, ValueError):
        return []
    lines = ["## Fine-tune", "", f"Base `{summary.get('base')}`, rows `{summary.get('rows')}`"
             + (f", LoRA rank {summary['lora']['rank']} on {', '.join(summary['lora']['targets'])}"
                if summary.get("lora") else ", all weights") + ".", "",
             "| held-out responses | loss (nats) | bits per byte |", "|---|---|---|",
             f"| base model | {format_number(summary.get('base_val_loss'))} | {format_number(summary.get('base_val_bpb'))} |",
             f"| fine-tuned | {format_number(summary.get('val_loss'))} | {format_number(summary.get('val_bpb'))} |", ""]
    examples = summary.get("examples") or {}
    if examples:
        lines += ["| split | examples | response tokens | truncated | dropped |", "|---|---|---|---|---|"]
        lines += [f"| {split} | {c.get('examples')} | {c.get('response_tokens')} | {c.get('truncated')} | "
                  f"{c.get('dropped')} |" for split, c in examples.items()]
        lines += ["", f"Examples longer than a row: {summary.get('overlong')} (`--overlong`).", ""]
    if (run_dir / "answers.md").is_file():
        lines += ["Answers to held-out prompts: [answers.md](answers.md).", ""]
    if summary.get("adapter"):
        lines += [f"Adapter alone: `{summary['adapter']}` (`slm merge-lora` folds it into the base).", ""]
    return lines


def write_report(run_dir: str | Path) -> Path:
    """Write run_dir/report.md and run_dir/plots/{loss,eval,throughput}.png; return the report's path.

    Raises SlmError when run_dir is not a run directory.
    """
    run_dir = Path(run_dir)
    text = build_report(run_dir)
    events = read_metrics(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    train = [e for e in events if e["event"] == "train"]
    evals = [e for e in events if e["event"] == "eval"]
    plot_loss_and_lr(train, plots / "loss.png")
    plot_eval(evals, plots / "eval.png")
    plot_throughput(train, plots / "throughput.png")
    path = run_dir / "report.md"
    write_text_atomic(path, text)
    return path
