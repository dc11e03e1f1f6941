"""LoRA adapters (slmkit.finetune.lora): only adapters train, merging is exact, adapters save alone,
refuse a foreign base, and load back through PEFT itself."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F

from slmkit.errors import SlmError
from slmkit.finetune import (
    LoraOptions,
    adapter_state,
    add_lora,
    format_lora_summary,
    is_adapter_dir,
    load_adapter,
    lora_summary,
    merge_adapter,
    merge_lora,
    save_adapter,
)
from slmkit.model.checkpoint import load_model, save_model
from slmkit.model.config import ModelConfig
from slmkit.model.transformer import Transformer

pytest.importorskip("peft")

LLAMA = dict(family="llama", vocab_size=96, context_length=32, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2,
             mlp="swiglu", d_mlp=64, norm="rmsnorm", position="rope", tie_embeddings=True)
GPT2 = dict(family="gpt2", vocab_size=96, context_length=32, n_layers=2, d_model=32, n_heads=4, mlp="gelu",
            d_mlp=64, norm="layernorm", norm_bias=True, position="learned", attention_bias=True, mlp_bias=True,
            tie_embeddings=True)
UNTIED = {**LLAMA, "tie_embeddings": False}


def tiny_model(values: dict, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(**values)).eval()


def tokens(seed: int = 1, batch: int = 2, length: int = 12) -> torch.Tensor:
    return torch.randint(0, 96, (batch, length), generator=torch.Generator().manual_seed(seed))


def randomise_adapters(model, seed: int = 3) -> None:
    """Give every lora_B non-zero values (a fresh adapter's B is zero, which would hide merge bugs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_B." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


def train_steps(model, steps: int, lr: float = 1e-2) -> list[float]:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    batch = tokens(seed=5, batch=4, length=16)
    losses = []
    for _ in range(steps):
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def saved_base(tmp_path, values: dict = LLAMA, seed: int = 0, name: str = "base"):
    directory = tmp_path / name
    save_model(tiny_model(values, seed), directory)
    return directory


# -- adding, training, merging --------------------------------------------------------------------
def test_a_fresh_adapter_leaves_the_outputs_unchanged_and_keeps_the_transformer_class():
    model = tiny_model(LLAMA)
    x = tokens()
    before = model(x)
    add_lora(model, LoraOptions(rank=4, targets=("all",)))
    assert type(model) is Transformer
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_only_adapter_parameters_require_grad():
    model = add_lora(tiny_model(LLAMA), LoraOptions(rank=4, targets=("attention",)))
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    expected = sorted(f"blocks.{i}.attn.{layer}.{part}.default.weight"
                      for i in range(2) for layer in ("qkv", "out") for part in ("lora_A", "lora_B"))
    assert trainable == expected


@pytest.mark.parametrize("values", [LLAMA, GPT2], ids=["llama-swiglu-gqa", "gpt2-biases-tied"])
def test_merged_model_gives_the_adapted_models_logits(values):
    model = add_lora(tiny_model(values), LoraOptions(rank=4, alpha=8, targets=("all",)))
    randomise_adapters(model)
    x = tokens()
    adapted = model(x)
    base = tiny_model(values)(x)
    assert (adapted - base).abs().max() > 1e-2  # the adapters do something, so agreement below means something
    merged = merge_lora(model)
    assert type(merged) is Transformer
    assert list(merged.state_dict()) == list(Transformer(ModelConfig(**values)).state_dict())
    torch.testing.assert_close(merged(x), adapted, rtol=0, atol=1e-5)


def test_merge_of_an_adapted_untied_head_changes_only_the_head():
    model = add_lora(tiny_model(UNTIED), LoraOptions(rank=2, targets=("lm_head",)))
    randomise_adapters(model)
    x = tokens()
    merged = merge_lora(model)
    torch.testing.assert_close(merged(x), model(x), rtol=0, atol=1e-5)
    base = tiny_model(UNTIED)
    assert torch.equal(merged.embed.weight, base.embed.weight)
    assert not torch.equal(merged.lm_head.weight, base.lm_head.weight)


def test_training_changes_only_the_adapters_and_the_loss_falls():
    model = add_lora(tiny_model(LLAMA), LoraOptions(rank=4, alpha=8, targets=("all",)))
    base_before = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    adapters_before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    losses = train_steps(model, 12)
    assert losses[-1] < losses[0] - 0.1
    parameters = dict(model.named_parameters())
    for name, tensor in base_before.items():
        assert torch.equal(parameters[name], tensor), name  # bit for bit
    changed = [name for name, tensor in adapters_before.items() if not torch.equal(parameters[name], tensor)]
    assert sorted(changed) == sorted(adapters_before)


# -- options and targets --------------------------------------------------------------------------
@pytest.mark.parametrize("options, message", [
    (LoraOptions(rank=0), "lora rank = 0"),
    (LoraOptions(rank=2.5), "lora rank = 2.5"),
    (LoraOptions(alpha=0), "lora alpha = 0"),
    (LoraOptions(alpha=-4.0), "lora alpha = -4.0"),
    (LoraOptions(dropout=1.0), "lora dropout = 1.0"),
    (LoraOptions(dropout=-0.1), "lora dropout = -0.1"),
    (LoraOptions(targets=()), "lora targets is empty"),
    (LoraOptions(targets=("q", "v")), "fused Linear, qkv"),
])
def test_bad_options_are_refused_with_the_value(options, message):
    with pytest.raises(SlmError, match=message):
        options.validate()


def test_an_unknown_target_names_itself_and_the_layers_that_exist():
    model = tiny_model(GPT2)
    with pytest.raises(SlmError) as error:
        add_lora(model, LoraOptions(targets=("qkv", "q_proj")))
    message = str(error.value)
    assert "'q_proj' matches no linear layer" in message
    assert "qkv, out, up, down, lm_head" in message  # a GELU MLP has no gate
    assert not any(p.requires_grad is False for p in model.parameters())  # nothing was changed


def test_gate_is_refused_on_a_gelu_mlp_but_the_mlp_group_takes_what_exists():
    with pytest.raises(SlmError, match="'gate' matches no linear layer"):
        add_lora(tiny_model(GPT2), LoraOptions(targets=("gate",)))
    model = add_lora(tiny_model(GPT2), LoraOptions(rank=2, targets=("mlp",)))
    assert lora_summary(model)["targets"] == ["up", "down"]


def test_o_means_the_attention_output_and_a_comma_string_is_split():
    model = add_lora(tiny_model(LLAMA), LoraOptions(rank=2, targets="qkv, o"))
    assert lora_summary(model)["targets"] == ["qkv", "out"]
    assert LoraOptions(targets=["up,down", "qkv"]).targets == ("up", "down", "qkv")


def test_a_tied_head_is_refused_as_a_target():
    with pytest.raises(SlmError, match="tied to the token embedding"):
        add_lora(tiny_model(LLAMA), LoraOptions(targets=("lm_head",)))


def test_summary_counts_trainable_and_total_parameters_exactly():
    model = tiny_model(LLAMA)
    total_base = model.num_parameters()
    add_lora(model, LoraOptions(rank=4, targets=("attention",)))
    summary = lora_summary(model)
    # per block: qkv 32 -> 32 + 2*16 = 64 rows: 4*(32 + 64); out 32 -> 32: 4*(32 + 32)
    trainable = 2 * (4 * (32 + 64) + 4 * (32 + 32))
    assert summary["trainable_parameters"] == trainable == 1280
    assert summary["total_parameters"] == total_base + trainable
    assert summary["adapter_bytes"] == 4 * trainable
    assert summary["optimizer_state_bytes"] == 8 * trainable
    assert format_lora_summary(summary) == (
        f"LoRA rank 4 on 4 layers (qkv, out): 1,280 trainable of {total_base + trainable:,} parameters "
        f"({100 * trainable / (total_base + trainable):.2f}%), adapters 5 KB, optimizer state 10 KB")


# -- saving and loading ---------------------------------------------------------------------------
def test_save_and_load_give_identical_logits_and_a_small_file(tmp_path):
    base_dir = saved_base(tmp_path)
    model = load_model(base_dir)
    options = LoraOptions(rank=2, alpha=4, targets=("qkv",))
    add_lora(model, options)
    randomise_adapters(model)
    x = tokens()
    expected = model(x)
    adapter_dir = save_adapter(model, tmp_path / "adapter", base_dir, options, extra={"note": "test"})
    assert is_adapter_dir(adapter_dir) and not is_adapter_dir(base_dir)
    meta = json.loads((adapter_dir / "slmkit_adapter.json").read_text())
    base_meta = json.loads((base_dir / "config.json").read_text())
    assert meta["base_weights_sha256"] == base_meta["weights_sha256"]
    assert meta["base_model"] == base_meta["model"] and meta["note"] == "test"
    assert meta["lora"] == {"rank": 2, "alpha": 4, "dropout": 0.0, "targets": ["qkv"]}
    adapter_bytes = (adapter_dir / "adapter_model.safetensors").stat().st_size
    assert adapter_bytes * 20 < (base_dir / "model.safetensors").stat().st_size
    loaded = load_adapter(adapter_dir)
    torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
    assert set(adapter_state(loaded)) == set(adapter_state(model))


def test_an_adapter_refuses_another_base_naming_both(tmp_path):
    base_dir = saved_base(tmp_path)
    other_dir = saved_base(tmp_path, seed=7, name="other")  # same config, other weights
    model = add_lora(load_model(base_dir), LoraOptions(rank=2))
    adapter_dir = save_adapter(model, tmp_path / "adapter", base_dir, LoraOptions(rank=2))
    with pytest.raises(SlmError) as error:
        load_adapter(adapter_dir, base_dir=other_dir)
    message = str(error.value)
    assert f"adapter {adapter_dir} was trained on base {base_dir.resolve()}" in message
    assert f"{other_dir} is a different model" in message


def test_a_model_is_not_saved_against_a_base_of_another_shape(tmp_path):
    base_dir = saved_base(tmp_path)
    model = add_lora(tiny_model(GPT2), LoraOptions(rank=2))
    with pytest.raises(SlmError, match="not built like its base"):
        save_adapter(model, tmp_path / "adapter", base_dir, LoraOptions(rank=2))


def test_options_that_do_not_describe_the_adapters_are_refused_at_save(tmp_path):
    base_dir = saved_base(tmp_path)
    model = add_lora(load_model(base_dir), LoraOptions(rank=2, targets=("all",)))
    with pytest.raises(SlmError, match="not those the model's adapters were added with"):
        save_adapter(model, tmp_path / "adapter", base_dir, LoraOptions(rank=2, targets=("qkv",)))
    with pytest.raises(SlmError, match="not those the model's adapters were added with"):
        save_adapter(model, tmp_path / "adapter", base_dir, LoraOptions(rank=4, targets=("all",)))


def test_a_modified_adapter_file_is_refused(tmp_path):
    base_dir = saved_base(tmp_path)
    model = add_lora(load_model(base_dir), LoraOptions(rank=2))
    adapter_dir = save_adapter(model, tmp_path / "adapter", base_dir, LoraOptions(rank=2))
    with open(adapter_dir / "adapter_model.safetensors", "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x01\x02\x03\x04")
    with pytest.raises(SlmError, match="does not match the hash"):
        load_adapter(adapter_dir)


def test_saving_over_an_existing_directory_needs_overwrite_and_spares_other_folders(tmp_path):
    base_dir = saved_base(tmp_path)
    model = add_lora(load_model(base_dir), LoraOptions(rank=2))
    adapter_dir = save_adapter(model, tmp_path / "adapter", base_dir, LoraOptions(rank=2))
    with pytest.raises(SlmError, match="already exists"):
        save_adapter(model, adapter_dir, base_dir, LoraOptions(rank=2))
    save_adapter(model, adapter_dir, base_dir, LoraOptions(rank=2), overwrite=True)
    with pytest.raises(SlmError, match="will not replace"):
        save_adapter(model, base_dir, base_dir, LoraOptions(rank=2), overwrite=True)


def test_merge_adapter_writes_a_checkpoint_with_the_adapted_logits_and_the_tokenizer(tmp_path):
    base_dir = saved_base(tmp_path)
    (base_dir / "slmkit_tokenizer.json").write_text('{"format": "slmkit-tokenizer"}')
    (base_dir / "tokenizer.json").write_text("{}")
    model = add_lora(load_model(base_dir), LoraOptions(rank=2, targets=("all",)))
    randomise_adapters(model)
    x = tokens()
    expected = model(x)
    adapter_dir = save_adapter(model, tmp_path / "adapter", base_dir, LoraOptions(rank=2, targets=("all",)))
    out = merge_adapter(adapter_dir, tmp_path / "merged")
    merged = load_model(out)
    torch.testing.assert_close(merged(x), expected, rtol=0, atol=1e-5)
    assert (out / "tokenizer.json").read_text() == "{}"
    assert (out / "slmkit_tokenizer.json").is_file()
    recorded = json.loads((out / "config.json").read_text())["merged_lora"]
    assert recorded["adapter"] == str(adapter_dir.resolve())


def test_merge_prefers_the_adapters_own_tokenizer(tmp_path):
    base_dir = saved_base(tmp_path)
    (base_dir / "tokenizer.json").write_text('"base"')
    chat_tokenizer = tmp_path / "chat-tokenizer"
    chat_tokenizer.mkdir()
    (chat_tokenizer / "slmkit_tokenizer.json").write_text('{"format": "slmkit-tokenizer"}')
    (chat_tokenizer / "tokenizer.json").write_text('"chat"')
    model = add_lora(load_model(base_dir), LoraOptions(rank=2))
    adapter_dir = save_adapter(model, tmp_path / "adapter", base_dir, LoraOptions(rank=2),
                               tokenizer_dir=chat_tokenizer)
    out = merge_adapter(adapter_dir, tmp_path / "merged")
    assert (out / "tokenizer.json").read_text() == '"chat"'
    with pytest.raises(SlmError, match="no tokenizer in"):
        save_adapter(model, tmp_path / "adapter2", base_dir, LoraOptions(rank=2), tokenizer_dir=tmp_path / "adapter2x")


def test_a_moved_base_is_named_and_another_path_can_be_given(tmp_path):
    base_dir = saved_base(tmp_path)
    model = add_lora(load_model(base_dir), LoraOptions(rank=2))
    adapter_dir = save_adapter(model, tmp_path / "adapter", base_dir, LoraOptions(rank=2))
    moved = base_dir.rename(tmp_path / "moved")
    with pytest.raises(SlmError, match=f"the base model of adapter {adapter_dir}, {base_dir.resolve()}, is not there"):
        load_adapter(adapter_dir)
    assert load_adapter(adapter_dir, base_dir=moved).checkpoint_dir == moved


def test_a_checkpoint_is_not_an_adapter(tmp_path):
    base_dir = saved_base(tmp_path)
    assert not is_adapter_dir(base_dir) and not is_adapter_dir(tmp_path / "nothing")
    with pytest.raises(SlmError, match="is not an slmkit LoRA adapter"):
        load_adapter(base_dir)


# -- PEFT: the ecosystem reads our files; its absence is one clear line ---------------------------
def test_saved_adapter_loads_through_peft_itself(tmp_path):
    from peft import PeftModel

    base_dir = saved_base(tmp_path)
    options = LoraOptions(rank=4, alpha=8, targets=("attention", "mlp"))
    model = add_lora(load_model(base_dir), options)
    randomise_adapters(model)
    x = tokens()
    expected = model(x)
    adapter_dir = save_adapter(model, tmp_path / "adapter", base_dir, options)
    through_peft = PeftModel.from_pretrained(load_model(base_dir), str(adapter_dir)).eval()
    torch.testing.assert_close(through_peft(x), expected, rtol=0, atol=1e-6)


def test_missing_peft_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    with pytest.raises(SlmError, match=r"LoRA needs the peft package: pip install 'slmkit\[finetune\]'"):
        add_lora(tiny_model(LLAMA), LoraOptions())
