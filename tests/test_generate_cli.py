"""`slm generate`, `slm chat` and `generate(slmkit.load(path), ...)` on a saved checkpoint with its tokenizer."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import slmkit
from slmkit.cli import main
from slmkit.errors import SlmError
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


def slm(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """The `slm` command as a user runs it: a process of its own, its output and status."""
    command = Path(sys.executable).with_name("slm")
    argv = [str(command)] if command.exists() else [sys.executable, "-m", "slmkit"]
    return subprocess.run(argv + list(args), input=stdin, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory):
    """A run whose best checkpoint gives NaN logits (every weight NaN) beside a sound step-10 checkpoint."""
    tokenizer = train_tokenizer([TEXT], "char")
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=64, n_layers=2, d_model=32, n_heads=4,
                         d_mlp=64, init_std=0.3, tie_embeddings=False)
    model = Transformer(config)
    run = tmp_path_factory.mktemp("broken")
    tokenizer.save(save_model(model, run / "checkpoints" / "step-10"))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    tokenizer.save(save_model(model, run / "checkpoints" / "best"))
    return run


def one_error_line(done: subprocess.CompletedProcess) -> str:
    """The one line a failed command printed on stderr (asserting there is exactly one, no traceback)."""
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: ")
    return done.stderr.strip()


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


def test_generate_on_a_model_with_non_finite_logits_says_so_in_one_line(broken_run):
    done = slm("generate", str(broken_run), "--prompt", "the cat")
    line = one_error_line(done)
    best = broken_run / "checkpoints" / "best"
    assert done.returncode == 2 and done.stdout == ""  # not even the prompt
    assert line.startswith(f"error: the model in {best} gives non-finite logits (NaN or infinity)")
    assert f"an earlier checkpoint of its run (e.g. {broken_run / 'checkpoints' / 'step-N'})" in line
    assert "lower learning rate" in line
    assert slm("generate", str(broken_run / "checkpoints" / "step-10"), "--prompt", "the cat",
               "--max-new-tokens", "5").returncode == 0  # the advice works


def test_chat_on_a_model_with_non_finite_logits_says_so_in_one_line(broken_run):
    done = slm("chat", str(broken_run), stdin="the cat\n")
    assert done.returncode == 2 and done.stdout == ""
    assert "gives non-finite logits" in one_error_line(done)


def test_generate_prints_no_prompt_before_an_error(checkpoint):
    done = slm("generate", str(checkpoint), "--prompt", "the 🙂 café")  # 🙂 is not in the character vocabulary
    assert done.returncode == 2 and done.stdout == ""
    assert "characters not in the" in one_error_line(done)
    done = slm("generate", str(checkpoint), "--prompt", "the cat " * 10, "--overflow", "refuse")
    assert done.returncode == 2 and done.stdout == ""
    assert "exceeds the model context of 64 tokens" in one_error_line(done)


def test_an_error_in_the_middle_of_streaming_starts_on_a_line_of_its_own(tmp_path):
    tokenizer = train_tokenizer([TEXT], "char")
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=64, n_layers=2, d_model=32, n_heads=4,
                         d_mlp=64, init_std=0.3, family="gpt2", position="learned", norm="layernorm")
    model = Transformer(config)
    with torch.no_grad():
        model.pos_embed.weight[20].fill_(float("nan"))  # logits turn NaN once position 20 is read
    directory = save_model(model, tmp_path / "ckpt")
    tokenizer.save(directory)
    done = slm("generate", str(directory), "--prompt", "the cat", "--max-new-tokens", "40", "--ignore-eot",
               "--preset", "greedy")
    assert done.returncode == 2 and "gives non-finite logits" in one_error_line(done)
    expected = generate(slmkit.load(directory), "the cat", "greedy", max_new_tokens=20 - 7 + 1, ignore_eot=True)
    assert done.stdout == "the cat" + expected.text + "\n"  # the tokens made before position 20


def test_a_prompt_longer_than_the_context_warns_in_one_line(checkpoint):
    done = slm("generate", str(checkpoint), "--prompt", "the cat " * 10, "--max-new-tokens", "3")
    assert done.returncode == 0 and done.stdout.startswith("the cat ")
    assert done.stderr == "warning: prompt of 80 tokens is longer than the model context of 64; keeping its last 64 tokens\n"


def test_a_model_without_a_tokenizer_asks_for_the_tokenizer_flag(tmp_path):
    config = ModelConfig(vocab_size=40, context_length=32, n_layers=1, d_model=16, n_heads=2, d_mlp=32)
    directory = save_model(Transformer(config), tmp_path / "no-tokenizer")
    done = slm("generate", str(directory), "--prompt", "the cat")
    line = one_error_line(done)
    assert done.returncode == 2 and "pass --tokenizer SPEC" in line and "tokenizer=" not in line
    with pytest.raises(SlmError, match=r"pass tokenizer= \(e.g. slmkit.tokenizer.load_tokenizer"):
        generate(slmkit.load(directory), "the cat")  # the Python API names its own argument
