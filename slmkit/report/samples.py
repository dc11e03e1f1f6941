"""Samples from a freshly trained model, written to the run's samples.md."""

from __future__ import annotations

from pathlib import Path

import torch

from slmkit.generate import generate
from slmkit.utils import write_text_atomic


def generate_samples(model, tokenizer, count: int, max_new_tokens: int, seed: int,
                     prompts: list[str] | None = None) -> list[tuple[str, str]]:
    """(prompt, continuation) pairs: `count` samples at temperature 0.8, top-k 50.

    Prompts default to the empty prompt (the model starts after an end-of-text token).
    """
    prompts = (prompts or [""] * count)[:count]
    samples = []
    for index, prompt in enumerate(prompts):
        ids = [tokenizer.eot_id] + (tokenizer.encode(prompt) if prompt else [])
        out = generate(model, ids, tokenizer=tokenizer, max_new_tokens=max_new_tokens, temperature=0.8,
                       top_k=50, seed=seed + index, ignore_eot=True, skip_special_tokens=False)
        samples.append((prompt, tokenizer.decode(out.tokens)))
    return samples


def write_samples_file(path: Path, samples: list[tuple[str, str]], step: int) -> None:
    """samples.md: one section per sample, the prompt in bold."""
    lines = [f"# Samples at step {step}", "", "From the final weights; temperature 0.8, top-k 50.", ""]
    for index, (prompt, text) in enumerate(samples, 1):
        lines += [f"## Sample {index}", "", "```", (f"{prompt}" if prompt else "") + text, "```", ""]
    write_text_atomic(Path(path), "\n".join(lines))


@torch.no_grad()
def write_run_samples(run_dir: Path, model, tokenizer, count: int, max_new_tokens: int, seed: int,
                      step: int) -> list[tuple[str, str]]:
    """Generate `count` samples and write them to run_dir/samples.md; return them."""
    samples = generate_samples(model, tokenizer, count, max_new_tokens, seed)
    write_samples_file(Path(run_dir) / "samples.md", samples, step)
    return samples
