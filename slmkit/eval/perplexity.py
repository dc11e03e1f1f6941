"""`slm eval`: loss, perplexity and bits per byte of models on a dataset split or on text files.

    from slmkit.eval.perplexity import evaluate_models, evaluate_checkpoints
    report = evaluate_models(["runs/nano", "hf/gpt2"], texts=["notes.txt"])   # or data="data/shakespeare"
    print(report.table())                         # report.to_dict() for JSON
    evaluate_checkpoints("runs/nano")             # every checkpoint of a run: a table and a plot

A model is an slmkit checkpoint or run directory (its best, else last, checkpoint) or a local Hugging
Face model directory (anything `transformers.AutoModelForCausalLM` loads). Each model tokenizes text
with its own tokenizer, so bits per byte compares models with different tokenizers; loss and
perplexity are per token of each model's own tokenizer. A dataset is token ids already: a model
whose tokenizer is the dataset's scores them as they are; any other model scores the split's text,
decoded document by document with the dataset's tokenizer and tokenized again with its own
(`retokenize_split`), with bits per byte over the UTF-8 bytes of that decoded text.

The windows and the summing are `slmkit.eval.scoring`'s, shared with the trainer's evaluation; the
loss of an slmkit model is the trainer's own fused loss (`slmkit.train.loss.language_model_loss`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from slmkit.data.loader import bits_per_byte, open_dataset
from slmkit.errors import SlmError
from slmkit.eval.scoring import (
    IGNORE_INDEX,
    check_window_settings,
    count_windows,
    evaluation_mode,
    score_batches,
    window_batches,
)
from slmkit.model.checkpoint import load_model, read_checkpoint_config
from slmkit.report.plots import pyplot, save_figure
from slmkit.rundir import (
    CHECKPOINTS,
    RUN_FORMAT,
    is_run_dir,
    read_run_config,
    resolve_checkpoint_dir,
    run_checkpoints,
)
from slmkit.tokenizer import load_tokenizer
from slmkit.train.device import setup_device
from slmkit.train.evaluator import perplexity
from slmkit.train.loss import language_model_loss, linear_cross_entropy
from slmkit.utils import option, progress_bar, write_text_atomic

BITS_PER_BYTE_NOTE = ("bits per byte compares models with different tokenizers; loss and perplexity are per token "
                      "of each model's own tokenizer and compare only models that share one")
DEFAULT_MAX_CONTEXT = 2048  # the longest default window: a model's full context can be 128K tokens
PROBE_TOKENS = 4096  # dataset tokens decoded and encoded again to compare tokenizers
SPLIT_CHUNK_TOKENS = 1 << 20  # dataset tokens read at a time when a split is decoded document by document
WRITE_CHUNK_TOKENS = 1 << 20  # re-tokenized ids gathered before they are written to the scratch file
# Hugging Face model types whose logits are exactly lm_head(base_model(x)) (no scaling or capping),
# scored with the fused chunked loss instead of full logits. Others get the plain loss on logits.
FUSED_HEAD_MODEL_TYPES = {"gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma3_text"}


@dataclass
class EvalOptions:
    """How `slm eval` scores: the windows, the split, the device. Lengths in tokens."""

    context: int | None = option(None, "window length in tokens (default: a run's training seq_len, else the "
                                       f"model's context up to {DEFAULT_MAX_CONTEXT}; the smallest over the models)",
                                 metavar="N")
    stride: int | None = option(None, "tokens from one window to the next (default: the context, no overlap); "
                                      "less than the context scores every token with more left context", metavar="N")
    batch_size: int = option(8, "windows per forward pass", metavar="N")
    split: str = option("val", "the dataset split to score", choices=("val", "train"))
    max_tokens: int | None = option(None, "score only the first N tokens of the split or text", metavar="N")
    device: str = option("auto", "cpu, cuda, cuda:N, mps or auto")
    precision: str = option("auto", "auto: bf16 where the device has it (CPUs with AVX512-BF16 or AMX), else fp32",
                            choices=("auto", "fp32", "bf16", "fp16"))


@dataclass
class EvalResult:
    """One model's figures: loss in nats per token, bits per byte of text (None when the data has no
    byte counts), tokens scored, seconds of scoring (loading and tokenizing left out)."""

    model: str
    kind: str  # "slmkit" or "hugging face"
    tokenizer: str
    tokens: int
    loss: float
    perplexity: float
    bits_per_byte: float | None
    bytes_per_token: float | None
    seconds: float
    checkpoint: str = ""  # the directory loaded
    step: int | None = None  # training step of an slmkit checkpoint
    name: str = ""  # the checkpoint's name in its run (step-N, best, last), for --checkpoints
    retokenized_from: str | None = None  # the dataset's tokenizer, when its text was decoded and re-tokenized
    documents: int | None = None  # re-tokenized: the documents read
    unfaithful_documents: int | None = None  # of them, those whose decoded text is not what was tokenized

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokenizer_column(self) -> str:
        """The tokenizer that scored the model, and the dataset's it re-tokenized from, if any."""
        return self.tokenizer + (f", re-tokenized from {self.retokenized_from}" if self.retokenized_from else "")

    def note(self) -> str | None:
        """One line on a re-tokenized dataset: which tokenizers, and whether the decoded text is faithful."""
        if self.retokenized_from is None:
            return None
        head = (f"{self.model}: the dataset's text, decoded with its tokenizer {self.retokenized_from!r}, was "
                f"re-tokenized with the model's {self.tokenizer!r}")
        if not self.unfaithful_documents:
            return f"{head}; all {self.documents:,} documents decode faithfully"
        return (f"{head}; {self.unfaithful_documents:,} of {self.documents:,} documents do not decode faithfully "
                f"(their decoded text tokenizes to other ids with {self.retokenized_from!r}: unknown symbols or "
                f"bytes were lost), so bits per byte is of the decoded text, not the original")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "tokens_per_s": round(self.tokens_per_s, 1),
                **({"note": self.note()} if self.retokenized_from else {})}


