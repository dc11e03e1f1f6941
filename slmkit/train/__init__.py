"""Training: a prepared dataset and a config in, a run directory out.

    from slmkit.train import train
    result = train("data/shakespeare", "runs/nano", preset="nano", overrides=["train.max_steps=500"])
    result = train(resume="runs/nano", overrides=["train.max_steps=1000"])   # continue exactly
    result = train("data/other", "runs/ft", init_from="runs/nano")          # new run from its weights

The run directory holds config.json, metrics.jsonl, checkpoints/{step-N,best,last}/, samples.md,
report.md and plots/ (see docs/training.md).
"""

from __future__ import annotations

from pathlib import Path

from slmkit.errors import SlmError
from slmkit.train.config import TrainConfig
from slmkit.train.trainer import Trainer, TrainResult, free_run_dir, read_run_config

__all__ = ["TrainConfig", "TrainResult", "Trainer", "free_run_dir", "read_run_config", "resolve_configs", "train"]


def resolve_configs(preset: str | None = None, config: str | Path | None = None,
                    overrides: list[str] | tuple[str, ...] = (), resume: str | Path | None = None):
    """(ModelConfig or None, TrainConfig) from a preset, a config file and `section.field=value`
    overrides; when resuming, the run's saved configs are the base the overrides apply to.

    The model config is None when no model is named (resume and --init-from supply theirs).
    """
    from slmkit.config import load_config_sections
    from slmkit.model.config import ModelConfig

    sections = load_config_sections(preset, config, overrides)
    if resume is not None:
        saved = read_run_config(resume)
        train_values = {**saved["train"], **sections["train"]}
        model_values = {**saved["model"], **sections["model"]} if sections["model"] else None
    else:
        train_values = sections["train"]
        model_values = sections["model"] or None
    model_config = None
    if model_values is not None:
        model_config = ModelConfig.from_dict(model_values, where="model config").validate()
    train_config = TrainConfig.from_dict(train_values, where="train config").validate()
    return model_config, train_config


def train(data: str | Path | None = None, out: str | Path | None = None, *, preset: str | None = None,
          config: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
          model_config=None, train_config: TrainConfig | None = None, resume: str | Path | None = None,
          init_from: str | Path | None = None, overwrite: bool = False, quiet: bool = False,
          report: bool = True, on_step=None) -> TrainResult:
    """Train a model on the dataset directory `data`, writing the run directory `out`.

    Configs come from `preset` < `config` file < `overrides` (or pass ModelConfig/TrainConfig
    objects). `out` defaults to runs/<model name> (runs/<name>-2 and so on when taken). resume: a run directory to continue exactly (its data and configs are reused; train
    overrides such as train.max_steps apply). init_from: a checkpoint or run directory whose weights
    start this new run. At the end (on the main process) samples.md and the report are written.
    Raises SlmError for bad input, before anything on disk is changed.
    """
    from slmkit.train import distributed

    if resume is not None:
        out = resume
    if model_config is None or train_config is None:
        resolved_model, resolved_train = resolve_configs(preset, config, overrides, resume)
        model_config = model_config or resolved_model
        train_config = train_config or resolved_train
    if out is None:  # runs/<model name>, or the next free runs/<name>-N
        out = free_run_dir(Path("runs") / ((model_config.name if model_config else "") or "run"))
    trainer = Trainer(data, out, model_config, train_config, resume=resume is not None, init_from=init_from,
                      overwrite=overwrite, quiet=quiet, on_step=on_step)
    try:
        result = trainer.run()
        if trainer.is_main and report:
            finish_run(trainer, result, quiet)
        # Every process leaves together: one that tore down its process group and exited while the
        # main one still wrote the report made gloo abort (SIGABRT) in 1 of ~6 two-process runs.
        distributed.barrier(trainer.dist)
    finally:
        distributed.cleanup(trainer.dist)
    return result


def finish_run(trainer: Trainer, result: TrainResult, quiet: bool = False) -> None:
    """Samples (when the dataset has a tokenizer) and the report, after training."""
    import warnings

    config = trainer.config
    if config.samples:
        try:
            tokenizer = trainer.data.tokenizer
        except (SlmError, OSError, KeyError, ValueError):
            tokenizer = None
        if tokenizer is not None:
            from slmkit.train.samples import write_run_samples

            try:
                samples = write_run_samples(trainer.run_dir, trainer.model, tokenizer, config.samples,
                                            config.sample_tokens, config.seed, result.step)
            except (ImportError, SlmError) as error:
                warnings.warn(f"no samples written: {error}", stacklevel=2)
                samples = []
            if not quiet:
                for index, (_, text) in enumerate(samples, 1):
                    print(f"\n--- sample {index} ---\n{text.strip()}")
    from slmkit.report import write_report

    write_report(trainer.run_dir)
