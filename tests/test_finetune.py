"""`slm finetune`: a fine-tune is an ordinary training run on chat rows (loss on responses only), full
weights or LoRA, resumable exactly, answering in the chat template afterwards; bad input is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

from train_support import WORDS, train_bpe_base  # noqa: E402

import slmkit  # noqa: E402
from slmkit import api  # noqa: E402
from slmkit.errors import SlmError  # noqa: E402
from slmkit.finetune.chat import has_chat_tokens  # noqa: E402
from slmkit.model.checkpoint import load_state  # noqa: E402
from slmkit.tokenizer import load_tokenizer  # noqa: E402

FAST = ["train.max_steps=24", "train.eval_interval=12", "train.eval_batches=4", "train.batch_size=4",
        "train.lr=3e-3", "train.warmup_steps=2", "train.precision=\"fp32\"", "train.device=\"cpu\"",
        "train.tensorboard=false", "train.wandb=false", "train.log_interval=4", "train.threads=1"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny model on a 512-token byte-level BPE (no chat tokens), trained a few steps, context 96."""
    root = tmp_path_factory.mktemp("base")
    return train_bpe_base(root, root / "run")


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    """Rows in the base's alphabet: "repeat W" -> "W W." (learnable in a few dozen steps)."""
    path = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    lines = [json.dumps({"prompt": f"repeat {word}", "response": f"{word} {word}."}) for word in WORDS]
    lines += [json.dumps({"messages": [{"role": "user", "content": f"say {word}"},
                                       {"role": "assistant", "content": f"{word}."}]}) for word in WORDS]
    path.write_text("\n".join(lines) + "\n")
    return path


def finetune(base, rows, out, **options):
    overrides = options.pop("overrides", [])
    return api.finetune(base, api.FinetuneOptions(data=str(rows), out=str(out), data_dir=str(out) + ".data",
                                                  overrides=[*FAST, *overrides], **options), quiet=True)


def test_full_fine_tune_adds_the_chat_tokens_and_lowers_the_held_out_response_loss(base, rows, tmp_path):
    result = finetune(base, rows, tmp_path / "sft")
    summary = json.loads((tmp_path / "sft" / "finetune.json").read_text())
    assert summary["added_chat_tokens"] is True
    assert summary["val_loss"] < summary["base_val_loss"] - 0.5, summary
    assert result.final_eval["val_loss"] == pytest.approx(summary["val_loss"])
    tokenizer = load_tokenizer(tmp_path / "sft" / "checkpoints" / "last")
    base_vocab = load_tokenizer(base / "checkpoints" / "last").vocab_size
    assert has_chat_tokens(tokenizer) and tokenizer.vocab_size == base_vocab + 2
    model = slmkit.load(tmp_path / "sft")
    assert model.config.vocab_size == base_vocab + 2
    record = json.loads((tmp_path / "sft" / "config.json").read_text())
    base_sha = json.loads((base / "checkpoints" / "best" / "config.json").read_text())["weights_sha256"]
    assert record["finetune"] == {"lora": None, "packing": True, "base_weights_sha256": base_sha}
    answers = (tmp_path / "sft" / "answers.md").read_text()
    assert "- reference:" in answers and "Exact matches:" in answers
    report = (tmp_path / "sft" / "report.md").read_text()
    assert "## Fine-tune" in report and f"| base model | {summary['base_val_loss']:.4f}" in report
    assert summary["examples"]["val"]["examples"] >= 1 and summary["examples"]["train"]["truncated"] == 0


def test_lora_fine_tune_trains_adapters_and_added_rows_only_and_saves_merged_weights(base, rows, tmp_path):
    finetune(base, rows, tmp_path / "lora", lora=True, lora_targets=["all"])
    base_config, base_weights, _ = load_state(base / "checkpoints" / "last")
    config, merged, _ = load_state(tmp_path / "lora" / "checkpoints" / "last")
    vocab = base_config.vocab_size
    assert config.vocab_size == vocab + 2
    # the base's embedding rows are untouched bit for bit; the two added rows moved from their mean start
    assert torch.equal(merged["embed.weight"][:vocab], base_weights["embed.weight"])
    mean = base_weights["embed.weight"].float().mean(dim=0)
    assert not torch.allclose(merged["embed.weight"][vocab:].float(), mean.expand(2, -1))
    # norms are not adapted: equal; adapted matrices differ from the base by the adapters' update
    assert torch.equal(merged["blocks.0.attn_norm.weight"], base_weights["blocks.0.attn_norm.weight"])
    assert not torch.equal(merged["blocks.0.attn.qkv.weight"], base_weights["blocks.0.attn.qkv.weight"])
    summary = json.loads((tmp_path / "lora" / "finetune.json").read_text())
    assert summary["lora"]["rank"] == 8 and summary["val_loss"] < summary["base_val_loss"]
    # the adapter alone: small, and merged into its base it is the run's last checkpoint
    adapter = tmp_path / "lora" / "adapter"
    adapter_bytes = sum(f.stat().st_size for f in adapter.iterdir())
    assert adapter_bytes < (base / "checkpoints" / "last" / "model.safetensors").stat().st_size / 2
    api.merge_adapter(adapter, tmp_path / "merged")
    _, remerged, _ = load_state(tmp_path / "merged")
    for name, tensor in merged.items():
        torch.testing.assert_close(remerged[name], tensor, atol=1e-6, rtol=0, msg=name)
    assert has_chat_tokens(load_tokenizer(tmp_path / "merged"))


