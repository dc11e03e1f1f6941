"""`slm generate`, `slm chat` and `generate(slmkit.load(path), ...)` on a saved checkpoint with its tokenizer."""

from __future__ import annotations

import io

import pytest
import torch

import slmkit
from slmkit.cli import main
from slmkit.generate import GenerationConfig, generate, model_tokenizer
from slmkit.model import ModelConfig, Transformer, save_model
from slmkit.tokenizer import train_tokenizer

TEXT = "the quick brown fox jumps over the lazy dog. a cat sat on a mat, and then it ran!"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tokenizer = train_tokenizer([TEXT], "char")
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=64, n_layers=2, d_model=32, n_heads=4,
                         d_mlp=64, init_std=0.3, tie_embeddings=False)
    directory = save_model(Transformer(config), tmp_path_factory.mktemp("run") / "checkpoints" / "best")
    tokenizer.save(directory)
    return directory.parent.parent  # the run directory: best is picked


def test_load_returns_a_model_that_generates_from_text_with_its_tokenizer(checkpoint):
    model = slmkit.load(checkpoint)
    result = generate(model, "the cat", "greedy", max_new_tokens=10, ignore_eot=True)
    tokenizer = model_tokenizer(model)
    assert len(result.tokens) == 10
    assert result.text == tokenizer.decode(result.tokens)
    assert result.prompt_tokens == tokenizer.encode("the cat")
    ids = generate(model, result.prompt_tokens, temperature=0.0, max_new_tokens=10, ignore_eot=True)
    assert ids.tokens == result.tokens
    assert not hasattr(model, "tokenizer")  # found through the checkpoint directory, not kept on the model


@pytest.mark.parametrize("preset", ["creative", "coherent", "deterministic", "greedy"])
def test_generate_streams_the_same_text_as_the_api_for_each_preset(checkpoint, capsys, preset):
    code = main(["generate", str(checkpoint), "--prompt", "the dog", "--preset", preset, "--seed", "3",
                 "--max-new-tokens", "20"])
    printed = capsys.readouterr().out
    model = slmkit.load(checkpoint)
    expected = generate(model, "the dog", preset, max_new_tokens=20, seed=3).text
    assert code == 0 and printed == "the dog" + expected + "\n"


def test_no_stream_prints_the_same_as_stream(checkpoint, capsys):
    args = ["generate", str(checkpoint), "--prompt", "a cat", "--temperature", "0", "--max-new-tokens", "15"]
    main(args)
    streamed = capsys.readouterr().out
    main(args + ["--no-stream"])
    assert capsys.readouterr().out == streamed


def test_generate_with_beams_prints_ranked_beams_with_scores(checkpoint, capsys):
    code = main(["generate", str(checkpoint), "--prompt", "the", "--num-beams", "4", "--num-return-sequences", "3",
                 "--max-new-tokens", "8"])
    lines = capsys.readouterr().out.splitlines()
    headers = [line for line in lines if line.startswith("--- ")]
    assert code == 0 and [h.split()[1] for h in headers] == ["1", "2", "3"]
    scores = [float(h.split()[3]) for h in headers]
    assert scores == sorted(scores, reverse=True)
    model = slmkit.load(checkpoint)
    beams = generate(model, "the", GenerationConfig(temperature=0.0, num_beams=4, num_return_sequences=3,
                                                    max_new_tokens=8))
    assert [line for line in lines if not line.startswith("--- ")] == ["the" + b.text for b in beams]


def test_chat_continues_the_whole_transcript_after_each_line(checkpoint, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("the cat\n sat on\n/quit\nnot read\n"))
    code = main(["chat", str(checkpoint), "--preset", "greedy", "--max-new-tokens", "6", "--ignore-eot"])
    replies = capsys.readouterr().out.splitlines()
    model = slmkit.load(checkpoint)
    config = GenerationConfig(temperature=0.0, max_new_tokens=6, ignore_eot=True)
    first = generate(model, "the cat", config).text
    second = generate(model, "the cat" + first + " sat on", config).text
    assert code == 0 and replies == [first, second]


def test_bad_flags_print_an_error_without_traceback(checkpoint, capsys):
    assert main(["generate", str(checkpoint), "--prompt", "x", "--top-p", "1.5"]) == 2
    assert "top_p = 1.5: must be in (0, 1]" in capsys.readouterr().err
    assert main(["generate", str(checkpoint), "--prompt", "x", "--num-beams", "2", "--temperature", "0.7"]) == 2
    assert "num_beams = 2 with temperature = 0.7" in capsys.readouterr().err
    assert main(["generate", str(checkpoint) + "-missing", "--prompt", "x"]) == 2
