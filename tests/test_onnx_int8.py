"""`slm export-onnx --quantize int8`: onnxruntime's dynamic int8 graph keeps the float graph's inputs,
outputs and cache, stays close to PyTorch's logits, and is a fraction of the float file.

Two tiny random models with the cache (Llama: GQA, tied head; Gemma 3: a sliding window of 6 exceeded
five times over, untied head) bound the logit error, and a control shows the bound would catch a
coarser (4-bit) or broken quantization. A small Llama trained for a few seconds on one paragraph (its
greedy path has clear margins, unlike a random model's) gives slmkit's greedy tokens through the int8
graph, and its int8 file is measured against its float32 one.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from test_onnx import CONFIGS as FLOAT_CONFIGS  # noqa: E402
from test_onnx import _cached_logits, _tokens  # noqa: E402

from slmkit.cli import main  # noqa: E402
from slmkit.errors import SlmError  # noqa: E402
from slmkit.generate import generate  # noqa: E402
from slmkit.interop.onnx import OnnxModel, export_onnx, quantize_graph  # noqa: E402
from slmkit.model import ModelConfig, Transformer, save_model  # noqa: E402

# test_onnx's Llama and Gemma 3, the Gemma with its own head (an untied head is quantized as one more weight)
CONFIGS = {"llama": FLOAT_CONFIGS["llama"], "gemma3": FLOAT_CONFIGS["gemma3"].replace(tie_embeddings=False)}
VOCAB = CONFIGS["llama"].vocab_size
# Largest and mean absolute logit error of the int8 graph, 2 x 30 tokens through the cache, as measured
# (onnxruntime 1.32, uint8 per-channel weights) with 2x margin: llama max 0.25 / mean 0.041 (logits up to
# 4.5), gemma3 max 0.051 / mean 0.0075 (logits up to 1.0). The controls measured 3.3-3.9 / 0.57-0.61
# (llama) and 0.59-0.69 / 0.11-0.13 (gemma3).
BOUNDS = {"llama": (0.5, 0.08), "gemma3": (0.1, 0.015)}
TEXT = ("Now is the winter of our discontent made glorious summer by this sun of York; and all the clouds "
        "that lour'd upon our house in the deep bosom of the ocean buried. ")


def _random_model(family: str) -> Transformer:
    torch.manual_seed(0)
    return Transformer(CONFIGS[family]).eval()


def _op_counts(directory) -> collections.Counter:
    return collections.Counter(node.op_type for node in onnx.load(str(directory / "model.onnx")).graph.node)


def quantized_exports(root, quantize: str) -> dict:
    """Each random model exported with the cache, quantized: {family: (torch model, OnnxModel)}."""
    result = {}
    for family in CONFIGS:
        model = _random_model(family)
        ckpt = save_model(model, root / f"{family}-ckpt")
        result[family] = (model, OnnxModel(export_onnx(ckpt, root / family, quantize=quantize), threads=1))
    return result


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Each random model exported with the cache in int8: {family: (torch model, OnnxModel)}."""
    return quantized_exports(tmp_path_factory.mktemp("onnx-int8"), "int8")


