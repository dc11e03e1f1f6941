"""Packed rows (several fine-tuning examples in one row, `segment_ids`): each example gets exactly the
logits and the loss it would get alone, for the three families, and no gradient crosses examples."""

from __future__ import annotations

import pytest
import torch

from slmkit.model import ModelConfig, Transformer
from slmkit.model.transformer import segment_positions
from slmkit.train.loss import language_model_loss

VOCAB = 61
CONFIGS = {
    "gpt2": dict(family="gpt2", position="learned", norm="layernorm", norm_bias=True, mlp="gelu",
                 attention_bias=True, mlp_bias=True),
    "llama": dict(family="llama", n_kv_heads=2, tie_embeddings=False),
    # a window of 5 shorter than the examples: the window and the example boundary both apply
    "gemma3": dict(family="gemma3", n_kv_heads=1, head_dim=16, mlp="geglu", norm_unit_offset=True,
                   norm_placement="sandwich", qk_norm=True, embedding_scale=True, sliding_window=5,
                   sliding_window_pattern=3, rope_theta=10000.0, rope_theta_local=100.0, query_pre_attn_scalar=16,
                   n_layers=3, tie_embeddings=False),
}
LENGTHS = (7, 12, 4)  # three examples packed into a row of 23 tokens, then one of padding


def tiny(family: str) -> Transformer:
    torch.manual_seed(5)
    values = dict(vocab_size=VOCAB, n_layers=2, d_model=32, n_heads=4, d_mlp=64, init_std=0.3, context_length=32)
    values.update(CONFIGS[family])
    return Transformer(ModelConfig(**values)).eval()


def packed_row() -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    examples = [torch.randint(2, VOCAB, (n,), generator=generator) for n in LENGTHS]
    row = torch.cat([*examples, torch.zeros(1, dtype=torch.long)])[None]
    segments = torch.cat([torch.full((n,), i) for i, n in enumerate((*LENGTHS, 1))])[None]
    return examples, row, segments


def test_segment_positions_restart_at_each_example():
    _, _, segments = packed_row()
    expected = [p for n in (*LENGTHS, 1) for p in range(n)]
    assert segment_positions(segments)[0].tolist() == expected


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_packed_row_gives_each_example_its_own_logits(family):
    model = tiny(family)
    examples, row, segments = packed_row()
    with torch.no_grad():
        packed = model(row, segment_ids=segments)[0]
        start = 0
        for example in examples:
            alone = model(example[None])[0]
            torch.testing.assert_close(packed[start:start + len(example)], alone, atol=1e-5, rtol=1e-5)
            start += len(example)
        # negative control: without segment ids the later examples see the earlier ones
        unpacked = model(row)[0]
        assert not torch.allclose(unpacked[LENGTHS[0]:LENGTHS[0] + LENGTHS[1]], packed[LENGTHS[0]:LENGTHS[0] + LENGTHS[1]],
                                  atol=1e-3)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_packed_loss_equals_the_sum_of_the_examples_losses_and_gradients_stay_inside(family):
    model = tiny(family).train()
    model.config.dropout = 0.0
    examples, row, segments = packed_row()
    targets = torch.full_like(row, -1)
    start = 0
    for example in examples:  # predict each next token inside an example, never across a boundary
        targets[0, start:start + len(example) - 1] = example[1:]
        start += len(example)
    packed = language_model_loss(model, row, targets, segments, reduction="sum")
    alone = sum(language_model_loss(model, e[None, :-1], e[None, 1:], reduction="sum") for e in examples)
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-5)

    # the loss on the second example alone gives no gradient to the first example's embeddings
    embeddings = model.embed(row).detach().requires_grad_(True)
    second = torch.full_like(targets, -1)
    second[0, LENGTHS[0]:LENGTHS[0] + LENGTHS[1] - 1] = targets[0, LENGTHS[0]:LENGTHS[0] + LENGTHS[1] - 1]
    original = model.embed.forward
    model.embed.forward = lambda ids: embeddings
    try:
        language_model_loss(model, row, second, segments).backward()
    finally:
        model.embed.forward = original
    grad = embeddings.grad[0].abs().sum(dim=-1)
    assert grad[:LENGTHS[0]].max() == 0
    assert grad[LENGTHS[0]:LENGTHS[0] + LENGTHS[1] - 1].min() > 0  # its last token predicts nothing


def test_segment_ids_refused_with_a_cache():
    model = tiny("llama")
    _, row, segments = packed_row()
    with pytest.raises(ValueError, match="segment_ids"):
        model(row, cache=model.new_cache(1), segment_ids=segments)
