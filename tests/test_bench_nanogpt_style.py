"""The nanoGPT-style benchmark peer (bench/peers/nanogpt_style.py) computes slmkit's GPT-2 model:
same parameter count, and the same logits and loss from the same weights."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import bench_train  # noqa: E402
from peers import nanogpt_style  # noqa: E402

from slmkit.model.transformer import Transformer  # noqa: E402


def small_gpt2_config():
    """bench_train's GPT-2 23M config, shrunk so that the test runs in a second (head_dim and n_kv_heads
    are filled in from the big config, so they are set again)."""
    return dataclasses.replace(bench_train.model_config("gpt2", 256), vocab_size=256, n_layers=2, d_model=64,
                               n_heads=4, n_kv_heads=4, head_dim=16, d_mlp=256,
                               context_length=32)


def test_peer_built_from_slmkit_config_has_the_same_parameter_count():
    config = small_gpt2_config()
    slmkit_model = Transformer(config)
    peer = nanogpt_style.GPT(nanogpt_style.config_from_slmkit(config))
    # embeddings 256*64 + 32*64, per layer 2 LayerNorms (2*2*64) + qkv (64*192+192) + out (64*64+64)
    # + up (64*256+256) + down (256*64+64), final LayerNorm 2*64; the head is tied
    expected = 256 * 64 + 32 * 64 + 2 * (4 * 64 + 64 * 192 + 192 + 64 * 64 + 64 + 64 * 256 + 256 + 256 * 64 + 64) + 128
    assert slmkit_model.num_parameters() == expected
    assert sum(p.numel() for p in peer.parameters()) == expected


def test_peer_with_slmkit_weights_gives_the_same_logits_and_loss_in_fp32():
    torch.manual_seed(0)
    slmkit_model = Transformer(small_gpt2_config()).eval()
    with torch.no_grad():  # weights large enough that a wrong GELU form (erf for tanh) misses by 1e-3
        for name, param in slmkit_model.named_parameters():
            param.copy_(0.2 * torch.randn_like(param) + (1.0 if name.endswith("norm.weight") else 0.0))
    peer = nanogpt_style.from_slmkit(slmkit_model).eval()
    tokens = torch.randint(0, 256, (3, 33), generator=torch.Generator().manual_seed(1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    with torch.no_grad():
        expected = slmkit_model(inputs)
        logits, loss = peer(inputs, targets)
    assert logits.shape == expected.shape == (3, 32, 256)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    expected_loss = torch.nn.functional.cross_entropy(expected.reshape(-1, 256), targets.reshape(-1))
    torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=0)
    assert peer.lm_head.weight is peer.transformer.wte.weight


def test_peer_init_follows_nanogpt_residual_scaling():
    torch.manual_seed(0)
    peer = nanogpt_style.GPT(nanogpt_style.GPTConfig(block_size=64, vocab_size=512, n_layer=8, n_head=4,
                                                     n_embd=128))
    projection = torch.cat([block.mlp.c_proj.weight.flatten() for block in peer.transformer.h])
    assert projection.std().item() == pytest.approx(0.02 / 4, rel=0.05)  # 0.02 / sqrt(2 * 8)
    assert peer.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert peer.config.gelu_approximate == "none"  # nanoGPT's exact GELU unless asked otherwise


def test_peer_optimizer_decays_matrices_only_and_is_fused_only_on_cuda():
    peer = nanogpt_style.GPT(nanogpt_style.config_from_slmkit(small_gpt2_config()))
    optimizer = peer.configure_optimizers(0.1, 3e-4, (0.9, 0.95), "cpu")
    decay, no_decay = optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) == 1 + 1 + 2 * 4  # wte (tied head), wpe, 4 matrices per layer
    assert not optimizer.defaults.get("fused")


def test_config_from_slmkit_refuses_a_llama():
    with pytest.raises(ValueError, match="not a plain GPT-2"):
        nanogpt_style.config_from_slmkit(bench_train.model_config("llama", 256))
