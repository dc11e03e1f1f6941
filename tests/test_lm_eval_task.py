"""The offline lm-evaluation-harness task: `slm lm-eval-task` writes it, and lm_eval runs it on a
model exported with `slm export-hf` (slow; skipped where the `lm-eval` extra is not installed)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from train_support import tiny_overrides, write_dataset

from slmkit import api


def test_lm_eval_task_file_names_the_packaged_items_by_absolute_path(tmp_path):
    command = api.write_lm_eval_task(tmp_path / "task", "hf/model")
    text = (tmp_path / "task" / "slmkit_cloze.yaml").read_text()
    data = text.split("test: ", 1)[1].splitlines()[0]
    assert os.path.isabs(data) and len(Path(data).read_text().splitlines()) == 20
    assert command == f"lm_eval --model hf --model_args pretrained=hf/model --tasks slmkit_cloze " \
                      f"--include_path {tmp_path / 'task'} --device cpu"


@pytest.mark.slow
def test_lm_eval_runs_the_shipped_task_offline_on_an_exported_model(tmp_path):
    pytest.importorskip("lm_eval", reason="the lm-eval extra is not installed")
    pytest.importorskip("accelerate", reason="lm-eval's hf backend needs accelerate (pip install 'slmkit[lm-eval]')")
    data = write_dataset(tmp_path / "ds")
    api.train(data, tmp_path / "run", overrides=tiny_overrides(data, max_steps=2, eval_interval=0), quiet=True,
              report=False)
    api.export_hf(tmp_path / "run", tmp_path / "hf")
    command = api.write_lm_eval_task(tmp_path / "task", tmp_path / "hf").split()
    lm_eval = shutil.which("lm_eval", path=os.path.dirname(sys.executable)) or "lm_eval"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.run([lm_eval, *command[1:], "--output_path", str(tmp_path / "out")], capture_output=True,
                             text=True, timeout=600, env=env, cwd=tmp_path)
    assert process.returncode == 0, process.stderr[-2000:]
    assert "slmkit_cloze" in process.stdout and "acc" in process.stdout
    results = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("results*.json")]
    assert results and 0.0 <= results[0]["results"]["slmkit_cloze"]["acc,none"] <= 1.0