def test_an_interrupted_lora_fine_tune_resumes_exactly(base, rows, tmp_path):
    whole = finetune(base, rows, tmp_path / "whole", lora=True)
    stop = lambda trainer: trainer.request_stop() if trainer.step == 10 else None  # noqa: E731
    plan_options = api.FinetuneOptions(data=str(rows), out=str(tmp_path / "part"), data_dir=str(tmp_path / "whole.data"),
                                       overrides=FAST, lora=True)
    first = api.finetune(base, plan_options, quiet=True, on_step=stop)
    assert first.interrupted and first.step == 10
    resumed = api.train(resume=tmp_path / "part", quiet=True)
    assert resumed.step == whole.step
    _, expected, _ = load_state(tmp_path / "whole" / "checkpoints" / "last")
    _, got, _ = load_state(tmp_path / "part" / "checkpoints" / "last")
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_a_lora_fine_tune_whose_base_was_replaced_is_not_resumed(base, rows, tmp_path):
    import shutil

    from slmkit.model.checkpoint import save_model

    own_base = tmp_path / "base"
    shutil.copytree(base / "checkpoints" / "last", own_base)
    stop = lambda trainer: trainer.request_stop() if trainer.step == 4 else None  # noqa: E731
    options = api.FinetuneOptions(data=str(rows), out=str(tmp_path / "part"), data_dir=str(tmp_path / "data"),
                                  overrides=FAST, lora=True)
    assert api.finetune(own_base, options, quiet=True, on_step=stop).interrupted
    model = slmkit.load(own_base)
    with torch.no_grad():
        model.embed.weight.add_(0.01)
    save_model(model, own_base)  # another model at the same path, its own hash consistent
    with pytest.raises(SlmError, match="holds other weights now"):
        api.train(resume=tmp_path / "part", quiet=True)


def test_a_fine_tuned_model_chats_in_the_template(base, rows, tmp_path):
    finetune(base, rows, tmp_path / "sft", overrides=["train.max_steps=12"])
    model = slmkit.load(tmp_path / "sft")
    tokenizer = api.model_tokenizer(model)
    session = api.ChatSession(model, tokenizer, api.resolve_config("greedy", max_new_tokens=8), system="be brief")
    answer = session.reply("repeat river")
    assert "<|im_end|>" not in answer and "<|im_start|>" not in answer
    assert [m["role"] for m in session.messages] == ["user", "assistant"]
    ids = session.prompt_ids()
    start, end = tokenizer.vocab_size - 2, tokenizer.vocab_size - 1
    assert ids.count(start) == 4 and ids.count(end) == 3  # system, user, assistant, the new header
    # the command line: one user turn per line, the answer printed
    done = subprocess.run([sys.executable, "-m", "slmkit", "chat", str(tmp_path / "sft"), "--preset", "greedy",
                           "--max-new-tokens", "8"], input="repeat river\n", capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == answer.strip()


def test_chat_refuses_system_for_a_model_without_a_template(base):
    done = subprocess.run([sys.executable, "-m", "slmkit", "chat", str(base), "--system", "hi"], input="x\n",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--system needs a model with a chat template" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "repeat river"}', r"line 3.*response"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', r"line 3.*bot"),
    ("not json", r"line 3"),
])
def test_a_bad_row_names_its_line_and_nothing_is_trained(base, tmp_path, line, message):
    rows = tmp_path / "bad.jsonl"
    good = json.dumps({"prompt": "repeat river", "response": "river river."})
    rows.write_text(f"{good}\n{good}\n{line}\n")
    with pytest.raises(SlmError, match=message):
        finetune(base, rows, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_lora_on_a_layer_that_does_not_exist_is_one_line(base, rows, tmp_path):
    with pytest.raises(SlmError, match="attn_proj"):
        finetune(base, rows, tmp_path / "run", lora=True, lora_targets=["attn_proj"])
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_model_overrides_and_a_missing_base_are_refused(base, rows, tmp_path):
    with pytest.raises(SlmError, match="keeps the base model's shape"):
        finetune(base, rows, tmp_path / "run", overrides=["n_layers=4"])
    with pytest.raises(SlmError, match="not found"):
        finetune(tmp_path / "nothing", rows, tmp_path / "run")


def test_an_exported_fine_tune_gives_transformers_the_same_chat_ids(base, rows, tmp_path):
    transformers = pytest.importorskip("transformers")
    from slmkit.finetune.chat import render_chat

    finetune(base, rows, tmp_path / "sft", overrides=["train.max_steps=6"], lora=True)
    api.merge_adapter(tmp_path / "sft" / "adapter", tmp_path / "merged")
    api.export_hf(tmp_path / "merged", tmp_path / "hf")
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "repeat river"},
                {"role": "assistant", "content": "river river."}, {"role": "user", "content": "say king"}]
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    expected, _ = render_chat(load_tokenizer(tmp_path / "merged"), messages, add_generation_prompt=True)
    ids = hf_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    assert list(ids["input_ids"] if hasattr(ids, "keys") else ids) == expected
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    ours = slmkit.load(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([expected])).logits, ours(torch.tensor([expected])),
                                   atol=1e-4, rtol=1e-4)
