"""A fine-tuned model's answers to held-out prompts, beside the reference answers (answers.md).

Each validation example of the SFT data is cut at its first response token: what comes before (the
conversation up to `<|im_start|>assistant\\n`) is the prompt, the response tokens up to `<|im_end|>`
are the reference. The model answers greedily and stops at `<|im_end|>`, as `slm chat` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slmkit.finetune.chat import chat_token_ids
from slmkit.generate import generate
from slmkit.utils import write_text_atomic

MAX_ANSWER_TOKENS = 64


def held_out_prompts(data, count: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, reference ids) of the first `count` validation examples of SFT data `data`."""
    ids, mask, offsets = data.split("val")
    pairs = []
    for index in range(min(count, len(offsets) - 1)):
        example = np.asarray(ids[offsets[index]:offsets[index + 1]]).astype(np.int64)
        scored = np.asarray(mask[offsets[index]:offsets[index + 1]]).astype(bool)
        if not scored.any():
            continue
        first = int(np.argmax(scored))
        end = first + int(np.argmin(scored[first:])) if not scored[first:].all() else len(example)
        pairs.append((example[:first].tolist(), example[first:end].tolist()))
    return pairs


def write_answers(path: Path, model, data, count: int = 8) -> list[tuple[str, str, str]]:
    """Answer the first `count` held-out prompts with `model` (greedy) into the markdown file `path`;
    returns (last user message, reference, answer) per example."""
    tokenizer = data.tokenizer
    _, end_id = chat_token_ids(tokenizer)
    shown, lines = [], ["# Answers to held-out prompts", "",
                        "Greedy answers of the fine-tuned model to validation prompts it never trained on, "
                        "beside the reference answers.", ""]
    for prompt, reference in held_out_prompts(data, count):
        output = generate(model, prompt, "greedy", tokenizer=tokenizer, max_new_tokens=MAX_ANSWER_TOKENS,
                          stop_token_ids=[end_id])
        answer = tokenizer.decode(output.tokens).strip()
        expected = tokenizer.decode(reference).strip()
        question = tokenizer.decode(prompt, skip_special_tokens=False)
        last_user = question.rsplit("<|im_start|>user\n", 1)[-1].split("<|im_end|>", 1)[0].strip()
        shown.append((last_user, expected, answer))
        lines += [f"## {last_user}", "", f"- answer: {answer}", f"- reference: {expected}",
                  f"- exact match: {'yes' if answer == expected else 'no'}", ""]
    matches = sum(answer == expected for _, expected, answer in shown)
    lines.insert(4, f"Exact matches: {matches} of {len(shown)}.\n")
    write_text_atomic(path, "\n".join(lines))
    return shown
