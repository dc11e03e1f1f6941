"""The model card of a Hugging Face export: README.md with YAML metadata, written from the run.

The metadata block is what the Hub reads (license, datasets, tags, library_name, pipeline_tag and, when
the checkpoint was evaluated, a model-index with its validation loss, perplexity and bits per byte).
The body says what the model is (architecture, parameter count, tokenizer), how it was trained (data
sources, steps, tokens, time, optimizer), how well it does (the validation figures of the exported
checkpoint's step, from metrics.jsonl) and whether those figures can be trusted (the `slm audit`
verdict), the generation defaults, and its intended use and limits. Everything comes from the run
directory (config.json, metrics.jsonl), the dataset's meta.json and the checkpoint; a checkpoint
with no run beside it (imported, averaged elsewhere, copied alone) gets a shorter card that says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from slmkit.errors import SlmError
from slmkit.model.checkpoint import read_checkpoint_config
from slmkit.model.config import ModelConfig
from slmkit.rundir import CHECKPOINTS, is_run_dir, read_metrics, read_run_config
from slmkit.utils import format_duration, format_number

__all__ = ["DEFAULT_LICENSE", "card_metadata", "find_run", "hub_datasets", "model_card"]

DEFAULT_LICENSE = "other"  # the Hub's word for "not one of the listed licenses"; --license names one


def find_run(given: str | os.PathLike, ckpt_dir: str | os.PathLike) -> Path | None:
    """The run directory a checkpoint belongs to, or None for a bare checkpoint.

    `given` is what the user named (a run or a checkpoint), `ckpt_dir` the resolved checkpoint. Tried
    in order: the run named, the run around the checkpoint (RUN/checkpoints/NAME, RUN/checkpoints/ema), and
    the run recorded in the checkpoint's config.json when it still exists.
    """
    given, ckpt_dir = Path(given), Path(ckpt_dir)
    candidates = [given] + [parent.parent for parent in ckpt_dir.parents[:3] if parent.name == CHECKPOINTS]
    try:
        recorded = read_checkpoint_config(ckpt_dir).get("run")
    except SlmError:
        recorded = None
    if isinstance(recorded, str):
        candidates.append(Path(recorded))
    for candidate in candidates:
        if is_run_dir(candidate):
            try:
                read_run_config(candidate)
            except SlmError:
                continue
            return candidate
    return None


def hub_datasets(sources: list[dict]) -> list[str]:
    """The Hugging Face dataset ids among a dataset's sources (meta.json "sources"), for the card's
    `datasets:`. Local files and built-ins read from disk have no id and are only described in the body."""
    from slmkit.data.sources import BUILTIN_CORPORA, parse_weight

    found = []
    for source in sources:
        spec, _ = parse_weight(str(source.get("spec", "")))
        if spec.startswith("hf:"):
            name = spec[3:].split(":")[0]
        else:
            origin = BUILTIN_CORPORA.get(spec.split(":")[0], (None, None))[1]
            name = origin[0] if isinstance(origin, tuple) else None
        if name and name not in found:
            found.append(name)
    return found


def model_card(ckpt_dir: str | os.PathLike, *, run_dir: str | os.PathLike | None, architecture: str,
               parameters: int, hf_parameters: int, generation: dict, generation_preset: str, tokenizer: str | None,
               license: str = DEFAULT_LICENSE, audit: bool = True, model_id: str | None = None) -> str:
    """README.md for the export of checkpoint `ckpt_dir`: YAML front matter, then the card's body.

    run_dir: the checkpoint's run (see `find_run`) or None for a bare checkpoint. architecture: the
    transformers class written in config.json. parameters: the checkpoint's parameter count (a tied head
    once); hf_parameters: the exported tensors' (zero biases an architecture always has included). generation: generation_config.json's fields,
    made from `generation_preset`. tokenizer: a one-line description, or None. audit: run `slm audit`
    on the run for its verdict (it reads the dataset; a failure is reported in the card, not raised).
    model_id: what `from_pretrained` is given in the usage example (a Hub repo or a directory).
    """
    ckpt_dir = Path(ckpt_dir)
    meta = read_checkpoint_config(ckpt_dir)
    config = ModelConfig.from_dict(meta["model"], where=str(ckpt_dir / "config.json"))
    facts = _Facts(ckpt_dir, meta, config, architecture, parameters, hf_parameters, tokenizer, generation,
                   generation_preset, model_id)
    run = _RunFacts(Path(run_dir), meta, audit) if run_dir is not None else None
    metadata = card_metadata(facts.name(run), config, license=license, run=run)
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True, width=1000)
    body = _run_body(facts, run) if run is not None else _bare_body(facts)
    return f"---\n{front}---\n\n" + "\n".join(body).rstrip() + "\n"


def card_metadata(name: str, config: ModelConfig, *, license: str, run: _RunFacts | None) -> dict:
    """The YAML metadata the Hub reads: license, datasets, tags, library_name, pipeline_tag, model-index."""
    metadata: dict = {"license": license, "library_name": "transformers", "pipeline_tag": "text-generation",
                      "tags": ["slmkit", "small-language-model"]}
    if run is not None and run.hub_datasets:
        metadata["datasets"] = run.hub_datasets
    if run is not None and run.evaluation is not None:
        record = run.evaluation
        metrics = [{"name": "Validation loss (nats per token)", "type": "loss", "value": record["val_loss"]}]
        if record.get("val_ppl") is not None:
            metrics.append({"name": "Validation perplexity", "type": "perplexity", "value": record["val_ppl"]})
        if record.get("val_bpb") is not None:
            metrics.append({"name": "Validation bits per byte", "type": "bits_per_byte", "value": record["val_bpb"]})
        dataset = {"name": run.dataset_name, "type": run.hub_datasets[0] if len(run.hub_datasets) == 1 else
                   run.dataset_name, "split": "validation"}
        metadata["model-index"] = [{"name": name, "results": [{
            "task": {"type": "text-generation", "name": "Text Generation"},
            "dataset": dataset, "metrics": metrics}]}]
    return metadata


# -- what is known ------------------------------------------------------------------------------
class _Facts:
    """What the checkpoint and the export say, with or without a run."""

    def __init__(self, ckpt_dir: Path, meta: dict, config: ModelConfig, architecture: str, parameters: int,
                 hf_parameters: int, tokenizer: str | None, generation: dict, preset: str, model_id: str | None):
        self.ckpt_dir, self.meta, self.config = ckpt_dir, meta, config
        self.architecture, self.parameters, self.hf_parameters = architecture, parameters, hf_parameters
        self.tokenizer, self.generation, self.preset, self.model_id = tokenizer, generation, preset, model_id

    def name(self, run: _RunFacts | None) -> str:
        """The run's name, or the checkpoint folder's without a run."""
        return (run.run_dir if run is not None else self.ckpt_dir).resolve().name


class _RunFacts:
    """What the run directory says about how the checkpoint was made and how well it does."""

    def __init__(self, run_dir: Path, checkpoint_meta: dict, audit: bool):
        self.run_dir = run_dir
        self.config = read_run_config(run_dir)
        events = read_metrics(run_dir)
        self.data = self.config.get("data") or {}
        self.train = self.config.get("train") or {}
        self.step = checkpoint_meta.get("step")
        self.tokens = checkpoint_meta.get("tokens")
        evals = [e for e in events if e.get("event") == "eval" and e.get("val_loss") is not None]
        self.best = min(evals, key=lambda e: e["val_loss"]) if evals else None
        self.evaluation, self.weights_note = _evaluation_of(checkpoint_meta, evals)
        times = [e["time"] for e in events if isinstance(e.get("time"), (int, float))]
        self.wall_time = max(times) if times else None
        self.last_step = max((e.get("step", 0) for e in events), default=0)
        self.dataset_found = bool(self.data.get("path")) and (Path(self.data["path"]) / "meta.json").is_file()
        self.sources = _dataset_sources(self.data.get("path"))
        self.hub_datasets = hub_datasets(self.sources or [])
        data_path = self.data.get("path")
        self.dataset_name = Path(data_path).name if data_path else "unknown"
        self.verdict = _audit_verdict(run_dir) if audit else None


def _evaluation_of(meta: dict, evals: list[dict]) -> tuple[dict | None, str | None]:
    """(the eval record that measured the checkpoint's weights, or None; a note on what the weights are).

    A training checkpoint is measured by the evaluation at its step; an EMA checkpoint by that
    evaluation's ema_* figures; an average of checkpoints by none (its weights were never evaluated).
    """
    if meta.get("averaged"):
        steps = (meta["averaged"] or {}).get("steps") if isinstance(meta["averaged"], dict) else None
        return None, (f"These weights are the uniform mean of the run's checkpoints at steps {steps}; the run "
                      f"never evaluated them (score them with `slm eval`).")
    at_step = [e for e in evals if e.get("step") == meta.get("step")]
    if not at_step:
        return None, None
    record = at_step[-1]
    if not meta.get("ema"):
        return record, None
    ema = {key.removeprefix("ema_"): value for key, value in record.items() if key.startswith("ema_")}
    decay = meta["ema"].get("decay") if isinstance(meta["ema"], dict) else None
    note = f"These weights are the exponential moving average of the trained ones (decay {decay})."
    return ({**ema, "step": record["step"]} if ema.get("val_loss") is not None else None), note


def _dataset_sources(path: str | None) -> list[dict] | None:
    """The sources in the dataset's meta.json, or None when it is gone or unreadable."""
    if not path:
        return None
    try:
        meta = json.loads((Path(path) / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    sources = meta.get("sources") if isinstance(meta, dict) else None
    return [s for s in sources if isinstance(s, dict)] if isinstance(sources, list) else None


def _audit_verdict(run_dir: Path) -> str:
    from slmkit.eval.audit import audit

    try:
        return audit(run_dir).verdict
    except SlmError as error:
        return f"the audit could not run: {error}"


# -- the body -----------------------------------------------------------------------------------
def _run_body(facts: _Facts, run: _RunFacts) -> list[str]:
    name = facts.name(run)
    data = _data_summary(run)
    finetune, init_from = run.config.get("finetune"), run.config.get("init_from")
    made = ("fine-tuned" if finetune else f"trained (starting from the weights of `{init_from}`)" if init_from
            else "trained from scratch")
    lines = [f"# {name}", "",
             f"A {_count(facts.parameters)}-parameter language model ({_shape(facts.config)}) {made} with "
             f"slmkit on {data}, exported for transformers as `{facts.architecture}`.", ""]
    lines += _usage(facts, name)
    lines += _model_section(facts)
    lines += ["## Training", "", "| | |", "|---|---|", f"| data | {data} |"]
    for split in ("train", "val"):
        info = (run.data.get("splits") or {}).get(split) or {}
        if info:
            lines.append(f"| {split} split | {info.get('tokens', 0):,} tokens, {info.get('documents', 0):,} "
                         f"documents, {info.get('bytes', 0):,} bytes |")
    if run.step is not None:
        lines.append(f"| this checkpoint | step {run.step:,} of {run.last_step:,} trained"
                     + (f", {run.tokens:,} tokens seen |" if run.tokens is not None else " |"))
    train = run.train
    lines += [
        f"| tokens per step | {run.config.get('tokens_per_step', 0):,} ({train.get('batch_size')} x "
        f"{run.config.get('seq_len')} x {train.get('grad_accum')} accumulation x {run.config.get('world_size', 1)} "
        f"process(es)) |",
        f"| optimizer | {train.get('optimizer')} (lr {train.get('lr')}, {train.get('schedule')} schedule, warmup "
        f"{train.get('warmup_steps')} steps, weight decay {train.get('weight_decay')}) |",
        f"| precision, device | {run.config.get('precision')}, {run.config.get('device')} |",
        f"| wall time of the run | {format_duration(run.wall_time)} |",
    ]
    if init_from:
        lines.append(f"| {'fine-tuned' if finetune else 'initialised'} from | `{init_from}` |")
    lines.append("")
    lines += ["## Evaluation", ""]
    if run.weights_note:
        lines += [run.weights_note, ""]
    if run.evaluation is not None:
        e = run.evaluation
        lines += [f"On the validation split at step {e['step']:,} (the exported checkpoint), from the run's "
                  f"metrics.jsonl:", "",
                  "| | loss (nats per token) | perplexity | bits per byte |", "|---|---|---|---|",
                  f"| validation | {format_number(e['val_loss'])} | {format_number(e.get('val_ppl'), 2)} | "
                  f"{format_number(e.get('val_bpb'))} |"]
        if e.get("train_loss") is not None:
            lines.append(f"| training sample | {format_number(e['train_loss'])} | {format_number(e.get('train_ppl'), 2)} | "
                         f"{format_number(e.get('train_bpb'))} |")
        lines += ["", "Bits per byte divide the loss by ln 2 and by the split's bytes per token, so models with "
                      "different tokenizers compare fairly.", ""]
    else:
        where = (f"at this checkpoint's step ({run.step:,})" if run.step is not None else
                 "for this checkpoint (it records no training step: an average or a merge, for instance)")
        lines += [f"No evaluation was recorded {where}; "
                  + (f"the run's best validation loss was {format_number(run.best['val_loss'])} nats per token at step "
                     f"{run.best['step']:,}." if run.best else "the run recorded no evaluation."), ""]
    if run.verdict is not None:
        lines += [f"Audit (`slm audit`: train/validation leaks, duplicated documents, memorisation): "
                  f"{run.verdict.removeprefix('verdict: ')}", ""]
    lines += _generation_section(facts)
    lines += _limits(facts, data, trained=True)
    return lines


def _bare_body(facts: _Facts) -> list[str]:
    name = facts.name(None)
    source = facts.meta.get("source") or {}
    origin = (f"It was imported from the Hugging Face model directory `{source.get('path')}`, and converted "
              f"back here." if source.get("format") == "huggingface" else "")
    lines = [f"# {name}", "",
             f"A {_count(facts.parameters)}-parameter language model ({_shape(facts.config)}) exported with "
             f"slmkit for transformers as `{facts.architecture}`.", "",
             "This export was made from a bare slmkit checkpoint: no training run was found with it, so its "
             "training data, training procedure and evaluation are not known to this card. " + origin, ""]
    lines += _usage(facts, name)
    lines += _model_section(facts)
    lines += _generation_section(facts)
    lines += _limits(facts, "unknown data", trained=False)
    return lines


def _usage(facts: _Facts, name: str) -> list[str]:
    model_id = facts.model_id or name
    return ["## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(model_id)})",
            f"model = AutoModelForCausalLM.from_pretrained({json.dumps(model_id)})",
            'inputs = tokenizer("Once upon a time", return_tensors="pt")',
            "print(tokenizer.decode(model.generate(**inputs)[0]))  # samples with generation_config.json",
            "```", ""]


def _model_section(facts: _Facts) -> list[str]:
    c = facts.config
    parameters = f"{facts.parameters:,}"
    if facts.hf_parameters != facts.parameters:
        parameters += (f" ({facts.hf_parameters:,} in the exported weights: {facts.architecture} always stores "
                       f"biases this model does not have, written as zeros)")
    position = (f"rotary (rotate-half, theta {c.rope_theta:g})" if c.position == "rope" else
                "learned" if c.position == "learned" else "none")
    lines = ["## Model", "", "| | |", "|---|---|",
             f"| architecture | `{facts.architecture}` (slmkit family {c.family!r}) |",
             f"| parameters | {parameters} |",
             f"| layers | {c.n_layers}, d_model {c.d_model}, {c.n_heads} heads / {c.n_kv_heads} KV heads of "
             f"{c.head_dim} |",
             f"| MLP | {c.mlp}, width {c.d_mlp} |",
             f"| norm | {c.norm}{' with bias' if c.norm_bias else ''}, {c.norm_placement} |",
             f"| positions | {position} |",
             f"| context | {c.context_length:,} tokens |",
             f"| output head | {'tied to the embedding' if c.tie_embeddings else 'untied'} |",
             f"| tokenizer | {facts.tokenizer or 'none saved with the checkpoint'} |", ""]
    return lines


def _generation_section(facts: _Facts) -> list[str]:
    shown = {k: v for k, v in facts.generation.items() if not k.endswith("_token_id")}
    settings = ", ".join(f"{k} {v}" for k, v in shown.items())
    stops = facts.generation.get("eos_token_id")
    return ["## Generation defaults", "",
            f"generation_config.json holds slmkit's {facts.preset!r} sampling preset (what `slm generate` uses "
            f"when none is named): {settings}; generation stops at token id(s) {stops}. Pass `do_sample=False` "
            f"for greedy decoding.", ""]


def _limits(facts: _Facts, data: str, trained: bool) -> list[str]:
    c = facts.config
    lines = ["## Intended use and limits", "",
             f"- Intended for research and teaching: studying how small language models train, comparing "
             f"architectures, tokenizers and data, and as a baseline. It is a small model "
             f"({_count(facts.parameters)} parameters)"
             + (f" trained only on {data}" if trained else "") + ".",
             "- Not for factual use: it writes fluent-looking text that is often wrong or incoherent, knows "
             "little about the world, and must not be relied on for facts, advice or decisions.",
             "- It reproduces the style, content and biases of its training data"
             + (" and was not tuned for safety or to follow instructions" if trained else "") + ".",
             f"- It reads at most {c.context_length:,} tokens of context."]
    if trained:
        lines.append("- The figures above are measured on the run's own validation split, which comes from "
                     "the same sources as its training data; they say nothing about other text.")
    lines.append("")
    return lines


# -- formatting ---------------------------------------------------------------------------------
def _data_summary(run: _RunFacts) -> str:
    if run.sources:
        parts = []
        for source in run.sources:
            spec, description = source.get("spec"), source.get("description")
            parts.append(f"`{spec}`" + (f" ({description})" if description and description != spec else ""))
        return ", ".join(parts)
    path = run.data.get("path")
    if not path:
        return "a dataset the run does not name"
    return f"the dataset `{path}`" + ("" if run.dataset_found else " (no longer found at export)")


def _shape(config: ModelConfig) -> str:
    return f"{config.n_layers} layers, d_model {config.d_model}, context {config.context_length:,}"


def _count(n: int) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.1f}{suffix}"
    return str(n)