@dataclass
class EvalReport:
    """The results of `evaluate_models` on one data source, with the settings used."""

    data: str  # what was scored, in words
    context: int
    stride: int
    precision: str
    device: str
    results: list[EvalResult] = field(default_factory=list)
    table_path: Path | None = None  # --checkpoints: the table and plot written
    plot_path: Path | None = None

    def to_dict(self) -> dict:
        return {"data": self.data, "context": self.context, "stride": self.stride, "precision": self.precision,
                "device": self.device, "note": BITS_PER_BYTE_NOTE,
                "results": [result.to_dict() for result in self.results],
                **({"table": str(self.table_path)} if self.table_path else {}),
                **({"plot": str(self.plot_path)} if self.plot_path else {})}

    def table(self) -> str:
        """A markdown table, headed by the data and settings, ended by the note on bits per byte."""
        by_checkpoint = any(result.name for result in self.results)
        head = ["checkpoint", "step"] if by_checkpoint else ["model", "kind", "tokenizer"]
        lines = [f"data: {self.data}; context {self.context}, stride {self.stride}, {self.precision} on {self.device}",
                 "",
                 "| " + " | ".join(head + ["tokens", "loss", "perplexity", "bits/byte", "tokens/s"]) + " |",
                 "|" + "---|" * len(head) + "---:|" * 5]
        for r in self.results:
            first = [r.name, "" if r.step is None else str(r.step)] if by_checkpoint else \
                [r.model, r.kind + (f" (step {r.step})" if r.step is not None else ""), r.tokenizer_column]
            bpb = "n/a" if r.bits_per_byte is None else f"{r.bits_per_byte:.4f}"
            lines.append("| " + " | ".join(first + [f"{r.tokens:,}", f"{r.loss:.4f}", f"{r.perplexity:.3f}", bpb,
                                                   f"{r.tokens_per_s:,.0f}"]) + " |")
        notes = list(dict.fromkeys(r.note() for r in self.results if r.retokenized_from))
        lines += ["", *notes, BITS_PER_BYTE_NOTE + "."]
        if self.table_path:
            lines.append(f"wrote {self.table_path}" + (f" and {self.plot_path}" if self.plot_path else ""))
        return "\n".join(lines)


