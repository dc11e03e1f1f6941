"""A small lm-evaluation-harness task written for this project, runnable offline.

lm-eval (the `lm-eval` extra) reads a model exported with `slm export-hf` through its `hf` backend.
`write_lm_eval_task(DIR)` writes the task there (a YAML naming the packaged JSONL by its absolute
path, as lm-eval needs) and returns the command that runs it:

    lm_eval --model hf --model_args pretrained=HF_DIR --tasks slmkit_cloze --include_path DIR --device cpu

slmkit_cloze: 20 two-choice cloze items (everyday facts, Shakespeare, Python), scored by
log-likelihood of each choice (accuracy; chance is 0.5).
"""

from __future__ import annotations

import os
from pathlib import Path

from slmkit.utils import write_text_atomic

TASK_NAME = "slmkit_cloze"
TASK_DATA = Path(__file__).parent / "lm_eval_cloze.jsonl"


def write_lm_eval_task(directory: str | os.PathLike, hf_model: str | os.PathLike = "HF_DIR") -> str:
    """Write the slmkit_cloze task YAML into `directory`; return the lm_eval command for `hf_model`."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    yaml = (f"task: {TASK_NAME}\n"
            "dataset_path: json\n"
            "dataset_kwargs:\n"
            "  data_files:\n"
            f"    test: {TASK_DATA.resolve()}\n"
            "output_type: multiple_choice\n"
            "test_split: test\n"
            'doc_to_text: "{{context}}"\n'
            'doc_to_choice: "{{choices}}"\n'
            'doc_to_target: "{{answer}}"\n'
            "metric_list:\n"
            "  - metric: acc\n"
            "    aggregation: mean\n"
            "    higher_is_better: true\n")
    write_text_atomic(directory / f"{TASK_NAME}.yaml", yaml)
    return (f"lm_eval --model hf --model_args pretrained={hf_model} --tasks {TASK_NAME} "
            f"--include_path {directory} --device cpu")
