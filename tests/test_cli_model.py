"""`slm presets` and `slm info` print what they promise; bad input is one clear line, exit 2."""

import subprocess
import sys

import pytest

from slmkit.cli import main


def test_info_prints_the_exact_slm_25m_count(capsys):
    assert main(["info", "--preset", "slm-25m"]) == 0
    out = capsys.readouterr().out
    assert "25,269,120" in out
    for part in ("embeddings", "attention", "MLP", "norms", "output head", "fp32", "bf16", "AdamW",
                 "forward", "training", "KV cache"):
        assert part in out


def test_info_shows_why_gemma3_tinystories_is_not_270m(capsys):
    assert main(["info", "--preset", "gemma3-tinystories"]) == 0
    out = capsys.readouterr().out
    assert "132,490,496" in out and "32,164,480" in out  # the 50K-vocab embedding


def test_presets_lists_every_preset_with_family_count_and_context(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "gpt2-124m" in out and "124,439,808" in out and "1,024" in out and "gemma3" in out


def test_info_accepts_overrides(capsys):
    assert main(["info", "--preset", "slm-25m", "--set", "n_layers=12"]) == 0
    assert "n_layers" not in capsys.readouterr().err


@pytest.mark.parametrize("argv,fragment", [
    (["info", "--preset", "nope"], "unknown preset 'nope'"),
    (["info", "--preset", "slm-25m", "--set", "n_heads=7"], "not divisible"),
    (["info"], "no model given"),
])
def test_bad_input_is_one_line_without_traceback(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and err.count("\n") == 1


def test_slm_console_command_runs():
    done = subprocess.run([sys.executable, "-m", "slmkit", "info", "--preset", "nano"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "total" in done.stdout