# -- what a model directory is ------------------------------------------------------------------
@dataclass
class ModelSource:
    """A model directory as found on disk, before its weights are loaded."""

    path: str  # as given
    kind: str  # "slmkit" or "hugging face"
    directory: Path  # the checkpoint (slmkit) or model (HF) directory to load
    max_context: int  # positions the model has
    default_context: int  # the window it is scored with when none is given
    step: int | None = None
    run_dir: Path | None = None  # the run it comes from, when known (its dataset is the default data)
    weights_sha256: str | None = None  # slmkit: equal weights are scored once (a run's best is a step-N)


def find_model(path: str | os.PathLike) -> ModelSource:
    """What `path` holds: an slmkit run or checkpoint, or a Hugging Face model directory. SlmError for
    anything else, saying what was expected."""
    given = Path(path)
    if not given.exists():
        raise SlmError(f"model not found: {given} (neither a model directory nor a text file)")
    if not given.is_dir():
        raise SlmError(f"{given} is a file, not a model directory; give an slmkit checkpoint or run, or a Hugging "
                       f"Face model directory")
    config = _json_or_none(given / "config.json")
    if is_run_dir(given) or (config or {}).get("format") == RUN_FORMAT:
        directory = resolve_checkpoint_dir(given)
        return _slmkit_source(str(path), directory, run_dir=given)
    if (config or {}).get("format") == "slmkit-checkpoint":
        run = (config.get("run") and Path(config["run"])) or None
        return _slmkit_source(str(path), given, run_dir=run if run and is_run_dir(run) else None)
    if config and config.get("model_type"):
        positions = next((int(config[key]) for key in ("max_position_embeddings", "n_positions", "n_ctx",
                                                       "max_sequence_length") if config.get(key)), DEFAULT_MAX_CONTEXT)
        return ModelSource(str(path), "hugging face", given, positions, min(positions, DEFAULT_MAX_CONTEXT))
    hint = " (it is a dataset: give it with --data)" if (given / "meta.json").is_file() else ""
    raise SlmError(f"{given} is neither an slmkit checkpoint or run (a config.json of format slmkit-checkpoint, or "
                   f"a checkpoints/ folder) nor a Hugging Face model directory (a config.json with a model_type)"
                   f"{hint}")


def _slmkit_source(path: str, directory: Path, run_dir: Path | None) -> ModelSource:
    meta = read_checkpoint_config(directory)
    positions = int(meta["model"]["context_length"])
    seq_len = (meta.get("train") or {}).get("seq_len") or positions  # what the trainer evaluated with
    return ModelSource(path, "slmkit", directory, positions, min(seq_len, positions, DEFAULT_MAX_CONTEXT),
                       step=meta.get("step"), run_dir=run_dir, weights_sha256=meta.get("weights_sha256"))


