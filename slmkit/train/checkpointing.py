"""Training checkpoints: the model checkpoint format plus `training_state.pt` beside it.

training_state.pt holds what exact resume needs and nothing executable: the optimizer state, the
step and token counters, the RNG states (torch, CUDA, numpy, python), the gradient scaler, the
best validation loss and the elapsed training time. It is loaded with `weights_only=True`.

A run's checkpoints/ holds step-N/ (periodic, the newest `keep_last` kept), best/ (lowest
validation loss) and last/ (the newest state, what `--resume` reads). best/ and last/ are hard
links to (or copies of) a freshly written checkpoint, swapped into place atomically.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from slmkit.errors import SlmError
from slmkit.model.checkpoint import (
    CONFIG_FILE,
    model_state,
    read_checkpoint_config,
    sha256_file,
    write_checkpoint,
)
from slmkit.utils import replace_dir

STATE_FILE = "training_state.pt"
STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict:
    """Every random stream the training loop draws from, as tensors, lists and numbers."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def save_training_checkpoint(directory: Path, model_config, weights: dict[str, torch.Tensor], training_state: dict,
                             extra: dict, extra_files: dict | None = None) -> Path:
    """Write weights, config, `training_state` (and `extra_files`) into `directory`, atomically."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory.parent, prefix=".training_state.", suffix=".pt")
    os.close(fd)
    try:
        torch.save(training_state, tmp)
        extra = {**extra, "training_state_sha256": sha256_file(Path(tmp))}
        write_checkpoint(directory, model_config, weights, extra=extra,
                         extra_files={STATE_FILE: tmp, **(extra_files or {})})
    finally:
        Path(tmp).unlink(missing_ok=True)
    return directory


def full_state(model, optimizer, sharded: bool) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights to save, optimizer state) of `model`; with FSDP2 (`sharded`) both are gathered in
    full onto CPU, a collective every process must call (only rank 0's copy is complete)."""
    if not sharded:
        return model_state(model), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    if model.config.tie_embeddings:
        weights.pop("lm_head.weight", None)
    weights = {name: tensor.contiguous() for name, tensor in weights.items()}
    optimizers = [get_optimizer_state_dict(model, opt, options=options) for opt in optimizer.optimizers]
    return weights, {"optimizers": optimizers, "full_state_dict": True}


def restore_full_state(model, optimizer, weights: dict[str, torch.Tensor], optimizer_state: dict) -> None:
    """Load full (unsharded) weights and optimizer state into an FSDP2-sharded model, on every process."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    if not optimizer_state.get("full_state_dict"):
        raise SlmError("this checkpoint was saved without FSDP; resume it with train.parallelism=ddp")
    options = StateDictOptions(full_state_dict=True)
    weights = dict(weights)
    if model.config.tie_embeddings:
        weights["lm_head.weight"] = weights["embed.weight"]
    set_model_state_dict(model, weights, options=options)
    for opt, state in zip(optimizer.optimizers, optimizer_state["optimizers"], strict=True):
        set_optimizer_state_dict(model, opt, state, options=options)


def link_checkpoint(source: Path, target: Path) -> Path:
    """Make `target` a copy of checkpoint `source` (hard links where possible), swapped in atomically.

    Hard links are safe because checkpoint files are never modified in place, only replaced.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        for item in source.iterdir():
            if item.is_dir():
                shutil.copytree(item, tmp / item.name, copy_function=_link_or_copy)
            else:
                _link_or_copy(item, tmp / item.name)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _link_or_copy(source, target) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def load_training_state(directory: Path) -> dict:
    """The training_state.pt of a checkpoint, loaded without executing code."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise SlmError(f"{directory} has no {STATE_FILE}, so it cannot be resumed exactly; "
                       f"to start a new run from its weights use --init-from {directory}")
    expected = read_checkpoint_config(directory).get("training_state_sha256")
    if expected and sha256_file(path) != expected:
        raise SlmError(f"{path} does not match the hash in its config.json: the file is truncated or was "
                       f"modified; resume from another checkpoint (checkpoints/step-N)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unpickling failure means a damaged or foreign file
        raise SlmError(f"cannot read {path}: {type(error).__name__}: {error}; the checkpoint is damaged, "
                       f"resume from another one (checkpoints/step-N)") from None


def step_checkpoints(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    """(step, dir) of the complete step-N checkpoints, oldest first."""
    found = []
    if checkpoints_dir.is_dir():
        for item in checkpoints_dir.iterdir():
            match = STEP_DIR.match(item.name)
            if match and (item / CONFIG_FILE).is_file():
                found.append((int(match.group(1)), item))
    return sorted(found)


def prune_step_checkpoints(checkpoints_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` step-N checkpoints (0 keeps all); return those deleted."""
    if keep_last <= 0:
        return []
    doomed = [path for _, path in step_checkpoints(checkpoints_dir)[:-keep_last]]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed
