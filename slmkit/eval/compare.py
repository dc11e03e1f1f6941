"""`slm compare`: models side by side on the same prompts and seeds, with a few figures per model.

    from slmkit.eval.compare import compare_models
    report = compare_models(["runs/nano", "hf/gpt2"], out="compare/")   # compare.md and compare.html
    print(report.table())

Every model, slmkit or Hugging Face, continues every prompt with the same decoding settings and the
same seed (one seed per prompt, the same for all models). The figures: bits per byte on a shared text
(through `slmkit.eval.perplexity.evaluate_models`, so tokenizers need not match), distinct-1 and
distinct-2 and the repetition rate over the model's outputs (on whitespace words, so that they compare
across tokenizers), and the mean output length in tokens of the model's own tokenizer and in
characters. The built-in prompt suite (compare_prompts.jsonl) and shared text (compare_text.jsonl)
live beside this module and are written for this project, so runs stay comparable over time.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from slmkit.errors import SlmError
from slmkit.eval.perplexity import evaluate_models, find_model, load_scorer
from slmkit.train.device import setup_device
from slmkit.utils import write_text_atomic

PROMPTS_FILE = Path(__file__).with_name("compare_prompts.jsonl")
SHARED_TEXT_FILE = Path(__file__).with_name("compare_text.jsonl")
BITS_PER_BYTE_CONTEXT = 256  # the longest window for the shared text: short enough for ~1,000-token texts
REPETITION_N = 3  # the repetition rate counts repeated word 3-grams
PROMPTS_EXAMPLE = '{"id": "story", "prompt": "Once upon a time"}'


@dataclass
class Prompt:
    id: str
    prompt: str
    genre: str = ""


@dataclass
class ModelFigures:
    """One model's figures: bits per byte of the shared text (None when it was not scored), distinct-n
    and repetition rate as shares in [0, 1], mean output length in tokens and characters."""

    model: str
    kind: str
    bits_per_byte: float | None
    distinct_1: float | None
    distinct_2: float | None
    repetition_rate: float | None
    mean_tokens: float
    mean_chars: float


@dataclass
class CompareReport:
    """Outputs[model index][prompt index] and the figures, with the settings used."""

    settings: dict
    prompts: list[Prompt]
    models: list[str]
    outputs: list[list[str]]
    figures: list[ModelFigures]
    shared_text: str = ""  # what bits per byte was measured on, in words
    markdown_path: Path | None = None
    html_path: Path | None = None

    def to_dict(self) -> dict:
        return {"settings": self.settings, "shared_text": self.shared_text,
                "prompts": [dataclasses.asdict(p) for p in self.prompts],
                "models": [{**dataclasses.asdict(f), "outputs": outs} for f, outs in zip(self.figures, self.outputs)],
                **({"markdown": str(self.markdown_path)} if self.markdown_path else {}),
                **({"html": str(self.html_path)} if self.html_path else {})}

    def table(self) -> str:
        """The figures as a markdown table, headed by the settings."""
        lines = [f"decoding: {settings_line(self.settings)}", f"bits per byte on: {self.shared_text}", "",
                 "| model | kind | bits/byte | distinct-1 | distinct-2 | repetition | mean tokens | mean chars |",
                 "|---|---|---:|---:|---:|---:|---:|---:|"]
        for f in self.figures:
            lines.append(f"| {_md_cell(f.model)} | {f.kind} | {_fmt(f.bits_per_byte)} | {_fmt(f.distinct_1, 3)} | "
                         f"{_fmt(f.distinct_2, 3)} | {_fmt(f.repetition_rate, 3)} | {f.mean_tokens:.1f} | "
                         f"{f.mean_chars:.1f} |")
        return "\n".join(lines)

    def markdown(self) -> str:
        """Figures, then one table per prompt: a row per model with its output."""
        parts = ["# slm compare", "", self.table(), "",
                 f"repetition: the share of word {REPETITION_N}-grams in an output that repeat an earlier one in "
                 f"the same output; distinct-n: distinct word n-grams over all n-grams of all outputs.", ""]
        for i, prompt in enumerate(self.prompts):
            title = prompt.id + (f" ({prompt.genre})" if prompt.genre else "")
            parts += [f"## {_md_cell(title)}", "", "prompt: " + _md_cell(prompt.prompt), "",
                      "| model | output |", "|---|---|"]
            parts += [f"| {_md_cell(model)} | {_md_cell(self.outputs[m][i])} |" for m, model in enumerate(self.models)]
            parts.append("")
        return "\n".join(parts)

    def html(self) -> str:
        """A self-contained page (inline CSS, no scripts or external assets); every text is escaped."""
        e = html.escape
        head = "".join(f"<th>{e(m)}</th>" for m in self.models)
        figure_rows = "".join(
            f"<tr><td>{e(f.model)}</td><td>{e(f.kind)}</td><td>{_fmt(f.bits_per_byte)}</td>"
            f"<td>{_fmt(f.distinct_1, 3)}</td><td>{_fmt(f.distinct_2, 3)}</td><td>{_fmt(f.repetition_rate, 3)}</td>"
            f"<td>{f.mean_tokens:.1f}</td><td>{f.mean_chars:.1f}</td></tr>" for f in self.figures)
        rows = "".join(
            f"<tr><th class='prompt'><div class='id'>{e(p.id)}{' · ' + e(p.genre) if p.genre else ''}</div>"
            f"<pre>{e(p.prompt)}</pre></th>"
            + "".join(f"<td><pre>{e(self.outputs[m][i])}</pre></td>" for m in range(len(self.models))) + "</tr>"
            for i, p in enumerate(self.prompts))
        return (
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>slm compare</title><style>"
            "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
            "table{border-collapse:collapse;margin-bottom:2em}th,td{border:1px solid #ccc;padding:.4em;"
            "vertical-align:top;text-align:left}pre{white-space:pre-wrap;margin:0;font-family:ui-monospace,monospace}"
            ".outputs td,.outputs th{width:30em}.prompt{background:#f4f4f4}.id{font-size:.8em;color:#666}"
            "</style></head><body>\n<h1>slm compare</h1>\n"
            f"<p>decoding: {e(settings_line(self.settings))}<br>bits per byte on: {e(self.shared_text)}</p>\n"
            "<table><tr><th>model</th><th>kind</th><th>bits/byte</th><th>distinct-1</th><th>distinct-2</th>"
            f"<th>repetition</th><th>mean tokens</th><th>mean chars</th></tr>{figure_rows}</table>\n"
            f"<table class='outputs'><tr><th>prompt</th>{head}</tr>{rows}</table>\n</body></html>\n")


def settings_line(settings: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in settings.items())


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _md_cell(text: str) -> str:
    """Text inside a markdown table cell: HTML escaped, pipes escaped, lines joined by <br>."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


# -- figures --------------------------------------------------------------------------------------
def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(outputs: Sequence[str], n: int) -> float | None:
    """Distinct word n-grams over all word n-grams of all outputs (n-grams do not cross outputs); None
    when the outputs hold no n-gram."""
    grams = [g for text in outputs for g in _ngrams(text.split(), n)]
    return len(set(grams)) / len(grams) if grams else None


def repetition_rate(outputs: Sequence[str], n: int = REPETITION_N) -> float | None:
    """The share of word n-grams that repeat an n-gram seen earlier in the same output, over all outputs;
    None when the outputs hold no n-gram."""
    repeated = total = 0
    for text in outputs:
        counts = Counter(_ngrams(text.split(), n))
        total += sum(counts.values())
        repeated += sum(count - 1 for count in counts.values())
    return repeated / total if total else None


# -- prompts --------------------------------------------------------------------------------------
def load_prompts(path: str | os.PathLike | None = None) -> list[Prompt]:
    """The prompts of a JSONL file (one object a line, a "prompt" string and an optional "id" and
    "genre"), or the built-in suite. Raises SlmError naming the file and line of the first problem."""
    path = Path(path) if path is not None else PROMPTS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SlmError(f"prompts file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SlmError(f"cannot read prompts file {path}: {error}") from None
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"prompts file {path} line {number}"
        try:
            item = json.loads(line)
        except ValueError as error:
            raise SlmError(f"{where} is not valid JSON ({error.msg}); write one object a line, e.g. "
                           f"{PROMPTS_EXAMPLE}") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"]:
            raise SlmError(f"{where} has no \"prompt\" string; write one object a line, e.g. {PROMPTS_EXAMPLE}")
        prompts.append(Prompt(str(item.get("id") or f"prompt-{len(prompts) + 1}"), item["prompt"],
                              str(item.get("genre") or "")))
    if not prompts:
        raise SlmError(f"prompts file {path} holds no prompts; write one object a line, e.g. {PROMPTS_EXAMPLE}")
    return prompts


def shared_text() -> str:
    """The built-in shared text for bits per byte: the project-written passages, one after another."""
    return "\n\n".join(json.loads(line)["text"] for line in SHARED_TEXT_FILE.read_text(encoding="utf-8").splitlines()
                       if line.strip())


# -- generating -----------------------------------------------------------------------------------
def _generate_slmkit(scorer, prompt: str, settings: dict) -> tuple[str, int]:
    from slmkit.generate import GenerationConfig, generate

    config = GenerationConfig(max_new_tokens=settings["max_new_tokens"], temperature=settings["temperature"],
                              top_k=settings["top_k"], seed=settings["seed"])
    result = generate(scorer.model, prompt, config, tokenizer=scorer.tokenizer)
    return result.text or "", len(result.tokens)


def _generate_hf(scorer, source, prompt: str, settings: dict, device: torch.device) -> tuple[str, int]:
    ids = scorer.encode(prompt)
    # Like slmkit's default overflow ("slide"), a prompt too long for the positions loses its left end.
    new_tokens = min(settings["max_new_tokens"], source.max_context - 1)
    ids = ids[-(source.max_context - new_tokens):]
    sample = settings["temperature"] > 0
    options = {"do_sample": sample, "max_new_tokens": new_tokens,
               "pad_token_id": scorer.tokenizer.pad_token_id if scorer.tokenizer.pad_token_id is not None
               else scorer.eot_id}
    if sample:
        options |= {"temperature": settings["temperature"], "top_k": settings["top_k"], "top_p": 1.0}
    else:
        options |= {"temperature": None, "top_k": None, "top_p": None}
    input_ids = torch.tensor([ids], device=device)
    torch.manual_seed(settings["seed"])  # transformers samples from the global generator
    with torch.no_grad():
        out = scorer.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **options)
    new = out[0, len(ids):].tolist()
    if scorer.eot_id is not None and scorer.eot_id in new:  # the end-of-text token ends it, as in slmkit
        new = new[:new.index(scorer.eot_id)]
    return scorer.tokenizer.decode(new, skip_special_tokens=True), len(new)