def _json_or_none(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# -- loaded models: a tokenizer and a summed loss -------------------------------------------------
class SlmkitScorer:
    """An slmkit checkpoint with the tokenizer saved beside it; the loss is the trainer's fused one."""

    def __init__(self, source: ModelSource, device: torch.device):
        self.model = load_model(source.directory, device=device)
        try:
            self.tokenizer = load_tokenizer(source.directory)
        except SlmError as error:
            raise SlmError(f"{source.path}: no usable tokenizer saved with the checkpoint {source.directory} "
                           f"({error}); slm eval needs the model's tokenizer to read text or to check a dataset"
                           ) from None
        self.tokenizer_name = self.tokenizer.name
        self.vocab_size = self.model.config.vocab_size
        self.eot_id: int | None = self.tokenizer.eot_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return language_model_loss(self.model, x, y, reduction="sum")


class HuggingFaceScorer:
    """A local Hugging Face model directory through transformers (an optional extra, imported here)."""

    def __init__(self, source: ModelSource, device: torch.device):
        try:
            import transformers
        except ImportError:
            raise SlmError(f"{source.path} is a Hugging Face model directory; scoring it needs transformers: "
                           f"pip install 'slmkit[hf]'") from None
        directory = str(source.directory)
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
        except Exception as error:  # transformers raises many types for a missing or foreign tokenizer
            raise SlmError(f"cannot load the tokenizer of {source.path} with transformers.AutoTokenizer "
                           f"({type(error).__name__}: {str(error)[:200]}); the directory needs its tokenizer files "
                           f"(tokenizer.json, ...)") from None
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(directory, local_files_only=True,
                                                                      **_float32(transformers.__version__))
        except Exception as error:
            raise SlmError(f"cannot load {source.path} with transformers.AutoModelForCausalLM "
                           f"({type(error).__name__}: {str(error)[:200]})") from None
        self.model = model.to(device).eval()
        self.tokenizer.model_max_length = 1 << 62  # texts are split into windows here, not by the tokenizer
        self.tokenizer_name = type(self.tokenizer).__name__
        self.vocab_size = int(self.model.get_input_embeddings().num_embeddings)
        self.eot_id = self.tokenizer.eos_token_id
        self.fused = _fused_head(self.model)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.fused:
            hidden = self.model.base_model(input_ids=x, use_cache=False).last_hidden_state
            return linear_cross_entropy(hidden, self.model.get_output_embeddings().weight, y, reduction="sum")
        logits = self.model(input_ids=x, use_cache=False).logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")


def _float32(version: str) -> dict:
    """from_pretrained's float32 argument: `dtype` since transformers 4.56, `torch_dtype` before."""
    major, minor = (int(part) for part in version.split(".")[:2])
    return {"dtype": torch.float32} if (major, minor) >= (4, 56) else {"torch_dtype": torch.float32}


def _fused_head(model) -> bool:
    """Whether the HF model's logits are its output head applied to its base model's last hidden state,
    with nothing else (no bias, scale or soft-capping): then the loss need not make full logits."""
    config = model.config
    head = model.get_output_embeddings()
    return (config.model_type in FUSED_HEAD_MODEL_TYPES and isinstance(head, torch.nn.Linear) and head.bias is None
            and not getattr(config, "final_logit_softcapping", None) and model.base_model is not model)


def load_scorer(source: ModelSource, device: torch.device):
    return (SlmkitScorer if source.kind == "slmkit" else HuggingFaceScorer)(source, device)


# -- the data: a dataset split or text files ----------------------------------------------------
@dataclass
class TextData:
    """Text files, each one document, tokenized by each model in turn."""

    paths: list[Path]
    texts: list[str]

    @property
    def n_bytes(self) -> int:
        return sum(len(text.encode("utf-8")) for text in self.texts)

    def describe(self) -> str:
        names = ", ".join(str(p) for p in self.paths[:3]) + (f" and {len(self.paths) - 3} more" if len(self.paths) > 3 else "")
        return f"{len(self.paths)} text file{'s' if len(self.paths) > 1 else ''} ({names}; {self.n_bytes:,} bytes)"

    def token_ids(self, scorer, model: str) -> tuple[np.ndarray, float]:
        """(ids, UTF-8 bytes per token): each document followed by the model's end-of-text token when it
        has one, as `slm prepare` lays documents out."""
        ids: list[int] = []
        for path, text in zip(self.paths, self.texts):
            try:
                ids += scorer.encode(text)
            except SlmError as error:
                raise SlmError(f"{model} cannot tokenize {path}: {error}") from None
            if scorer.eot_id is not None:
                ids.append(scorer.eot_id)
        return np.asarray(ids, dtype=np.int64), (self.n_bytes / len(ids) if ids else 0.0)


def read_texts(paths: Sequence[str | os.PathLike]) -> TextData:
    texts = []
    for path in map(Path, paths):
        if path.is_dir():
            raise SlmError(f"{path} is a directory, not a text file")
        if not path.is_file():
            raise SlmError(f"text file not found: {path}")
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as error:
            raise SlmError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); "
                           f"convert it to UTF-8 first") from None
    return TextData([Path(p) for p in paths], texts)


def same_tokenizer(dataset, split: str, scorer) -> bool:
    """Whether the dataset's token ids mean to the model what they mean to the dataset: no id beyond the
    model's vocabulary, the same end-of-text id, and the same ids for the same text (the split's first
    PROBE_TOKENS tokens, decoded)."""
    ours = dataset.tokenizer
    if dataset.vocab_size > scorer.vocab_size:
        return False
    probe = ours.decode(np.asarray(dataset.split(split)[:PROBE_TOKENS]).tolist())
    try:
        return scorer.encode(probe) == ours.encode(probe) and scorer.eot_id in (None, dataset.eot_id)
    except SlmError:  # the model's tokenizer cannot even read the dataset's text
        return False


@dataclass
class Retokenized:
    """A dataset split's text as a model's tokenizer reads it (see `retokenize_split`)."""

    ids: np.ndarray  # the model's token ids (a memory map of a scratch file that is gone once unmapped)
    n_bytes: int  # UTF-8 bytes of the decoded text of the documents read
    documents: int  # documents read
    unfaithful_documents: int  # of them, those whose decoded text does not tokenize back to their ids

    @property
    def bytes_per_token(self) -> float:
        return self.n_bytes / len(self.ids) if len(self.ids) else 0.0


def split_documents(tokens: np.ndarray, eot_id: int) -> Iterator[tuple[np.ndarray, bool]]:
    """(ids, ended) of each document of a token split: the runs between end-of-text ids, read
    SPLIT_CHUNK_TOKENS at a time (one document is held whole, the split never). `ended` is False only
    for a last run that no end-of-text closes (a split sliced by another tool)."""
    pending: list[np.ndarray] = []
    for start in range(0, len(tokens), SPLIT_CHUNK_TOKENS):
        chunk = np.asarray(tokens[start:start + SPLIT_CHUNK_TOKENS])
        first = 0
        for end in np.flatnonzero(chunk == eot_id):
            yield (np.concatenate([*pending, chunk[first:end]]) if pending else chunk[first:end]), True
            pending, first = [], int(end) + 1
        if first < len(chunk):
            pending.append(chunk[first:])
    if pending:
        yield np.concatenate(pending), False


def retokenize_split(dataset, split: str, scorer, model: str, max_tokens: int | None = None,
                     progress: bool = False) -> Retokenized:
    """The text of a dataset split tokenized with a model's own tokenizer: each document (the ids
    between end-of-text ids) decoded with the dataset's tokenizer, encoded with the model's, and
    followed by the model's end-of-text id where the dataset had one (as text files are laid out), so
    scoring it equals scoring the decoded documents as text files. Stops after the document that
    reaches `max_tokens` ids. A document is faithful when its decoded text encodes back to its own ids
    with the dataset's tokenizer (a character tokenizer's unknown symbol, a byte no text decodes to, a
    normalizer that rewrote the text: not faithful). The ids go to an unlinked scratch file, memory
    mapped, so a large split is never held in memory. Raises SlmError when the model's tokenizer cannot
    read the text or gives ids outside its model's vocabulary."""
    ours = dataset.tokenizer
    tokens = dataset.split(split)
    n_bytes = documents = unfaithful = written = 0
    largest = -1
    buffer: list[int] = []
    with tempfile.TemporaryFile(prefix="slm-eval-", suffix=".bin") as scratch, \
            progress_bar(len(tokens), f"re-tokenize for {model}", enabled=progress, unit="tok", leave=False) as bar:
        for document, ended in split_documents(tokens, dataset.eot_id):
            text = ours.decode(document)
            try:
                ids = scorer.encode(text)
            except SlmError as error:
                raise SlmError(f"{model} cannot tokenize the text of dataset {dataset.dir} (decoded with its "
                               f"tokenizer {ours.name!r}): {error}") from None
            if ended and scorer.eot_id is not None:
                ids.append(scorer.eot_id)
            documents += 1
            unfaithful += not np.array_equal(ours.encode_to_array(text, np.int64), document)
            n_bytes += len(text.encode("utf-8", "surrogatepass"))
            largest = max(largest, max(ids, default=-1))
            buffer += ids
            bar.update(len(document) + ended)
            if len(buffer) >= WRITE_CHUNK_TOKENS:
                written += _write_ids(buffer, scratch)
            if max_tokens is not None and written + len(buffer) >= max_tokens:
                break
        written += _write_ids(buffer, scratch)
        if largest >= scorer.vocab_size:
            raise SlmError(f"{model}'s tokenizer gives id {largest}, outside its model's vocabulary of "
                           f"{scorer.vocab_size:,}; the tokenizer saved with the model is not its own")
        scratch.flush()
        ids = np.memmap(scratch, dtype=np.uint32, mode="r", shape=(written,)) if written else np.empty(0, np.uint32)
    return Retokenized(ids, n_bytes, documents, unfaithful)


def _write_ids(buffer: list[int], file) -> int:
    """Append `buffer` to `file` as uint32, empty it, and return how many ids were written."""
    count = len(buffer)
    np.asarray(buffer, dtype=np.uint32).tofile(file)
    buffer.clear()
    return count


# -- evaluating -----------------------------------------------------------------------------------
def evaluate_models(models: Sequence[str | os.PathLike], data: str | os.PathLike | None = None,
                    texts: Sequence[str | os.PathLike] = (), *, context: int | None = None,
                    stride: int | None = None, batch_size: int = 8, split: str = "val",
                    max_tokens: int | None = None, device: str = "auto", precision: str = "auto",
                    progress: bool = True) -> EvalReport:
    """Loss (nats per token), perplexity and bits per byte of each model on a dataset split (`data`,
    a directory made by `slm prepare`) or on text files (`texts`; each file is one document). A path
    in `models` that is a file is taken as a text file, so `slm eval MODEL... TEXT...` reads as it is
    written. With neither, the dataset of the first model that comes from a run is used.

    Every model is scored on the same windows of `context` tokens, `stride` apart (see
    slmkit.eval.scoring): the whole split or text, or its first `max_tokens` tokens. A model whose
    tokenizer is not the dataset's scores the split's text re-tokenized with its own (`retokenize_split`;
    the result names both tokenizers and says whether the decoded text is faithful). Raises SlmError
    for a directory that is no model, a stride above the context, a context longer than a model's,
    text shorter than one window, or text a model's tokenizer cannot read.
    """
    model_paths = [m for m in models if not Path(m).is_file()]
    texts = list(texts) + [m for m in models if Path(m).is_file()]
    if not model_paths:
        raise SlmError("no model given; give an slmkit checkpoint or run, or a Hugging Face model directory")
    sources = [find_model(path) for path in model_paths]
    return _evaluate(sources, data, texts, context=context, stride=stride, batch_size=batch_size, split=split,
                     max_tokens=max_tokens, device=device, precision=precision, progress=progress)


