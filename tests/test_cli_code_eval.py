"""`slm code-eval`: the code suite from the command line (its harness and sandbox are proved in
tests/test_eval_code.py)."""

import json
import string
import subprocess
import sys

from slmkit.cli import main
from slmkit.model import ModelConfig, Transformer, save_model
from slmkit.tokenizer import train_tokenizer


def test_slm_code_eval_self_test_proves_the_harness_from_the_command_line():
    process = subprocess.run([sys.executable, "-m", "slmkit", "code-eval", "--self-test"], capture_output=True,
                             text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    assert "canonical: pass@1 1.00 (expected 1.00)" in process.stdout
    assert "broken: pass@1 0.00 (expected 0.00)" in process.stdout


def test_slm_code_eval_scores_a_checkpoint_and_writes_its_results(tmp_path, capsys):
    tokenizer = train_tokenizer([string.printable * 3 + "→×—…’“”é"], "char")  # every character the prompts use
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=512, n_layers=1, d_model=16, n_heads=2,
                         n_kv_heads=2, d_mlp=32)
    save_model(Transformer(config), tmp_path / "ckpt")
    tokenizer.save(tmp_path / "ckpt")
    assert main(["code-eval", str(tmp_path / "ckpt"), "--max-new-tokens", "8", "--out",
                 str(tmp_path / "code.json")]) == 0
    assert "pass@1 0.000 over 42 tasks" in capsys.readouterr().out  # a random model passes nothing
    results = json.loads((tmp_path / "code.json").read_text())
    assert results["pass_at_k"] == {"pass@1": 0.0} and len(results["tasks"]) == 42
    assert main(["code-eval"]) == 2  # no model: one line, not a traceback
