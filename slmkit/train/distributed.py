"""Several processes, one run: PyTorch DDP (or FSDP2) under `torchrun --nproc_per_node=N`.

The process group is set up from torchrun's environment variables (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT): nccl on CUDA, gloo on CPU. Without them, training is a single process and every
helper here is a no-op. The model code never sees any of this: it is wrapped from outside.
"""

from __future__ import annotations

import collections
import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def world_size_from_environment() -> int:
    """The number of processes torchrun started for this run (1 without torchrun)."""
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


def local_processes() -> int:
    """Processes of this run on this machine (they share its CPUs); torchrun sets LOCAL_WORLD_SIZE."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size_from_environment()))


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Join the process group torchrun set up (once), or return a single-process DistInfo."""
    if not launched_by_torchrun():
        return DistInfo()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and not device_name.startswith(("cpu", "mps"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world_size, local_rank)


def wrap_model(model, info: DistInfo, device: torch.device, parallelism: str = "ddp"):
    """DDP (gradients all-reduced) or FSDP2 (parameters sharded) around `model`; unchanged alone."""
    if not info.enabled:
        return model
    if parallelism == "fsdp":
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def no_sync(model, sync: bool):
    """Skip the gradient all-reduce on accumulation micro-steps (DDP); sync on the last one."""
    if sync or not hasattr(model, "no_sync"):
        if not sync and hasattr(model, "set_requires_gradient_sync"):  # FSDP2
            model.set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        if sync and hasattr(model, "set_requires_gradient_sync"):
            model.set_requires_gradient_sync(True)
        return contextlib.nullcontext()
    return model.no_sync()


# The tensors of the last collectives, kept alive from Python. gloo's worker thread drops its own
# reference to a finished collective's tensors a moment after the caller has its result; when that is
# the last reference, the tensor's Python object is freed from that thread, which needs the GIL. If the
# main thread meanwhile tears the process group down (freeing DDP at the end of a run joins gloo's
# threads while holding the GIL), the two wait for each other forever: the hang seen in about 1 of 6
# two-process runs on a loaded machine (gdb: ~ProcessGroupGloo joining pt_gloo_runloop, which waits for
# the GIL in ~AsyncAllreduceWork). With Python holding the last reference, gloo's thread never frees one.
_RECENT_COLLECTIVE_TENSORS: collections.deque = collections.deque(maxlen=16)


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum `values` over processes (in place, returned)."""
    if info.enabled:
        _RECENT_COLLECTIVE_TENSORS.append(values)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
