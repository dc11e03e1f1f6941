"""`slm compare`: an slmkit model and a Hugging Face GPT-2 (random weights, saved locally) side by side
on the same prompts and seed, in compare.md and a self-contained compare.html; the same seed gives the
same outputs; the figures match a hand count; outputs are escaped; a bad prompts file is one clear line."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch
from train_support import one_thread

from slmkit.errors import SlmError
from slmkit.eval import compare
from slmkit.eval.compare import (
    CompareReport,
    ModelFigures,
    Prompt,
    compare_models,
    distinct_n,
    load_prompts,
    repetition_rate,
)
from slmkit.model import ModelConfig, Transformer, save_model
from slmkit.tokenizer import train_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
pytestmark = pytest.mark.usefixtures(one_thread.__name__)
SETTINGS = {"max_new_tokens": 12, "seed": 5, "temperature": 1.0, "top_k": 0, "device": "cpu"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """An slmkit checkpoint and a transformers GPT-2, both of random weights, sharing a character
    tokenizer trained on the built-in prompts and shared text (so every character is known)."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("models")
    suite = [p.prompt for p in load_prompts()]
    tokenizer = train_tokenizer([compare.shared_text(), *suite], "char")
    torch.manual_seed(0)
    ours = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, context_length=32, n_layers=1, d_model=16,
                                   n_heads=2, d_mlp=32))
    saved = tokenizer.save(root / "tokenizer")
    save_model(ours, root / "slmkit", extra_files={p.name: p for p in saved.iterdir()})
    tokenizer.export_hf(root / "gpt2")
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2,
        bos_token_id=tokenizer.eot_id, eos_token_id=tokenizer.eot_id))
    gpt2.save_pretrained(root / "gpt2")
    prompts = root / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": p.id, "genre": p.genre, "prompt": p.prompt})
                                 for p in load_prompts()[1:3]) + "\n")
    return [str(root / "slmkit"), str(root / "gpt2")], prompts


@pytest.fixture(scope="module")
def report(models, tmp_path_factory):
    paths, prompts = models
    return compare_models(paths, prompts, out=tmp_path_factory.mktemp("out"), **SETTINGS)


def test_both_models_answer_both_prompts_side_by_side_in_markdown_and_html(models, report):
    paths, _ = models
    assert report.models == paths and [f.kind for f in report.figures] == ["slmkit", "hugging face"]
    assert [p.id for p in report.prompts] == ["story-fox", "encyclopedic-river"]
    markdown = report.markdown_path.read_text()
    page = report.html_path.read_text()
    for m, path in enumerate(paths):
        assert len(report.outputs[m]) == 2 and all(report.outputs[m])
        assert path in markdown and path in page
        for output in report.outputs[m]:
            assert compare._md_cell(output) in markdown
            assert "<pre>" + compare.html.escape(output) + "</pre>" in page
    assert "temperature 1.0, top_k 0, seed 5" in markdown
    for prompt in report.prompts:
        assert compare._md_cell(prompt.prompt) in markdown and compare.html.escape(prompt.prompt) in page
    assert "http" not in page.replace("http-equiv", "") and "<script" not in page and "<link" not in page
    for figures in report.figures:
        assert 0.5 < figures.bits_per_byte < 20  # random weights over ~60 characters: about log2(60) bits
        assert 0 < figures.mean_tokens <= SETTINGS["max_new_tokens"] and figures.mean_chars > 0
        assert 0 < figures.distinct_1 <= 1


def test_the_same_seed_gives_the_same_outputs_and_another_seed_others(models, report):
    paths, prompts = models
    again = compare_models(paths, prompts, **SETTINGS)
    assert again.outputs == report.outputs
    other = compare_models(paths, prompts, **{**SETTINGS, "seed": 6})
    assert all(other.outputs[m] != report.outputs[m] for m in range(2))  # the seed reaches both kinds


def test_temperature_zero_is_greedy_whatever_the_seed(models):
    paths, prompts = models
    greedy = {**SETTINGS, "temperature": 0.0, "max_new_tokens": 6}
    assert compare_models(paths, prompts, **greedy).outputs == compare_models(paths, prompts, **{**greedy, "seed": 9}).outputs


def test_distinct_n_and_repetition_rate_on_hand_made_outputs():
    outputs = ["a b a b a", "c c"]
    # unigrams a b a b a c c: 3 distinct of 7; bigrams ab ba ab ba | cc: 3 distinct of 5
    assert distinct_n(outputs, 1) == pytest.approx(3 / 7)
    assert distinct_n(outputs, 2) == pytest.approx(3 / 5)
    # trigrams "a b a", "b a b", "a b a": one repeat of three; "c c" has none
    assert repetition_rate(outputs) == pytest.approx(1 / 3)
    assert repetition_rate(["x y z", "x y z"]) == 0  # a repeat in another output is not a repetition
    assert distinct_n(["x y z", "x y z"], 2) == pytest.approx(2 / 4)  # but it is not distinct
    assert distinct_n([""], 1) is None and repetition_rate(["a b"]) is None


def test_outputs_are_escaped_in_html_and_markdown():
    figures = ModelFigures("m<1>", "slmkit", None, None, None, None, 0.0, 0.0)
    report = CompareReport({"seed": 0}, [Prompt("p", "say <b>")], ["m<1>"],
                           [["<script>alert('x')</script> | done\nnext"]], [figures])
    page = report.html()
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "m&lt;1&gt;" in page and "say &lt;b&gt;" in page
    assert "&lt;script&gt;alert('x')&lt;/script&gt; \\| done<br>next" in report.markdown()


@pytest.mark.parametrize("content, says", [
    ("{not json}\n", "line 1 is not valid JSON"),
    ('{"id": "a", "prompt": "hi"}\n{"id": "b"}\n', 'line 2 has no "prompt" string'),
    ("\n  \n", "holds no prompts"),
])
def test_a_bad_prompts_file_is_one_clear_error(tmp_path, content, says):
    path = tmp_path / "prompts.jsonl"
    path.write_text(content)
    with pytest.raises(SlmError) as error:
        load_prompts(path)
    assert says in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(SlmError, match="prompts file"):
        compare_models(["nowhere"], path)


def test_the_built_in_suite_covers_every_genre_and_the_shared_text_is_long_enough():
    prompts = load_prompts()
    assert {p.genre for p in prompts} == {"story", "encyclopedic", "dialogue", "verse", "code"}
    assert len({p.id for p in prompts}) == len(prompts)
    assert len(compare.shared_text().encode()) > 3000


def test_the_command_line_calls_the_api_with_every_flag(monkeypatch, tmp_path):
    from slmkit import api
    from slmkit.cli import compare as cli_compare

    seen = {}

    def fake(models, prompts, **kwargs):
        seen.update(models=models, prompts=prompts, **kwargs)
        return CompareReport({}, [], [], [], [], markdown_path=tmp_path / "compare.md",
                             html_path=tmp_path / "compare.html")

    monkeypatch.setattr(api, "compare_models", fake, raising=False)
    parser = argparse.ArgumentParser()
    cli_compare.register(parser.add_subparsers())
    args = parser.parse_args(["compare", "a", "b", "--prompts", "p.jsonl", "--out", "o", "--max-new-tokens", "9",
                              "--seed", "3", "--temperature", "0", "--top-k", "7"])
    assert args.run(args) == 0
    assert seen == {"models": ["a", "b"], "prompts": "p.jsonl", "max_new_tokens": 9, "seed": 3, "temperature": 0.0,
                    "top_k": 7, "text": None, "out": "o", "device": "auto"}
