"""The plain matmul + softmax attention path computes what SDPA computes."""

import pytest
import torch
import torch.nn.functional as F

from slmkit.model.config import ModelConfig
from slmkit.model.layers import attend, attention_mask, plain_attention
from slmkit.model.transformer import Transformer


def _sdpa(q, k, v, mask, scale):
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask if isinstance(mask, torch.Tensor) else None, is_causal=isinstance(mask, str),
        scale=scale, enable_gqa=k.shape[1] != q.shape[1])


def _qkv(batch, n_heads, n_kv_heads, length, n_keys, head_dim=16, dtype=torch.float32):
    torch.manual_seed(0)
    q = torch.randn(batch, n_heads, length, head_dim, dtype=dtype)
    k = torch.randn(batch, n_kv_heads, n_keys, head_dim, dtype=dtype)
    v = torch.randn(batch, n_kv_heads, n_keys, head_dim, dtype=dtype)
    return q, k, v


@pytest.mark.parametrize("n_heads,n_kv_heads", [(4, 4), (6, 2), (4, 1)])
@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("padded", [False, True])
def test_plain_attention_equals_sdpa_with_its_gradients(n_heads, n_kv_heads, window, padded):
    q, k, v = _qkv(3, n_heads, n_kv_heads, 12, 12)
    steps = torch.arange(12)
    pad_offsets = torch.tensor([0, 3, 7]) if padded else None
    mask = attention_mask(steps, steps, window, pad_offsets)
    assert isinstance(mask, str) == (window is None and not padded)
    results = []
    for fn in (_sdpa, plain_attention):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        out = fn(*inputs, mask, 0.3)
        out.backward(torch.cos(torch.arange(out.numel(), dtype=out.dtype)).view_as(out))
        results.append([out] + [t.grad for t in inputs])
    for plain, reference in zip(results[1], results[0]):
        torch.testing.assert_close(plain, reference, rtol=1e-5, atol=1e-5)


def test_plain_attention_equals_sdpa_when_decoding_against_a_cache():
    q, k, v = _qkv(2, 6, 2, 1, 9)
    steps, key_steps = torch.tensor([8]), torch.arange(9)
    mask = attention_mask(steps, key_steps, None, None)
    assert mask is None
    torch.testing.assert_close(plain_attention(q, k, v, mask, 0.25), _sdpa(q, k, v, mask, 0.25),
                               rtol=1e-5, atol=1e-5)
    window_mask = attention_mask(torch.arange(6, 9), key_steps, 4, None)  # a chunk of 3 new queries
    q3 = _qkv(2, 6, 2, 3, 9)[0]
    torch.testing.assert_close(plain_attention(q3, k, v, window_mask, 0.25), _sdpa(q3, k, v, window_mask, 0.25),
                               rtol=1e-5, atol=1e-5)


def test_bf16_on_cpu_takes_the_plain_path_and_stays_close_to_float32():
    q, k, v = _qkv(2, 6, 2, 64, 64)
    expected = _sdpa(q, k, v, "causal", 0.25)
    actual = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), "causal", 0.25)
    assert actual.dtype == torch.bfloat16
    torch.testing.assert_close(actual.float(), expected, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(actual, plain_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), "causal", 0.25),
                               rtol=0, atol=0)


def test_bf16_model_logits_match_float32_model_closely():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=100, context_length=32, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2,
                         d_mlp=128, sliding_window=8, sliding_window_pattern=2)
    model = Transformer(config)
    ids = torch.randint(0, 100, (2, 24))
    expected = model(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = model(ids)
    assert (actual.float() - expected).abs().max() < 0.1 * expected.abs().max()
