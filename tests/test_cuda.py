"""The CUDA paths, which no CPU run reaches: bf16 autocast, fp16 with the gradient scaler, TF32, fused
AdamW, the flash SDPA kernel, torch.compile, decoding, DDP over NCCL and the trainer with an exact
resume. Marked `cuda`; every test skips without CUDA. bench/gpu_check.sh runs them on a GPU:

    pytest -m cuda tests/test_cuda.py
"""

import json

import pytest
import torch
from train_support import run_slm_under_torchrun, tiny_overrides, train_events, write_dataset

from slmkit.api import train
from slmkit.model.config import ModelConfig
from slmkit.model.transformer import Transformer
from slmkit.train.config import TrainConfig
from slmkit.train.device import setup_device
from slmkit.train.loss import language_model_loss
from slmkit.train.optim import build_optimizer
from slmkit.train.parallelize import compile_model

DEVICE = "cuda"  # the device every test here runs on

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh)")]


def tiny_config(family: str = "llama", vocab: int = 96, context: int = 64) -> ModelConfig:
    """A ~0.2M model: Llama style (RMSNorm, SwiGLU, RoPE, grouped K/V heads) or GPT-2 style."""
    if family == "gpt2":
        return ModelConfig(name="tiny-gpt2", family="gpt2", vocab_size=vocab, context_length=context, n_layers=2,
                           d_model=128, n_heads=4, mlp="gelu", d_mlp=256, norm="layernorm", norm_bias=True,
                           position="learned", attention_bias=True, mlp_bias=True, tie_embeddings=True).validate()
    return ModelConfig(name="tiny-llama", family="llama", vocab_size=vocab, context_length=context, n_layers=2,
                       d_model=128, n_heads=4, n_kv_heads=2, mlp="swiglu", d_mlp=256, norm="rmsnorm",
                       position="rope", tie_embeddings=True).validate()


def counting_batch(vocab: int, batch: int = 8, length: int = 64, device: str = DEVICE):
    """(x, y) of rows counting up by 1 from random starts: learnt within a few steps."""
    starts = torch.randint(0, vocab, (batch, 1), generator=torch.Generator().manual_seed(0))
    rows = ((starts + torch.arange(length + 1)) % vocab).to(device)
    return rows[:, :-1], rows[:, 1:]


def train_steps(model, forward, setup, steps: int, scaler=None) -> list[float]:
    """`steps` optimizer steps on one counting batch, as the trainer takes them; the losses."""
    optimizer = build_optimizer(model, TrainConfig(lr=3e-3), setup.device.type)
    x, y = counting_batch(model.config.vocab_size, device=setup.device)
    losses = []
    for _ in range(steps):
        with setup.autocast():
            loss = language_model_loss(forward, x, y)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            for inner in optimizer.optimizers:
                scaler.unscale_(inner)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if scaler is not None:
            for inner in optimizer.optimizers:
                scaler.step(inner)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.fixture
def tf32_restored():
    """Leave the TF32 switches as the test found them (setup_device turns them on for the process)."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "ds")


# -- precision --------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_bf16_autocast_training_steps_are_finite_and_the_loss_falls(family, tf32_restored):
    setup = setup_device(DEVICE, "bf16")
    assert setup.device.type == DEVICE and setup.precision == "bf16" and not setup.needs_grad_scaler
    torch.manual_seed(0)
    model = Transformer(tiny_config(family)).to(setup.device).train()
    losses = train_steps(model, model, setup, steps=12)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses


def test_fp16_precision_uses_the_grad_scaler_and_the_loss_falls(tf32_restored):
    setup = setup_device(DEVICE, "fp16")
    assert setup.needs_grad_scaler and setup.autocast_dtype == torch.float16
    torch.manual_seed(0)
    model = Transformer(tiny_config()).to(setup.device).train()
    scaler = torch.amp.GradScaler("cuda")
    losses = train_steps(model, model, setup, steps=12, scaler=scaler)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses
    assert scaler.get_scale() > 0 and all(p.dtype == torch.float32 for p in model.parameters())


def test_the_trainer_in_fp16_trains_through_its_grad_scaler_and_saves_the_scaler(data_dir, tmp_path, tf32_restored):
    run = tmp_path / "fp16"
    result = train(data_dir, run, overrides=tiny_overrides(data_dir, device=DEVICE, precision="fp16", max_steps=20),
                   quiet=True, report=False)
    assert result.step == 20
    config = json.loads((run / "config.json").read_text())
    assert config["precision"] == "fp16" and config["device"].startswith("cuda:0")
    losses = [e["loss"] for e in train_events(run)]
    assert len(losses) == 20 and all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    state = torch.load(run / "checkpoints" / "last" / "training_state.pt", map_location="cpu", weights_only=True)
    assert state["grad_scaler"] and state["grad_scaler"]["scale"] > 0


def test_setup_device_turns_tf32_on_for_cuda_matmuls(tf32_restored):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    setup = setup_device(DEVICE, "auto")
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == "high"
    # auto precision: bf16 where the GPU does it (Ampere and newer), else fp16 with the scaler
    assert setup.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert torch.cuda.get_device_name(setup.device) in setup.description


# -- optimizer, attention, compile ------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_build_optimizer_runs_fused_adamw_on_cuda(optimizer):
    torch.manual_seed(0)
    model = Transformer(tiny_config()).to(DEVICE)
    built = build_optimizer(model, TrainConfig(optimizer=optimizer), "cuda")
    adam = [g for g in built.param_groups if g["name"] != "muon"]
    assert adam and all(group["fused"] for group in adam)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = counting_batch(model.config.vocab_size)
    language_model_loss(model, x, y).backward()
    built.step()  # the fused CUDA kernel (and Muon's bf16 Newton-Schulz) runs
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_flash_sdpa_runs_the_models_attention_in_bf16(family):
    """With SDPA restricted to the flash kernel, a bf16 forward and backward runs (flash refuses shapes,
    dtypes or masks it cannot take with "No available kernel") and gives the math kernel's loss."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    setup = setup_device(DEVICE, "bf16")
    torch.manual_seed(0)
    model = Transformer(tiny_config(family)).to(setup.device).train()
    x, y = counting_batch(model.config.vocab_size)
    with sdpa_kernel(SDPBackend.MATH), setup.autocast(), torch.no_grad():
        reference = language_model_loss(model, x, y).item()
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), setup.autocast():
        loss = language_model_loss(model, x, y)
    loss.backward()
    assert loss.item() == pytest.approx(reference, rel=2e-2)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_a_compiled_training_step_on_cuda_matches_eager():
    setup = setup_device(DEVICE, "bf16")
    results = {}
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        model = Transformer(tiny_config("gpt2")).to(setup.device).train()
        forward = compile_model(model, mode == "compiled")
        assert (forward is not model) == (mode == "compiled")
        results[mode] = train_steps(model, forward, setup, steps=5)
    assert results["compiled"] == pytest.approx(results["eager"], rel=2e-2)
    assert results["compiled"][-1] < results["compiled"][0]