def _train_briefly(tokenizer) -> Transformer:
    """A Llama of about 0.5M parameters fitted to TEXT for 120 AdamW steps (a few seconds on one core)."""
    config = ModelConfig(family="llama", vocab_size=tokenizer.vocab_size, context_length=64, n_layers=2,
                         d_model=128, n_heads=4, n_kv_heads=2, d_mlp=512, rope_theta=10000.0)
    torch.manual_seed(0)
    model = Transformer(config)
    ids = torch.tensor(tokenizer.encode(TEXT * 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matmuls: threads only wait on each other on a shared machine
    try:
        for _ in range(120):
            starts = torch.randint(0, len(ids) - 65, (8,), generator=generator)
            batch = torch.stack([ids[s:s + 65] for s in starts.tolist()])
            logits = model(batch[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The briefly trained Llama with a char tokenizer, exported by `slm export-onnx --quantize int8` and in
    float32 by `export_onnx`: (torch model, tokenizer, checkpoint, int8 OUT, float32 OUT, what the command printed)."""
    from slmkit.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("onnx-int8-trained")
    tokenizer = train_tokenizer([TEXT] * 4, "char")
    model = _train_briefly(tokenizer)
    ckpt = save_model(model, root / "ckpt")
    tokenizer.save(ckpt)
    out = root / "int8"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["export-onnx", str(ckpt), str(out), "--quantize", "int8"]) == 0
    float_out = export_onnx(ckpt, root / "float32")
    return model, tokenizer, ckpt, out, float_out, printed.getvalue()


@pytest.mark.parametrize("family", list(CONFIGS))
def test_int8_logits_through_the_cache_stay_within_the_measured_bound_of_pytorchs(exports, family):
    model, onnx_model = exports[family]
    tokens = _tokens(2, 30)  # gemma3: five windows of 6
    with torch.no_grad():
        expected = model(tokens).numpy()
    got = _cached_logits(onnx_model, tokens, prefill=12)
    error = np.abs(got - expected)
    largest, mean = BOUNDS[family]
    assert error.max() <= largest and error.mean() <= mean
    assert error.max() > 1e-4  # quantized at all: the float32 graph is within 1e-5 (tests/test_onnx.py)
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.85


@pytest.mark.parametrize("family", list(CONFIGS))
def test_the_bound_would_catch_a_4_bit_or_a_broken_quantization(exports, family):
    """Negative controls in PyTorch: the same weights rounded to 16 levels per tensor (4 bits), and
    the same weights with the last MLP's down projection zeroed, both leave the bound the int8 graph keeps."""
    model, _ = exports[family]
    tokens = _tokens(2, 30)
    with torch.no_grad():
        expected = model(tokens).numpy()
        coarse = _random_model(family)
        for param in coarse.parameters():
            if param.dim() == 2:  # weight matrices, as the int8 graph quantizes them
                scale = param.abs().max() / 7
                param.copy_((param / scale).round().clamp(-8, 7) * scale)
        broken = _random_model(family)
        broken.blocks[-1].mlp.down.weight.zero_()
        largest, mean = BOUNDS[family]
        for control in (coarse, broken):
            error = np.abs(control(tokens).numpy() - expected)
            assert error.max() > largest or error.mean() > mean


def test_int8_graph_keeps_the_float_graphs_inputs_outputs_and_cache(exports, tmp_path):
    model, onnx_model = exports["llama"]
    float_model = OnnxModel(export_onnx(save_model(model, tmp_path / "ckpt"), tmp_path / "float32"), threads=1)
    assert_same_interface(onnx_model, float_model, head_dim=8)


def assert_same_interface(onnx_model: OnnxModel, float_model: OnnxModel, head_dim: int) -> None:
    """The quantized graph's inputs and outputs (the cache's names, shapes, float32) and genai_config.json
    are the float32 export's."""
    def signature(session):
        return ([(i.name, i.shape, i.type) for i in session.get_inputs()],
                [(o.name, o.shape, o.type) for o in session.get_outputs()])

    assert signature(onnx_model.session) == signature(float_model.session)
    inputs, outputs = signature(onnx_model.session)
    assert ("past_key_values.1.value", ["batch", 2, "past_seq", head_dim], "tensor(float)") in inputs
    assert ("present.0.key", ["batch", 2, "total_seq", head_dim], "tensor(float)") in outputs
    genai = onnx_model.directory / "genai_config.json"
    assert json.loads(genai.read_text()) == json.loads((float_model.directory / "genai_config.json").read_text())


@pytest.mark.parametrize("family, linear_layers", [("llama", 2 * 5 + 1), ("gemma3", 2 * 5 + 1)])
def test_every_weight_matmul_is_integer_the_head_included(exports, family, linear_layers):
    """qkv, attention out, gate, up, down per layer, and the head: tied (llama, the Gather's table
    transposed and folded by the pre-processing) or untied (gemma3)."""
    _, onnx_model = exports[family]
    graph = onnx.load(str(onnx_model.directory / "model.onnx")).graph
    ops = collections.Counter(node.op_type for node in graph.node)
    assert ops["MatMulInteger"] == linear_layers
    producers = {out: node for node in graph.node for out in node.output}
    head = producers["logits"]
    while head.op_type not in ("MatMulInteger", "MatMul"):  # MatMulInteger -> Cast -> Mul (the scales)
        head = next(producers[name] for name in head.input if name in producers
                    and producers[name].op_type in ("Mul", "Cast", "MatMulInteger", "MatMul"))
    assert head.op_type == "MatMulInteger"
    gather = next(node for node in graph.node if node.op_type == "Gather" and "input_ids" in node.input)
    tables = {init.name: init for init in graph.initializer}
    assert tables[gather.input[0]].data_type == onnx.TensorProto.UINT8  # the embedding table in 8 bits
    big_floats = [init.name for init in graph.initializer
                  if init.data_type == onnx.TensorProto.FLOAT and np.prod(init.dims) >= 32 * 32]
    assert big_floats == []  # no weight matrix left in float32
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}  # standard operators only, no com.microsoft


def test_int8_graph_of_a_briefly_trained_model_gives_slmkits_greedy_tokens(trained):
    model, tokenizer, _, out, _, _ = trained
    assert_greedy_tokens_mostly_slmkits(model, tokenizer, out)


def assert_greedy_tokens_mostly_slmkits(model, tokenizer, out) -> None:
    """At least 90% of 40 greedy tokens after each of three prompts equal slmkit's (a trained model)."""
    onnx_model = OnnxModel(out, threads=1)
    prompts = [tokenizer.encode(text) for text in ("Now is the win", "and all the clo", "in the deep b")]
    expected = [generate(model, prompt, "greedy", max_new_tokens=40, eot_id=-1).tokens for prompt in prompts]
    got = onnx_model.generate(prompts, max_new_tokens=40, eot_id=-1)
    agree = sum(a == b for row, ref in zip(got, expected) for a, b in zip(row, ref))
    assert agree >= 0.9 * 3 * 40
    assert tokenizer.decode(expected[0]).startswith("ter of our discontent")  # it learned the text


def test_int8_loss_of_the_trained_model_is_within_5_percent_of_float32(trained):
    """Measured: PyTorch 0.0787, float32 graph 0.0787, int8 graph 0.0792 (nats per token, 128 tokens)."""
    model, tokenizer, _, out, float_out, _ = trained
    ids = torch.tensor(tokenizer.encode(TEXT * 2)[:2 * 64 + 1])
    inputs, targets = ids[:-1].view(2, 64), ids[1:].view(2, 64)

    def loss(logits) -> float:
        logits = torch.as_tensor(logits)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).item()

    int8 = loss(OnnxModel(out, threads=1).forward(inputs.numpy())[0])
    float32 = loss(OnnxModel(float_out, threads=1).forward(inputs.numpy())[0])
    with torch.no_grad():
        reference = loss(model(inputs))
    assert abs(float32 - reference) <= 1e-4
    assert abs(int8 - float32) <= 0.05 * float32
    assert int8 < 1.0  # a trained model: a wrong graph would be far from this loss


def test_int8_file_is_under_half_the_float32_one_and_the_float_graph_does_not_stay(trained):
    _, _, _, out, float_out, printed = trained
    int8_bytes, float_bytes = (out / "model.onnx").stat().st_size, (float_out / "model.onnx").stat().st_size
    assert float_bytes / int8_bytes >= 2.5
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in float_out.iterdir())  # no float32/
    assert printed == f"wrote ONNX model {out} (int8, {int8_bytes / 1e6:,.1f} MB, with the KV cache)\n"


def test_config_records_int8_and_the_quantizer_settings(trained):
    model, tokenizer, _, out, float_out, _ = trained
    meta = json.loads((out / "config.json").read_text())
    float_meta = json.loads((float_out / "config.json").read_text())
    assert meta["dtype"] == "int8" and float_meta["dtype"] == "float32" and "quantization" not in float_meta
    settings = meta["quantization"]
    assert settings["tool"] == "onnxruntime.quantization.quantize_dynamic"
    assert (settings["weight_type"], settings["per_channel"], settings["reduce_range"]) == ("QUInt8", True, False)
    assert {key: value for key, value in meta.items() if key not in ("dtype", "quantization")} == {
        key: value for key, value in float_meta.items() if key not in ("dtype", "quantization")}
    assert OnnxModel(out).eot_id == tokenizer.eot_id


def test_quantize_writes_the_weights_beside_the_graph_when_asked_as_past_2_gb(trained, tmp_path):
    """The path a model over 2 GB takes (external data), on the small one: model.onnx + model.onnx.data,
    and the same logits as the int8 graph in one file."""
    _, tokenizer, _, out, float_out, _ = trained
    directory = tmp_path / "external"
    directory.mkdir()
    for path in out.iterdir():
        if path.name != "model.onnx":
            (directory / path.name).write_bytes(path.read_bytes())
    float_copy = tmp_path / "float32" / "model.onnx"
    float_copy.parent.mkdir()
    float_copy.write_bytes((float_out / "model.onnx").read_bytes())
    quantize_graph(float_copy, directory / "model.onnx", external_data=True)
    assert (directory / "model.onnx.data").stat().st_size > 5 * (directory / "model.onnx").stat().st_size
    assert sorted(p.name for p in float_copy.parent.iterdir()) == ["model.onnx"]  # the pre-processed copy removed
    tokens = torch.tensor([tokenizer.encode(TEXT[:20])])
    expected = OnnxModel(out, threads=1).forward(tokens.numpy())[0]
    assert np.array_equal(OnnxModel(directory, threads=1).forward(tokens.numpy())[0], expected)


def test_bad_quantize_value_is_a_one_line_error_naming_the_choice(trained, tmp_path, capsys):
    _, _, ckpt, _, _, _ = trained
    for value in ("int2", "INT8", "fp16"):
        assert main(["export-onnx", str(ckpt), str(tmp_path / "o"), "--quantize", value]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: quantize '{value}' is not supported; the choices are int8, int4") and err.count("\n") == 1
    with pytest.raises(SlmError, match="quantize 8 is not supported"):
        export_onnx(ckpt, tmp_path / "o", quantize=8)
    assert not (tmp_path / "o").exists()


def test_int8_without_onnxruntime_names_the_install_command_and_writes_nothing(trained, tmp_path, monkeypatch):
    _, _, ckpt, _, _, _ = trained
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(SlmError, match=r"need the onnxruntime package.*pip install 'slmkit\[onnx\]'"):
        export_onnx(ckpt, tmp_path / "o", quantize="int8")
    assert not (tmp_path / "o").exists()