def evaluate_checkpoints(run_dir: str | os.PathLike, data: str | os.PathLike | None = None,
                         texts: Sequence[str | os.PathLike] = (), out: str | os.PathLike | None = None, *,
                         context: int | None = None, stride: int | None = None, batch_size: int = 8,
                         split: str = "val", max_tokens: int | None = None, device: str = "auto",
                         precision: str = "auto", progress: bool = True) -> EvalReport:
    """Every checkpoint of a run (step-N, best, last, and ema/ and average-*/ when present) scored as `evaluate_models` scores models (by
    default on the run's own dataset), sorted by step; the table is written to eval_checkpoints.md and
    a plot of loss and bits per byte against step to eval_checkpoints.png, in `out` (default the run's
    plots/ folder). Raises SlmError for a directory that is not a run or holds no checkpoint."""
    run_dir = Path(run_dir)
    read_run_config(run_dir)  # SlmError when it is not a run
    others = [str(path) for path in texts if Path(path).is_dir()]
    if others:
        raise SlmError(f"--checkpoints scores the checkpoints of one run; {', '.join(others)} is a directory, not a "
                       f"text file")
    found = run_checkpoints(run_dir)
    if not found:
        raise SlmError(f"run {run_dir} holds no checkpoint yet (nothing in {run_dir / CHECKPOINTS})")
    sources = []
    for name, path in found:
        source = _slmkit_source(f"{run_dir}/{CHECKPOINTS}/{name}", path, run_dir=run_dir)
        sources.append((name, source))
    order = {"best": 1, "last": 2, "ema": 3}  # after the step-N of the same step (the plot keeps the first)
    sources.sort(key=lambda item: (item[1].step if item[1].step is not None else -1,
                                   order.get(item[0], 4 if item[0].startswith("average-") else 0)))
    report = _evaluate([s for _, s in sources], data, texts, context=context, stride=stride, batch_size=batch_size,
                       split=split, max_tokens=max_tokens, device=device, precision=precision, progress=progress)
    for (name, _), result in zip(sources, report.results):
        result.name = name
    out_dir = Path(out) if out is not None else run_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    report.table_path = out_dir / "eval_checkpoints.md"
    report.plot_path = _plot_checkpoints(report.results, out_dir / "eval_checkpoints.png", run_dir.name)
    write_text_atomic(report.table_path, f"# Checkpoints of {run_dir}\n\n" + report.table() + "\n")
    return report


