"""ONNX export: onnxruntime gives PyTorch's logits and slmkit's greedy tokens.

Tiny random GPT-2 (learned positions), Llama (GQA, rope) and Gemma 3 (sliding window 6 with a full
layer every 2nd, two rope thetas, QK-norm) models are exported once each with the KV cache; the
Gemma one also without. Sequences are 30 tokens, five times the window, so a window that did not
hold in the graph would show (the negative control proves the comparison would see it).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from slmkit.cli import main  # noqa: E402
from slmkit.errors import SlmError  # noqa: E402
from slmkit.generate import generate  # noqa: E402
from slmkit.interop.onnx import EXPORT_MARKER, OnnxModel, export_onnx  # noqa: E402
from slmkit.model import ModelConfig, Transformer, save_model  # noqa: E402
from slmkit.model.checkpoint import load_state  # noqa: E402
from slmkit.utils import check_replaceable  # noqa: E402

VOCAB = 61
TOLERANCE = 1e-4  # float32; the differences measured are about 1e-6 (logits up to about 8)

CONFIGS = {
    "gpt2": ModelConfig(family="gpt2", vocab_size=VOCAB, context_length=48, n_layers=2, d_model=32, n_heads=4,
                        mlp="gelu", d_mlp=64, norm="layernorm", norm_bias=True, position="learned",
                        attention_bias=True, mlp_bias=True, tie_embeddings=False, init_std=0.2),
    "llama": ModelConfig(family="llama", vocab_size=VOCAB, context_length=64, n_layers=2, d_model=32, n_heads=4,
                         n_kv_heads=2, d_mlp=64, rope_theta=500.0, init_std=0.2),
    "gemma3": ModelConfig(family="gemma3", vocab_size=VOCAB, context_length=64, n_layers=2, d_model=32, n_heads=4,
                          n_kv_heads=1, head_dim=16, mlp="geglu", d_mlp=64, norm_unit_offset=True,
                          norm_placement="sandwich", rope_theta=10000.0, rope_theta_local=100.0, sliding_window=6,
                          sliding_window_pattern=2, qk_norm=True, embedding_scale=True, query_pre_attn_scalar=16,
                          init_std=0.05),
}
FAMILIES = list(CONFIGS)


def _model(family: str) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(CONFIGS[family]).eval()
    with torch.no_grad():  # norm weights away from their init, so a dropped (1 + w) or bias would show
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.3 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-ckpt")
    return {family: (_model(family), save_model(_model(family), root / family)) for family in FAMILIES}


@pytest.fixture(scope="module")
def exports(checkpoints, tmp_path_factory):
    """Each family exported with the KV cache: {family: (torch model, OnnxModel)}."""
    root = tmp_path_factory.mktemp("onnx-out")
    return {family: (model, OnnxModel(export_onnx(ckpt, root / family), threads=1))
            for family, (model, ckpt) in checkpoints.items()}


def _tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _cached_logits(onnx_model: OnnxModel, tokens: torch.Tensor, prefill: int) -> np.ndarray:
    """Logits of every position: `prefill` tokens in one call, then one token per call over the cache."""
    logits, past = onnx_model.forward(tokens[:, :prefill].numpy())
    steps = [logits]
    for t in range(prefill, tokens.shape[1]):
        logits, past = onnx_model.forward(tokens[:, t:t + 1].numpy(), past=past)
        steps.append(logits)
    return np.concatenate(steps, axis=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_onnxruntime_logits_with_cache_match_pytorch_through_prefill_and_one_token_steps(exports, family):
    model, onnx_model = exports[family]
    tokens = _tokens(2, 30)
    with torch.no_grad():
        expected = model(tokens).numpy()
    got = _cached_logits(onnx_model, tokens, prefill=12)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOLERANCE
    assert np.abs(expected).max() > 0.5  # logits far from zero: the comparison means something


def test_gemma_window_holds_in_the_graph_beyond_the_window(exports):
    """Negative control: the same weights without the window give logits far from the ONNX ones after
    the window is exceeded, so the parity above proves the window holds with a cache of 30 > 6 steps."""
    model, onnx_model = exports["gemma3"]
    tokens = _tokens(2, 30)
    windowless = Transformer(model.config.replace(sliding_window=1000)).eval()  # a window that never binds
    windowless.load_state_dict(model.state_dict())
    with torch.no_grad():
        without_window = windowless(tokens).numpy()
    got = _cached_logits(onnx_model, tokens, prefill=12)
    assert np.abs(got[:, :6] - without_window[:, :6]).max() <= TOLERANCE  # within the window: the same
    assert np.abs(got[:, 6:] - without_window[:, 6:]).max() > 100 * TOLERANCE


def test_cache_names_and_shapes_follow_the_genai_convention(exports):
    model, onnx_model = exports["llama"]
    inputs = {i.name: i.shape for i in onnx_model.session.get_inputs()}
    outputs = {o.name: o.shape for o in onnx_model.session.get_outputs()}
    assert inputs["input_ids"] == ["batch", "seq"]
    assert inputs["attention_mask"] == ["batch", "total_seq"]
    assert inputs["past_key_values.1.value"] == ["batch", 2, "past_seq", 8]  # n_kv_heads 2 (GQA), head_dim 8
    assert outputs["logits"] == ["batch", "seq", VOCAB]
    assert outputs["present.0.key"] == ["batch", 2, "total_seq", 8]
    assert len(inputs) == 2 + 2 * 2 and len(outputs) == 1 + 2 * 2
    genai = json.loads((onnx_model.directory / "genai_config.json").read_text())
    decoder = genai["model"]["decoder"]
    assert decoder["inputs"]["past_key_names"] == "past_key_values.%d.key"
    assert decoder["outputs"]["present_value_names"] == "present.%d.value"
    assert (decoder["num_key_value_heads"], decoder["head_size"]) == (2, 8)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_decoding_through_onnxruntime_gives_slmkits_tokens(exports, family):
    model, onnx_model = exports[family]
    prompts = [[5, 17, 3, 42, 8], [9, 1, 33]]  # one batch, left-padded in the graph
    expected = [generate(model, prompt, "greedy", max_new_tokens=24).tokens for prompt in prompts]
    assert onnx_model.generate(prompts, max_new_tokens=24) == expected
    assert onnx_model.generate(prompts[1], max_new_tokens=24) == expected[1]
    assert len(set(expected[0])) > 1  # not one token repeated: a wrong logit would change the path


def test_greedy_stops_at_the_end_of_text_id_as_slmkit_does(exports):
    model, onnx_model = exports["llama"]
    full = generate(model, [5, 17, 3], "greedy", max_new_tokens=20).tokens
    eot = full[4]
    expected = generate(model, [5, 17, 3], "greedy", max_new_tokens=20, eot_id=eot).tokens
    assert onnx_model.generate([5, 17, 3], max_new_tokens=20, eot_id=eot) == expected == full[:full.index(eot)]


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory):
    """The Gemma model with a char tokenizer, exported without the cache by `slm export-onnx --no-cache`:
    (torch model, tokenizer, checkpoint, OUT, what the command printed)."""
    from slmkit.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("onnx-cli")
    tokenizer = train_tokenizer(["to be or not to be, that is the question"] * 4, "char")
    torch.manual_seed(0)
    model = Transformer(CONFIGS["gemma3"].replace(vocab_size=tokenizer.vocab_size)).eval()
    ckpt = save_model(model, root / "ckpt")
    tokenizer.save(ckpt)
    out = root / "onnx"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["export-onnx", str(ckpt), str(out), "--no-cache"]) == 0
    return model, tokenizer, ckpt, out, printed.getvalue()


def test_export_without_cache_maps_input_ids_to_logits_equal_to_pytorch_beyond_the_window(cli_export):
    model, _, _, out, _ = cli_export
    onnx_model = OnnxModel(out, threads=1)
    assert [i.name for i in onnx_model.session.get_inputs()] == ["input_ids"]
    assert [o.name for o in onnx_model.session.get_outputs()] == ["logits"]
    vocab = model.config.vocab_size
    for batch, length in ((1, 30), (3, 7)):  # 30 tokens: five windows
        tokens = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            expected = model(tokens).numpy()
        got, present = onnx_model.forward(tokens.numpy())
        assert present == [] and np.abs(got - expected).max() <= TOLERANCE
    prompt = [5, 1, 3, 12, 8]
    expected = generate(model, prompt, "greedy", max_new_tokens=20, eot_id=-1).tokens
    assert onnx_model.generate(prompt, max_new_tokens=20, eot_id=-1) == expected
    with pytest.raises(SlmError, match="without the KV cache.*one length"):
        onnx_model.generate([[1, 2], [3]], max_new_tokens=2)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_export_without_cache_matches_pytorch_for_gpt2_and_llama(checkpoints, tmp_path, family):
    model, ckpt = checkpoints[family]
    onnx_model = OnnxModel(export_onnx(ckpt, tmp_path / "nocache", cache=False), threads=1)
    tokens = _tokens(2, 30)
    with torch.no_grad():
        expected = model(tokens).numpy()
    assert np.abs(onnx_model.forward(tokens.numpy())[0] - expected).max() <= TOLERANCE


def test_cli_export_onnx_writes_model_tokenizer_and_configs(cli_export, capsys):
    from slmkit.tokenizer import load_tokenizer

    model, tokenizer, ckpt, out, printed = cli_export
    size = (out / "model.onnx").stat().st_size / 1e6
    assert printed == f"wrote ONNX model {out} (float32, {size:,.1f} MB, without the KV cache)\n"
    assert {"model.onnx", "config.json", "genai_config.json", EXPORT_MARKER} <= {p.name for p in out.iterdir()}
    meta = json.loads((out / "config.json").read_text())
    assert meta["cache"] is False and meta["opset"] == 20 and meta["inputs"] == ["input_ids"]
    assert meta["model"] == model.config.to_dict() and meta["eos_token_id"] == tokenizer.eot_id
    genai = json.loads((out / "genai_config.json").read_text())["model"]
    assert genai["eos_token_id"] == tokenizer.eot_id
    # the graph holds the window in its mask; genai's own windowed cache would expect another layout
    assert genai["type"] == "gemma3_text" and "sliding_window" not in genai["decoder"]
    ids = tokenizer.encode("to be or not")
    assert load_tokenizer(out).encode("to be or not") == ids
    assert OnnxModel(out).eot_id == tokenizer.eot_id
    # An earlier export-onnx output is replaced only with --force, and --force may replace it.
    assert main(["export-onnx", str(ckpt), str(out), "--no-cache"]) == 2
    assert "already exists" in capsys.readouterr().err
    check_replaceable(out, (ckpt,), kind="an ONNX export", marker=EXPORT_MARKER)


def test_refusals_are_one_line_errors(checkpoints, exports, tmp_path, capsys):
    _, ckpt = checkpoints["gpt2"]
    for opset in ("17", "99"):
        assert main(["export-onnx", str(ckpt), str(tmp_path / "o"), "--opset", opset]) == 2
        assert f"opset {opset} is not supported" in capsys.readouterr().err
    for out in (ckpt, ckpt.parent):  # OUT the input, or a folder around it
        assert main(["export-onnx", str(ckpt), str(out), "--force"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: will not replace {out}") and err.count("\n") == 1
    assert (ckpt / "model.safetensors").is_file() and not (tmp_path / "o").exists()
    assert main(["export-onnx", str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SlmError, match="not an ONNX export of slmkit"):
        OnnxModel(ckpt)
    _, onnx_model = exports["gpt2"]  # learned positions: 48 at most
    with pytest.raises(SlmError, match="40 tokens \\+ max_new_tokens 10 = 50 exceeds the model context of 48"):
        onnx_model.generate(list(range(40)), max_new_tokens=10)
    with pytest.raises(SlmError, match="token id 61 is outside"):
        onnx_model.generate([1, 61], max_new_tokens=1)
    # an export given where a checkpoint belongs is named for what it is
    assert main(["export-onnx", str(onnx_model.directory), str(tmp_path / "again")]) == 2
    assert "is an ONNX export (slm export-onnx), not a checkpoint" in capsys.readouterr().err


def test_quantized_checkpoint_is_refused(checkpoints, tmp_path, capsys):
    if "quantized" not in inspect.signature(load_state).parameters:
        pytest.skip("this slmkit has no quantized checkpoints")
    model, _ = checkpoints["llama"]
    ckpt = save_model(model, tmp_path / "q", extra={"quantization": {"scheme": "int8", "layers": []}})
    assert main(["export-onnx", str(ckpt), str(tmp_path / "o")]) == 2
    assert "is quantized (int8)" in capsys.readouterr().err


def test_missing_onnx_packages_are_named_with_the_install_command(checkpoints, exports, tmp_path, monkeypatch):
    _, ckpt = checkpoints["llama"]
    _, onnx_model = exports["llama"]
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` now raises ImportError
    with pytest.raises(SlmError, match=r"need the onnxscript package.*pip install 'slmkit\[onnx\]'"):
        export_onnx(ckpt, tmp_path / "o")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(SlmError, match="need the onnxruntime package"):
        OnnxModel(onnx_model.directory)
    assert not (tmp_path / "o").exists()
