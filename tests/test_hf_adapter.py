"""An slmkit LoRA adapter exported for the Hugging Face export of its base (slmkit.interop.hf_adapter):
transformers + PEFT give the slmkit model-with-adapter's logits, for every family and fused layout."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from slmkit.cli import main  # noqa: E402
from slmkit.errors import SlmError  # noqa: E402
from slmkit.finetune import LoraOptions, add_lora, load_adapter, save_adapter  # noqa: E402
from slmkit.finetune.chat import extend_embeddings  # noqa: E402
from slmkit.interop.hf import export_hf  # noqa: E402
from slmkit.interop.hf_adapter import export_adapter_hf  # noqa: E402
from slmkit.interop.hf_config import config_from_hf  # noqa: E402
from slmkit.model import ModelConfig, Transformer, load_model, save_model  # noqa: E402

VOCAB = 61
TOLERANCE = 1e-4  # float32; the differences measured are about 1e-6

CONFIGS = {
    # fused c_attn in Conv1D layout (fan_in_fan_out); attn.c_proj and mlp.c_proj share a last name
    "gpt2": ModelConfig(family="gpt2", vocab_size=VOCAB, context_length=48, n_layers=2, d_model=32, n_heads=4,
                        mlp="gelu", d_mlp=64, norm="layernorm", norm_bias=True, position="learned",
                        attention_bias=True, mlp_bias=True, tie_embeddings=False, init_std=0.2),
    # qkv split into q_proj, k_proj, v_proj of different widths (GQA)
    "llama": ModelConfig(family="llama", vocab_size=VOCAB, context_length=64, n_layers=2, d_model=32, n_heads=4,
                         n_kv_heads=2, d_mlp=64, rope_theta=500.0, init_std=0.2, tie_embeddings=False),
    "gemma3": ModelConfig(family="gemma3", vocab_size=VOCAB, context_length=64, n_layers=2, d_model=32, n_heads=4,
                          n_kv_heads=1, head_dim=16, mlp="geglu", d_mlp=64, norm_unit_offset=True,
                          norm_placement="sandwich", rope_theta=10000.0, rope_theta_local=100.0, sliding_window=6,
                          sliding_window_pattern=2, qk_norm=True, embedding_scale=True, query_pre_attn_scalar=16,
                          init_std=0.05),
    # query_key_value interleaved per head; the head is embed_out in the files, lm_head once loaded
    "gpt_neox": config_from_hf(transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, attention_bias=True, tie_word_embeddings=False, use_parallel_residual=False,
        hidden_act="gelu_pytorch_tanh",
        rope_parameters={"rope_type": "default", "rope_theta": 300.0, "partial_rotary_factor": 1.0}).to_dict()),
}
TARGETS = {"gpt2": ("all", "lm_head"), "llama": ("all", "lm_head"), "gemma3": ("all",),
           "gpt_neox": ("all", "lm_head")}


def ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(seed))


def make_adapter(tmp_path, family: str, targets=None, rank: int = 4, added: int = 0):
    """A saved base checkpoint and a saved adapter on it whose A and B are all non-zero; with `added`,
    the adapted model has that many more ids, with random embedding (and untied head) rows."""
    torch.manual_seed(0)
    base = save_model(Transformer(CONFIGS[family]).eval(), tmp_path / "base")
    options = LoraOptions(rank=rank, alpha=2.0 * rank, targets=targets or TARGETS[family])
    model = load_model(base)
    if added:
        config, state = extend_embeddings(model.state_dict(), model.config, model.config.vocab_size + added)
        model = Transformer(config)
        model.load_state_dict(state, strict=False)
        with torch.no_grad():
            model.embed.weight[-added:] = torch.randn(added, config.d_model)
            if not config.tie_embeddings:
                model.lm_head.weight[-added:] = torch.randn(added, config.d_model)
    model = add_lora(model.eval(), options)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return base, save_adapter(model, tmp_path / "adapter", base, options)


@pytest.mark.parametrize("family", list(CONFIGS))
@pytest.mark.parametrize("added", [0, 2], ids=["same vocabulary", "2 added tokens"])
def test_transformers_with_the_exported_adapter_gives_slmkits_adapted_logits(tmp_path, family, added):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    targets = tuple(t for t in TARGETS[family] if t != "lm_head") if added else None  # see the next test
    base, adapter = make_adapter(tmp_path, family, targets=targets, added=added)
    hf_base = export_hf(base, tmp_path / "hf-base", card=False)
    out = export_adapter_hf(adapter, tmp_path / "hf-adapter", base_model=hf_base)
    x = torch.cat([ids(), torch.tensor([[VOCAB + i for i in range(added)]] * 2, dtype=torch.long)], dim=1)
    expected = load_adapter(adapter)(x)
    if not added:
        plain = load_model(base)(x)
        assert (plain - expected).abs().max() > 100 * TOLERANCE  # the adapter moves the logits: the check can fail

    hf = AutoModelForCausalLM.from_pretrained(hf_base)
    if added:
        hf.resize_token_embeddings(VOCAB + added)
    model = PeftModel.from_pretrained(hf, str(out)).eval()
    with torch.no_grad():
        got = model(x).logits
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < TOLERANCE
    with torch.no_grad():  # merged into the HF weights by PEFT, the same again
        merged = model.merge_and_unload()(x).logits
    assert (merged - expected).abs().max() < TOLERANCE


def test_the_exported_files_use_hf_module_names_and_name_the_base(tmp_path):
    base, adapter = make_adapter(tmp_path, "llama", targets=("attention",), rank=2)
    hf_base = export_hf(base, tmp_path / "hf-base", card=False)
    out = export_adapter_hf(adapter, tmp_path / "hf-adapter", base_model=hf_base)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(hf_base)
    assert config["r"] == 2 and config["lora_alpha"] == 4.0 and config["task_type"] == "CAUSAL_LM"
    assert sorted(config["target_modules"]) == ["self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj",
                                                "self_attn.v_proj"]
    from safetensors.torch import load_file

    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight" in tensors
    assert tensors["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"].shape == (16, 2)  # 2 kv heads
    assert len(tensors) == 2 * 4 * 2  # A and B of 4 modules in 2 layers
    assert "PeftModel.from_pretrained" in (out / "README.md").read_text()

    from peft import AutoPeftModelForCausalLM  # loads the base the config names

    model = AutoPeftModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        assert (model(ids()).logits - load_adapter(adapter)(ids())).abs().max() < TOLERANCE


def test_added_tokens_with_an_adapter_on_an_untied_head_are_refused_with_the_merge_route(tmp_path):
    base, adapter = make_adapter(tmp_path, "llama", targets=("qkv", "lm_head"), rank=2, added=2)
    with pytest.raises(SlmError, match=r"adapts the output head and adds 2 token\(s\).*slm merge-lora"):
        export_adapter_hf(adapter, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gpt2_attention_output_alone_does_not_reach_the_mlp_projection_of_the_same_name(tmp_path):
    base, adapter = make_adapter(tmp_path, "gpt2", targets=("out",), rank=2)
    out = export_adapter_hf(adapter, tmp_path / "hf-adapter")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["target_modules"] == ["attn.c_proj"] and config["fan_in_fan_out"] is True
    assert config["base_model_name_or_path"] is None


def test_an_hf_directory_that_is_not_the_bases_export_is_refused(tmp_path):
    base, adapter = make_adapter(tmp_path, "llama", targets=("qkv",), rank=2)
    torch.manual_seed(7)
    other = save_model(Transformer(CONFIGS["llama"]), tmp_path / "other")
    hf_other = export_hf(other, tmp_path / "hf-other", card=False)
    with pytest.raises(SlmError, match=r"is not the Hugging Face export of adapter .*differs; export the base"):
        export_adapter_hf(adapter, tmp_path / "out", base_model=hf_other)
    wider = save_model(Transformer(CONFIGS["llama"].replace(d_model=64, d_mlp=96)), tmp_path / "wide")
    hf_wide = export_hf(wider, tmp_path / "hf-wide", card=False)
    with pytest.raises(SlmError, match=r"q_proj.weight is \(64, 64\), the adapter needs \(32, 32\)"):
        export_adapter_hf(adapter, tmp_path / "out", base_model=hf_wide)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def chat_finetune(tmp_path_factory):
    """`slm finetune --lora` on a tiny base without chat tokens: the adapter adds <|im_start|> and
    <|im_end|> (two embedding rows) beside its LoRA matrices."""
    from train_support import train_bpe_base, write_repeat_rows

    from slmkit import api

    root = tmp_path_factory.mktemp("chat")
    train_bpe_base(root, root / "base", documents=12, steps=4, report=False)
    rows = write_repeat_rows(root / "rows.jsonl")
    fast = ["train.max_steps=6", "train.eval_interval=6", "train.eval_batches=2", "train.batch_size=4",
            "train.lr=3e-3", "train.warmup_steps=1", "train.precision=\"fp32\"", "train.device=\"cpu\"",
            "train.tensorboard=false", "train.wandb=false", "train.threads=1"]
    api.finetune(root / "base", api.FinetuneOptions(data=str(rows), out=str(root / "sft"), data_dir=str(root / "sft.data"),
                                                    overrides=fast, lora=True), quiet=True)
    return root


def test_a_chat_fine_tunes_adapter_carries_its_added_tokens_and_chat_template(chat_finetune, tmp_path):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmkit.finetune.chat import render_chat
    from slmkit.tokenizer import load_tokenizer

    adapter = chat_finetune / "sft" / "adapter"
    meta = json.loads((adapter / "slmkit_adapter.json").read_text())
    base_vocab, vocab = meta["base_model"]["vocab_size"], meta["added_tokens"]["vocab_size"]
    assert vocab == base_vocab + 2
    hf_base = export_hf(chat_finetune / "base", tmp_path / "hf-base", card=False, audit=False)
    out = export_adapter_hf(adapter, tmp_path / "hf-adapter", base_model=hf_base)
    assert json.loads((out / "adapter_config.json").read_text())["trainable_token_indices"] == \
        {"embed_tokens": [base_vocab, base_vocab + 1]}
    assert f"base.resize_token_embeddings({vocab})" in (out / "README.md").read_text()

    # the chat template: transformers' ids for a conversation are slmkit's
    messages = [{"role": "user", "content": "repeat king"}]
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    hf_ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                return_dict=False))
    assert hf_ids == render_chat(load_tokenizer(adapter), messages, add_generation_prompt=True)[0]
    x = torch.tensor([hf_ids])
    assert x.max() >= base_vocab  # the added tokens are in the input

    expected = load_adapter(adapter)(x)
    base = AutoModelForCausalLM.from_pretrained(hf_base)
    base.resize_token_embeddings(vocab)
    with torch.no_grad():
        got = PeftModel.from_pretrained(base, str(out)).eval()(x).logits
        auto = AutoPeftModelForCausalLM.from_pretrained(str(out)).eval()(x).logits  # resizes from the tokenizer
    assert got.shape[-1] == vocab
    assert (got - expected).abs().max() < TOLERANCE and (auto - expected).abs().max() < TOLERANCE


def test_a_modified_adapter_and_a_checkpoint_are_refused(tmp_path):
    base, adapter = make_adapter(tmp_path, "llama", targets=("qkv",), rank=2)
    with pytest.raises(SlmError, match="is not an slmkit LoRA adapter"):
        export_adapter_hf(base, tmp_path / "out")
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(SlmError, match="does not match the hash"):
        export_adapter_hf(adapter, tmp_path / "out")


def test_cli_export_hf_of_an_adapter_writes_a_peft_adapter_and_force_spares_the_input(tmp_path, capsys):
    base, adapter = make_adapter(tmp_path, "llama", targets=("qkv",), rank=2)
    hf_base = tmp_path / "hf-base"
    assert main(["export-hf", str(base), str(hf_base), "--no-card", "--no-audit"]) == 0
    out = tmp_path / "hf-adapter"
    assert main(["export-hf", str(adapter), str(out), "--base-model", str(hf_base)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote PEFT adapter {out}" in printed and "PeftModel.from_pretrained" in printed
    assert main(["export-hf", str(adapter), str(out)]) == 2  # exists, no --force
    assert "already exists" in capsys.readouterr().err
    assert main(["export-hf", str(adapter), str(out), "--force", "--base-model", "someone/nano"]) == 0
    assert "someone/nano is no local directory, so it is recorded as a Hugging Face Hub id" in capsys.readouterr().out
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "someone/nano"
    assert main(["export-hf", str(adapter), str(adapter), "--force"]) == 2  # never the input
    assert (adapter / "slmkit_adapter.json").is_file()
    assert main(["export-hf", str(base), str(tmp_path / "x"), "--base-model", str(hf_base)]) == 2
    assert "--base-model names the base of a LoRA adapter" in capsys.readouterr().err
    assert main(["export-hf", str(adapter), str(tmp_path / "y"), "--base-model", str(tmp_path / "hf-bas")]) == 2
    assert "hf-bas: no such directory (and not a Hub id" in capsys.readouterr().err
