"""The one transformer: KV-cache decoding equals a full forward, padding is exact, checkpoints are safe."""

import contextlib
import json

import pytest
import torch

import slmkit
from slmkit.errors import SlmError
from slmkit.model import ModelConfig, Transformer, load_model, save_model
from slmkit.train.parallelize import apply_activation_checkpointing

FAMILIES = {
    "gpt2": dict(family="gpt2", mlp="gelu", norm="layernorm", norm_bias=True, position="learned",
                 attention_bias=True, mlp_bias=True),
    "llama": dict(family="llama", n_kv_heads=2),
    "gemma3": dict(family="gemma3", n_kv_heads=1, head_dim=16, mlp="geglu", norm_unit_offset=True,
                   norm_placement="sandwich", qk_norm=True, sliding_window=5, sliding_window_pattern=3,
                   rope_theta=1e6, rope_theta_local=1e4, embedding_scale=True, query_pre_attn_scalar=16),
}


def tiny_model(family: str, **changes) -> Transformer:
    values = dict(vocab_size=97, context_length=64, n_layers=6, d_model=32, n_heads=4, d_mlp=64)
    values.update(FAMILIES[family])
    values.update(changes)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**values)).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # norms and biases too, so every path matters
            parameter.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_prefill_then_one_token_steps_equal_one_full_forward(family):
    model = tiny_model(family)
    ids = torch.randint(0, 97, (2, 23))  # longer than the gemma3 window of 5
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, 32)
        steps = [model(ids[:, :6], cache=cache)]
        steps += [model(ids[:, t:t + 1], cache=cache) for t in range(6, 23)]
    assert cache.length == 23
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_chunked_prefill_equals_one_full_forward(family):
    model = tiny_model(family)
    ids = torch.randint(0, 97, (1, 30))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(1, 30)
        chunks = [model(ids[:, a:b], cache=cache) for a, b in ((0, 3), (3, 11), (11, 12), (12, 30))]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=2e-5, rtol=1e-4)


def test_sliding_layers_hold_only_their_window():
    model = tiny_model("gemma3")
    cache = model.new_cache(1, 40)
    sizes = [k.shape[2] for k in cache.keys]
    assert sizes == [5, 5, 40, 5, 5, 40]  # full attention at layers 2 and 5 (pattern 3)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_left_padded_batch_equals_each_row_alone(family):
    model = tiny_model(family)
    long, short = torch.randint(0, 97, (1, 12)), torch.randint(0, 97, (1, 7))
    batch = torch.cat([long, torch.cat([torch.zeros(1, 5, dtype=torch.long), short], dim=1)])
    offsets = torch.tensor([0, 5])
    with torch.no_grad():
        together = model(batch, pad_offsets=offsets)
        cache = model.new_cache(2, 20)
        prefill = model(batch, cache=cache, pad_offsets=offsets)
        step = model(torch.tensor([[3], [4]]), cache=cache, pad_offsets=offsets)
        alone_long, alone_short = model(long), model(short)
        next_long = model(torch.cat([long, torch.tensor([[3]])], 1))[:, -1]
        next_short = model(torch.cat([short, torch.tensor([[4]])], 1))[:, -1]
    torch.testing.assert_close(together[0], alone_long[0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(together[1, 5:], alone_short[0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(prefill[1, 5:], alone_short[0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(step[0, 0], next_long[0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(step[1, 0], next_short[0], atol=2e-5, rtol=1e-4)


@contextlib.contextmanager
def saved_tensors_counted():
    """Count the tensors autograd keeps for the backward pass: [count]."""
    count = [0]

    def pack(tensor):
        count[0] += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield count


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_activation_checkpointing_gives_the_same_loss_gradients_and_names(family):
    model = tiny_model(family, dropout=0.1).train()  # dropout: the recomputation must replay its mask
    ids = torch.randint(0, 97, (2, 16))  # longer than the gemma3 window of 5
    names = list(model.state_dict())
    torch.manual_seed(1)
    with saved_tensors_counted() as plain_saved:
        plain_loss = model(ids).square().mean()
    plain_loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    apply_activation_checkpointing(model)
    assert list(model.state_dict()) == names and list(dict(model.named_parameters())) == list(plain)
    torch.manual_seed(1)
    with saved_tensors_counted() as saved:
        loss = model(ids).square().mean()
    loss.backward()
    assert saved[0] < plain_saved[0] / 3  # the blocks kept only their inputs
    torch.testing.assert_close(loss, plain_loss)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, plain[name])


def test_tied_head_shares_the_embedding_and_untied_does_not():
    tied = tiny_model("llama")
    assert tied.lm_head.weight is tied.embed.weight
    untied = tiny_model("llama", tie_embeddings=False)
    assert untied.lm_head.weight is not untied.embed.weight
    assert untied.num_parameters() == tied.num_parameters() + 97 * 32


def test_residual_projections_get_the_scaled_init():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=512, n_layers=8, d_model=256, n_heads=4, d_mlp=1024))
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].mlp.down.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)


def test_learned_positions_refuse_sequences_past_the_context():
    model = tiny_model("gpt2", context_length=8)
    with pytest.raises(SlmError, match="exceeds the model context 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_checkpoint_round_trip_gives_identical_logits(family, tmp_path):
    model = tiny_model(family)
    save_model(model, tmp_path / "ckpt")
    loaded = slmkit.load(tmp_path / "ckpt")
    ids = torch.randint(0, 97, (1, 20))
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))
    assert loaded.config == model.config


def test_tampered_or_truncated_weights_are_refused(tmp_path):
    save_model(tiny_model("llama"), tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(SlmError, match="truncated or was modified"):
        load_model(tmp_path / "ckpt")
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(SlmError, match="truncated or was modified"):
        load_model(tmp_path / "ckpt")


def test_damaged_or_missing_checkpoints_are_refused(tmp_path):
    with pytest.raises(SlmError, match="checkpoint not found"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlmError, match="is not an slmkit checkpoint"):
        load_model(tmp_path / "empty")
    with pytest.raises(SlmError, match="holds no slmkit checkpoint"):
        slmkit.load(tmp_path / "empty")
    save_model(tiny_model("llama"), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text("{not json")
    with pytest.raises(SlmError, match="not valid JSON"):
        load_model(tmp_path / "ckpt")


def test_saving_over_a_checkpoint_replaces_it_whole(tmp_path):
    save_model(tiny_model("llama"), tmp_path / "ckpt")
    save_model(tiny_model("gemma3"), tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["model"]["family"] == "gemma3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary leftovers


def test_run_directory_resolves_to_its_best_checkpoint(tmp_path):
    save_model(tiny_model("llama"), tmp_path / "run" / "checkpoints" / "last")
    save_model(tiny_model("gpt2"), tmp_path / "run" / "checkpoints" / "best")
    assert slmkit.load(tmp_path / "run").config.family == "gpt2"
    with pytest.raises(SlmError, match="is a run directory, not a checkpoint: load it with slmkit.load"):
        load_model(tmp_path / "run")  # the model layer reads checkpoints only; the API finds a run's