def _evaluate(sources: list[ModelSource], data, texts, *, context, stride, batch_size, split, max_tokens, device,
              precision, progress) -> EvalReport:
    if data is not None and texts:
        raise SlmError("give either a dataset (--data) or text files, not both")
    if data is None and not texts:
        run = next((s.run_dir for s in sources if s.run_dir is not None), None)
        if run is None:
            raise SlmError("nothing to score: give a dataset with --data DIR or text files")
        data = read_run_config(run)["data"]["path"]
        if not Path(data).is_dir():
            raise SlmError(f"the dataset of run {run}, {data}, is gone; give a dataset with --data DIR or text files")
    context = context if context is not None else min(s.default_context for s in sources)
    stride = stride if stride is not None else context
    check_window_settings(context, stride, batch_size)
    for source in sources:
        if context > source.max_context:
            raise SlmError(f"context {context} is longer than {source.path}'s {source.max_context} positions; "
                           f"use --context {source.max_context} or less")
    if max_tokens is not None and max_tokens < context + 1:
        raise SlmError(f"--max-tokens {max_tokens} is less than one window of context + 1 = {context + 1} tokens")
    try:
        setup = setup_device(device, precision)
    except SlmError as error:  # its messages name the training options; here they are flags
        raise SlmError(str(error).replace("train.device", "--device").replace("train.precision", "--precision")
                       .replace("device=auto", "--device auto")) from None
    if texts:
        text_data, dataset = read_texts(texts), None
        described = text_data.describe()
    else:
        text_data, dataset = None, open_dataset(data)
        if split not in dataset.meta["splits"]:
            raise SlmError(f"dataset {data} has no {split!r} split; use val or train")
        described = f"dataset {data}, {split} split ({dataset.meta['splits'][split]['tokens']:,} tokens)"
    if max_tokens is not None:
        described += f", first {max_tokens:,} tokens"
    report = EvalReport(described, context, stride, setup.precision, setup.device.type)
    scored: dict[str, EvalResult] = {}  # by weights hash
    for source in sources:
        if source.weights_sha256 in scored:
            report.results.append(dataclasses.replace(scored[source.weights_sha256], model=source.path,
                                                      checkpoint=str(source.directory), step=source.step))
            continue
        scorer = load_scorer(source, setup.device)
        retokenized = None
        if dataset is not None and same_tokenizer(dataset, split, scorer):
            ids, bytes_per_token = dataset.split(split), dataset.bytes_per_token(split)
        elif dataset is not None:
            retokenized = retokenize_split(dataset, split, scorer, source.path, max_tokens, progress)
            ids, bytes_per_token = retokenized.ids, retokenized.bytes_per_token
        else:
            ids, bytes_per_token = text_data.token_ids(scorer, source.path)
            if len(ids) and int(ids.max()) >= scorer.vocab_size:
                raise SlmError(f"{source.path}'s tokenizer gives id {int(ids.max())}, outside its model's vocabulary "
                               f"of {scorer.vocab_size:,}; the tokenizer saved with the model is not its own")
        ids = ids[:max_tokens] if max_tokens is not None else ids
        if len(ids) < context + 1:
            where = "the text" if dataset is None else f"the {split} split"
            raise SlmError(f"{where} is {len(ids):,} tokens with {source.path}'s tokenizer, fewer than one window of "
                           f"context + 1 = {context + 1}; use --context {max(1, len(ids) - 1)} or less, or more text")
        result = _score(scorer, source, ids, bytes_per_token, context, stride, batch_size, setup, progress)
        if retokenized is not None:
            result.retokenized_from = dataset.tokenizer.name
            result.documents, result.unfaithful_documents = retokenized.documents, retokenized.unfaithful_documents
        report.results.append(result)
        if source.weights_sha256:
            scored[source.weights_sha256] = report.results[-1]
        del scorer, ids, retokenized  # the model's weights, and a re-tokenized split's scratch file
    return report


def _score(scorer, source: ModelSource, ids, bytes_per_token, context, stride, batch_size, setup,
           progress) -> EvalResult:
    windows = count_windows(len(ids), context, stride)
    with progress_bar(windows, source.path, enabled=progress, unit="window", leave=False) as bar, \
            evaluation_mode(scorer.model):
        start = time.perf_counter()
        totals = score_batches(scorer.loss, window_batches(ids, context, stride, batch_size), setup.device,
                               setup.autocast, on_batch=bar.update)
        nll, tokens = totals.tolist()
        seconds = time.perf_counter() - start
    loss = nll / tokens
    if not math.isfinite(loss):
        raise SlmError(f"{source.path} gives a loss of {loss} on this data: its weights are damaged (NaN or inf)")
    return EvalResult(source.path, source.kind, scorer.tokenizer_name, int(tokens), loss, perplexity(loss),
                      bits_per_byte(loss, bytes_per_token), bytes_per_token, seconds, str(source.directory),
                      source.step)


def _plot_checkpoints(results: list[EvalResult], path: Path, title: str) -> Path:
    """Loss and bits per byte against step (one point per step; best/last repeat a step-N), atomically."""
    plt = pyplot()
    points = {}
    for result in results:
        if result.step is not None and (result.step not in points or result.name.startswith("step-")):
            points[result.step] = result
    steps = sorted(points)
    panels = [("loss (nats per token)", [points[s].loss for s in steps])]
    if all(points[s].bits_per_byte is not None for s in steps):
        panels.append(("bits per byte", [points[s].bits_per_byte for s in steps]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for axis, (label, values) in zip(axes[0], panels):
        axis.plot(steps, values, marker="o")
        axis.set_xlabel("step")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    fig.suptitle(f"{title}: checkpoints")
    fig.tight_layout()
    return save_figure(fig, path)
