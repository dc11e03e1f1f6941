"""Checkpoint averaging: the uniform mean of the weights of several checkpoints of one run.

Averaging the last few checkpoints of a run (taken some hundreds of steps apart near its end) often
gives a model a little better than any of them, for free: the optimizer's noise around the minimum
averages out. The inputs must be one network (the same model config) from one run; the average is
written as a normal slmkit checkpoint (with the tokenizer), by default RUN/checkpoints/average-A-B/,
with what was averaged recorded in its config.json ("averaged").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from slmkit.errors import SlmError
from slmkit.model.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_state,
    read_checkpoint_config,
    write_checkpoint,
)
from slmkit.rundir import CHECKPOINTS, is_run_dir, step_checkpoints
from slmkit.utils import check_replaceable, megabytes, output_errors, write_marker

AVERAGE_MARKER = ".slmkit-average"  # written into the output so that --overwrite may replace it later
TRAINING_STATE = "training_state.pt"  # a trained checkpoint's resume state: not part of an average
NOT_COMPARED = ("name", "dropout", "extra")  # model-config fields that do not change the network


def average_checkpoints(run_or_dirs: str | os.PathLike | Sequence[str | os.PathLike], *, last: int | None = None,
                        names: Sequence[str] | None = None, out: str | os.PathLike | None = None,
                        overwrite: bool = False) -> Path:
    """Average the weights of several checkpoints of one run, uniformly; return the output directory.

    run_or_dirs: a run directory, with `last=N` (its N newest step-N checkpoints) or `names` (names
    under RUN/checkpoints, e.g. "step-800", "last", or checkpoint paths); or a list of checkpoint
    directories. Weights are summed in float64 and cast back to each tensor's stored dtype. `out`
    (default RUN/checkpoints/average-<first step>-<last step>) is written atomically, with the first
    checkpoint's tokenizer; an existing one is replaced only with `overwrite`, and only when this
    function wrote it. Raises SlmError for fewer than 2 checkpoints, a missing or repeated one,
    checkpoints of different model configs or different runs, and an output that is an input.
    """
    directories = _chosen_checkpoints(run_or_dirs, last, names)
    metas = [read_checkpoint_config(directory) for directory in directories]  # SlmError when missing
    _check_one_network(directories, metas)
    run = _check_one_run(directories, metas)
    steps = [meta.get("step") for meta in metas]
    out = Path(out) if out is not None else directories[0].parent / _default_name(directories, steps)
    if os.path.lexists(out):
        check_replaceable(out, directories, kind="an averaged checkpoint", marker=AVERAGE_MARKER)
        if not overwrite:
            raise SlmError(f"{out} already exists; choose another --out or pass --overwrite to replace it")
    config, weights = _mean_weights(directories)
    extra = {"step": max((s for s in steps if s is not None), default=None), "val_loss": None,
             "averaged": {"method": "uniform mean", "checkpoints": [str(d.resolve()) for d in directories],
                          "steps": steps}}
    if run is not None:
        extra["run"] = run
    size = sum(t.numel() * t.element_size() for t in weights.values())
    with output_errors(out, "the averaged checkpoint", flag="--out", needed=megabytes(size)):
        write_checkpoint(out, config, weights, extra=extra, extra_files=_companion_files(directories[0]))
        write_marker(out, AVERAGE_MARKER, "an averaged checkpoint")
    return out


def _chosen_checkpoints(run_or_dirs, last: int | None, names: Sequence[str] | None) -> list[Path]:
    """The checkpoint directories to average, in the order given (step order for `last`)."""
    if last is not None and names:
        raise SlmError("give either --last N or --checkpoints NAME..., not both")
    if isinstance(run_or_dirs, (str, os.PathLike)):
        run = Path(run_or_dirs)
        if not is_run_dir(run):
            if not run.exists():
                raise SlmError(f"run not found: {run}")
            raise SlmError(f"{run} is not a run directory (no {CHECKPOINTS}/); give a run made by slm train, or a "
                           f"list of checkpoint directories")
        if last is not None:
            if isinstance(last, bool) or not isinstance(last, int) or last < 2:
                raise SlmError(f"--last {last!r}: averaging needs at least 2 checkpoints; give --last 2 or more")
            found = step_checkpoints(run)
            if len(found) < last:
                raise SlmError(f"--last {last}: run {run} has {len(found)} step-N checkpoint"
                               f"{'' if len(found) == 1 else 's'} ({', '.join(p.name for _, p in found) or 'none'}); "
                               f"lower --last or train with a smaller train.checkpoint_interval")
            directories = [path for _, path in found[-last:]]
        elif names:
            directories = [_named(run, name) for name in names]
        else:
            raise SlmError(f"say which checkpoints of {run} to average: --last N (the N newest step-N) or "
                           f"--checkpoints NAME...")
    else:
        if last is not None or names:
            raise SlmError("--last and --checkpoints choose among a run's checkpoints; give a run directory with them")
        directories = [Path(item) for item in run_or_dirs]
    if len(directories) < 2:
        raise SlmError(f"averaging needs at least 2 checkpoints, got {len(directories)}; name more")
    seen: dict[Path, Path] = {}
    for directory in directories:
        key = directory.resolve()
        if key in seen:
            also = "" if seen[key] == directory else f" (also as {seen[key]})"
            raise SlmError(f"checkpoint {directory} is given twice{also}; name each checkpoint once")
        seen[key] = directory
    return directories


def _named(run: Path, name: str) -> Path:
    """A checkpoint of `run` by name (step-800, last, best, ema) or a path to a checkpoint directory."""
    candidate = run / CHECKPOINTS / name
    if (candidate / CONFIG_FILE).is_file():
        return candidate
    if (Path(name) / CONFIG_FILE).is_file():
        return Path(name)
    present = sorted(p.name for p in (run / CHECKPOINTS).iterdir() if (p / CONFIG_FILE).is_file())
    raise SlmError(f"checkpoint {name!r} not found in {run / CHECKPOINTS} (it holds: {', '.join(present) or 'none'})")


def _check_one_network(directories: list[Path], metas: list[dict]) -> None:
    first = {k: v for k, v in metas[0]["model"].items() if k not in NOT_COMPARED}
    for directory, meta in zip(directories[1:], metas[1:], strict=True):
        other = {k: v for k, v in meta["model"].items() if k not in NOT_COMPARED}
        differences = [f"{k}: {first.get(k)!r} vs {other.get(k)!r}" for k in sorted(set(first) | set(other))
                       if first.get(k) != other.get(k)]
        if differences:
            raise SlmError(f"{directory} has another model config than {directories[0]} "
                           f"({'; '.join(differences[:3])}); average checkpoints of one network only")


def _check_one_run(directories: list[Path], metas: list[dict]) -> str | None:
    """The run all checkpoints come from (their config.json's "run"), or None when none says."""
    runs = [meta.get("run") for meta in metas]
    for directory, run in zip(directories[1:], runs[1:], strict=True):
        if run != runs[0]:
            raise SlmError(f"{directory} comes from run {run or 'unknown'}, {directories[0]} from run "
                           f"{runs[0] or 'unknown'}; average checkpoints of one run only")
    return runs[0]


def _default_name(directories: list[Path], steps: list) -> str:
    """average-<first>-<last>: by step when the checkpoints have steps (average-600-1000), else by name."""
    if all(isinstance(step, int) for step in steps):
        return f"average-{min(steps)}-{max(steps)}"
    return f"average-{directories[0].name}-{directories[-1].name}"


@torch.no_grad()
def _mean_weights(directories: list[Path]) -> tuple[object, dict[str, torch.Tensor]]:
    """(model config, mean weights): summed in float64, one checkpoint in memory at a time besides the sum."""
    config, total, _ = load_state(directories[0])
    dtypes = {name: tensor.dtype for name, tensor in total.items()}
    total = {name: tensor.to(torch.float64) if tensor.is_floating_point() else tensor
             for name, tensor in total.items()}
    for directory in directories[1:]:
        _, weights, _ = load_state(directory)
        if set(weights) != set(total):
            missing = sorted(set(weights) ^ set(total))
            raise SlmError(f"{directory} holds other tensors than {directories[0]} ({', '.join(missing[:3])}); "
                           f"average checkpoints of one network only")
        for name, tensor in weights.items():
            if tensor.is_floating_point():
                total[name] += tensor.to(torch.float64)
            elif not torch.equal(tensor, total[name]):
                raise SlmError(f"{directory}: the integer tensor {name} differs from {directories[0]}'s, so it "
                               f"cannot be averaged")
    count = len(directories)
    return config, {name: (tensor / count).to(dtypes[name]).contiguous() if tensor.is_floating_point() else tensor
                    for name, tensor in total.items()}


def _companion_files(directory: Path) -> dict[str, Path]:
    """The files a checkpoint keeps beside its weights (the tokenizer), without the resume state."""
    skipped = {CONFIG_FILE, WEIGHTS_FILE, TRAINING_STATE}
    return {item.name: item for item in directory.iterdir()
            if item.name not in skipped and not item.name.startswith(".")}