def compare_models(models: Sequence[str | os.PathLike], prompts: str | os.PathLike | None = None, *,
                   max_new_tokens: int = 64, seed: int = 0, temperature: float = 0.8, top_k: int = 40,
                   text: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                   device: str = "auto", progress: bool = False) -> CompareReport:
    """Continue every prompt with every model (slmkit checkpoints or runs, local Hugging Face model
    directories) with the same settings and seed, and measure each model: bits per byte on the shared
    text (`text`, a text file, or the built-in one), distinct-1/2 and repetition rate of its outputs,
    mean output length in its own tokens and in characters. `prompts` is a JSONL file (default: the
    built-in suite). With `out`, writes compare.md and compare.html there. Temperature 0 is greedy.
    Raises SlmError for a bad model directory, prompts file or setting."""
    if not models:
        raise SlmError("no model given; give slmkit checkpoints or runs, or Hugging Face model directories")
    if max_new_tokens < 1:
        raise SlmError(f"--max-new-tokens {max_new_tokens}: must be 1 or more")
    if temperature < 0 or top_k < 0:
        raise SlmError(f"temperature {temperature} and top-k {top_k} must be 0 or more (0: greedy / no top-k)")
    prompt_list = load_prompts(prompts)
    sources = [find_model(path) for path in models]
    settings = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "seed": seed,
                "top_p": 1.0, "repetition_penalty": 1.0}
    setup = setup_device(device, "fp32")
    with tempfile.TemporaryDirectory() as tmp:
        if text is None:
            text_path = Path(tmp) / "compare_text.txt"
            text_path.write_text(shared_text(), encoding="utf-8")
            described = f"the built-in shared text ({len(shared_text().encode('utf-8')):,} bytes)"
        else:
            text_path, described = Path(text), f"{text}"
        context = min([BITS_PER_BYTE_CONTEXT] + [s.default_context for s in sources])
        scores = evaluate_models([str(m) for m in models], texts=[text_path], context=context,
                                 device=setup.device.type, precision="fp32", progress=progress)
    described += f", windows of {context} tokens"
    outputs, figures = [], []
    for source, score in zip(sources, scores.results):
        scorer = load_scorer(source, setup.device)
        texts, lengths = [], []
        for prompt in prompt_list:
            if source.kind == "slmkit":
                output, tokens = _generate_slmkit(scorer, prompt.prompt, settings)
            else:
                output, tokens = _generate_hf(scorer, source, prompt.prompt, settings, setup.device)
            texts.append(output)
            lengths.append(tokens)
        del scorer
        outputs.append(texts)
        figures.append(ModelFigures(source.path, source.kind, score.bits_per_byte, distinct_n(texts, 1),
                                    distinct_n(texts, 2), repetition_rate(texts), sum(lengths) / len(lengths),
                                    sum(len(t) for t in texts) / len(texts)))
    report = CompareReport(settings, prompt_list, [s.path for s in sources], outputs, figures, described)
    if out is not None:
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        report.markdown_path, report.html_path = out_dir / "compare.md", out_dir / "compare.html"
        write_text_atomic(report.markdown_path, report.markdown())
        write_text_atomic(report.html_path, report.html())
    return report
