"""Device and precision: which hardware trains, in which number format.

Auto picks CUDA, then MPS, then CPU; bf16 autocast where the hardware does bf16 (CUDA Ampere or
newer, CPUs with AVX512-BF16 or AMX), fp16 with a gradient scaler on older GPUs, else float32.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from slmkit import runtime
from slmkit.errors import SlmError
from slmkit.utils import cache_dir, write_json_atomic

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

PEAK_CACHE = "peak_flops.json"  # in slmkit's cache: measured matmul peaks, one per machine and setting
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) of common GPUs, for MFU. The first key that
# torch.cuda.get_device_name contains wins, so a name inside another comes after it ("H100 PCIe"
# before "H100", "A10" after "A100"). H100 and H200 without a suffix are the SXM parts.
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "A100": 312.0,
                   "A10G": 125.0, "A10": 125.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0, "4090": 165.0,
                   "3090": 71.0, "V100": 125.0, "T4": 65.0, "A6000": 155.0}


@dataclass(frozen=True)
class DeviceSetup:
    device: torch.device
    precision: str  # "fp32", "bf16" or "fp16"
    description: str  # for logs and the report, e.g. "cuda:0 (NVIDIA H100 80GB HBM3)"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return None if self.precision == "fp32" else DTYPES[self.precision]

    def autocast(self):
        """A context that runs matmuls in the chosen precision (a no-op in float32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    @property
    def needs_grad_scaler(self) -> bool:
        return self.precision == "fp16" and self.device.type == "cuda"


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX)."""
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # pragma: no cover - old torch
        capability = ""
    if "AMX" in capability.upper():
        return True
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """The device to train on; under torchrun each process takes cuda:LOCAL_RANK."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SlmError(f"train.device = {name!r} but CUDA is not available here; use device=auto or cpu")
        if name == "cuda":
            name = f"cuda:{local_rank or 0}"
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SlmError("train.device = 'mps' but MPS is not available here; use device=auto or cpu")
    return torch.device(name)


def pick_precision(requested: str, device: torch.device) -> str:
    """Resolve "auto" and refuse precisions the device cannot run."""
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if requested == "auto":
            return "bf16" if bf16_ok else "fp16"
        if requested == "bf16" and not bf16_ok:
            raise SlmError(f"train.precision = 'bf16' is not supported on {torch.cuda.get_device_name(device)}; "
                           f"use fp16 or auto")
        return requested
    if device.type == "mps":
        return "fp32" if requested == "auto" else requested
    if requested == "auto":
        return "bf16" if cpu_supports_bf16() else "fp32"
    if requested == "fp16":
        raise SlmError("train.precision = 'fp16' is not supported on CPU; use bf16 (where the CPU has it) or fp32")
    return requested


def setup_device(name: str = "auto", precision: str = "auto", local_rank: int | None = None) -> DeviceSetup:
    """Pick the device and precision and set the fast-math switches that are safe (TF32 on CUDA)."""
    device = pick_device(name, local_rank)
    chosen = pick_precision(precision, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        description = f"{device} ({torch.cuda.get_device_name(device)})"
    elif device.type == "cpu":
        description = f"cpu ({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()})"
    else:
        description = str(device)
    return DeviceSetup(device, chosen, description)


def peak_flops(setup: DeviceSetup, configured_tflops: float | None = None) -> tuple[float | None, str]:
    """(peak FLOP/s of one device in the run's precision, where that figure comes from), for MFU;
    (None, why) when unknown.

    train.peak_tflops when set; a known GPU's datasheet peak (the usual MFU convention); otherwise
    the matmul peak measured on this machine (a CPU's honest denominator), measured once per CPU
    model, dtype, thread count and torch version and kept in slmkit's cache, so that two runs on one
    machine divide by the same figure.
    """
    if configured_tflops:
        return configured_tflops * 1e12, "train.peak_tflops"
    dtype = setup.autocast_dtype or torch.float32
    if setup.device.type == "cuda":
        name = torch.cuda.get_device_name(setup.device)
        for key, tflops in GPU_PEAK_TFLOPS.items():
            if key in name:
                # TF32 tensor cores run at about half the bf16 rate
                scale = 1.0 if setup.precision != "fp32" else 0.5
                return tflops * 1e12 * scale, f"datasheet peak of the {key} ({setup.precision})"
    if setup.device.type != "cpu":
        return None, f"unknown for {setup.device}; set train.peak_tflops"
    key = f"{runtime.cpu_model()} | {str(dtype).removeprefix('torch.')} | {torch.get_num_threads()} threads | " \
          f"torch {torch.__version__}"
    path = cache_dir() / PEAK_CACHE
    cached = _read_json(path)
    if key in cached:
        return float(cached[key]["flops"]), f"matmul peak measured on this machine on {cached[key]['date']} ({key}; {path})"
    with torch.random.fork_rng(devices=[]):  # the measurement draws random matrices; keep the run's stream
        flops = float(runtime.measure_matmul_peak(dtype, str(setup.device))) * 1e9
    cached[key] = {"flops": flops, "date": time.strftime("%Y-%m-%d")}
    with contextlib.suppress(OSError):  # a cache that cannot be written only costs a measurement next time
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, cached)
    return flops, f"matmul peak measured on this machine now ({key}; kept in {path})"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def configure_training_threads(threads: int | str, device: torch.device, world_size: int = 1,
                               local_processes: int = 1) -> runtime.ThreadGovernor | None:
    """Set the intra-op thread count (train.threads); return the governor that adapts it to other
    processes' load, for "auto" in a single CPU process without OMP_NUM_THREADS, else None (under
    torchrun the count stays fixed: sibling processes are not "other" load)."""
    runtime.configure_threads(threads, local_processes if world_size > 1 else 1)
    if threads != "auto" or world_size > 1 or device.type != "cpu" or runtime.threads_fixed_by_environment():
        return None
    return runtime.ThreadGovernor(runtime.available_cpus(), watched=runtime.affinity_cpus())