# -- decoding ---------------------------------------------------------------------------------
@pytest.mark.parametrize("compile", [False, True])
def test_greedy_generation_on_cuda_gives_the_cpu_tokens(compile, tf32_restored):
    from slmkit.generate import generate

    torch.backends.cuda.matmul.allow_tf32 = False  # float32 exactly as on the CPU
    torch.manual_seed(0)
    model = Transformer(tiny_config()).eval()
    prompts = [[5, 9, 17, 3], [40, 2], [7, 7, 7, 7, 7, 1]]  # different lengths: left padding and masks
    on_cpu = [g.tokens for g in generate(model, prompts, "greedy", max_new_tokens=24)]
    model.to(DEVICE)
    on_cuda = [g.tokens for g in generate(model, prompts, "greedy", max_new_tokens=24, compile=compile)]
    assert on_cuda == on_cpu
    alone = generate(model, prompts[1], "greedy", max_new_tokens=24, compile=compile).tokens
    assert alone == on_cpu[1]  # batch 1 (its own compiled graph) too


# -- several processes ------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_process_ddp_over_nccl_equals_one_process_with_accumulation(data_dir, tmp_path):
    common = dict(max_steps=6, eval_interval=3, checkpoint_interval=3, batch_size=4, device=DEVICE)
    single = tmp_path / "single"
    train(data_dir, single, overrides=tiny_overrides(data_dir, grad_accum=2, **common), quiet=True, report=False)
    ddp = tmp_path / "ddp"
    arguments = ["train", "--data", str(data_dir), "--out", str(ddp), "--quiet"]
    for override in tiny_overrides(data_dir, grad_accum=1, **common):
        arguments += ["--set", override]
    done = run_slm_under_torchrun(arguments, cpu=False)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((ddp / "config.json").read_text())
    assert config["world_size"] == 2
    single_losses = [e["loss"] for e in train_events(single)]
    assert [e["loss"] for e in train_events(ddp)] == pytest.approx(single_losses, abs=1e-4)


# -- the trainer end to end -------------------------------------------------------------------
def test_the_trainer_runs_20_steps_on_cuda_checkpoints_and_resumes_exactly(data_dir, tmp_path, tf32_restored):
    """fp32 with dropout, so the resumed run must restore the CUDA random state as well as the
    optimizer; GPU reductions may reorder, so losses agree to 1e-4 relative, not bit for bit (a lost
    dropout stream or optimizer state moves them by far more)."""
    settings = tiny_overrides(data_dir, device=DEVICE, precision="fp32", max_steps=20, dropout=0.1,
                              eval_interval=10, checkpoint_interval=10)
    whole = tmp_path / "whole"
    result = train(data_dir, whole, overrides=settings, quiet=True, report=False)
    assert result.step == 20 and not result.interrupted
    assert {"step-10", "step-20", "last", "best"} <= {p.name for p in (whole / "checkpoints").iterdir()}

    def stop_at_step_10(trainer):
        if trainer.step == 10:
            trainer.request_stop("test")

    split = tmp_path / "split"
    first = train(data_dir, split, overrides=settings, quiet=True, report=False, on_step=stop_at_step_10)
    assert first.interrupted and first.step == 10
    second = train(resume=split, quiet=True, report=False)
    assert second.step == 20 and not second.interrupted

    expected = [(e["step"], e["loss"]) for e in train_events(whole)]
    resumed = [(e["step"], e["loss"]) for e in train_events(split)]
    assert [s for s, _ in resumed] == list(range(1, 21))
    assert [loss for _, loss in resumed] == pytest.approx([loss for _, loss in expected], rel=1e-4)
    assert expected[-1][1] < expected[0][1]
    val = [e["val_loss"] for e in train_events(whole, "eval")]
    assert [e["val_loss"] for e in train_events(split, "eval")] == pytest.approx(val, rel=1e-4)
