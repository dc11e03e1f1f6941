"""Audit: is a run's validation figure, or a dataset's split, to be trusted?

For a DATASET: the train/validation n-gram overlap (recomputed with `slmkit.data.leak` on the token files
up to LEAK_RECHECK_TOKENS, and compared with prepare's record in meta.json, which a dataset whose files
were replaced after prepare carries stale; above that size, the record), validation documents that occur word for word in training
(hashed token documents of the .bin files), and prepare's near-duplicate records. For a RUN: its
dataset's audit (when config.json's data.path still exists) and its evaluation history: best and last
validation loss, the train/validation gap over time, losses near zero, the honest-number warnings logged.
Everything ends in one verdict line with the reasons.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slmkit.data.leak import LEAK_WARN_SHARE, leak_check
from slmkit.data.loader import open_dataset
from slmkit.errors import SlmError
from slmkit.rundir import RUN_CONFIG, is_run_dir, read_metrics, read_run_config
from slmkit.train.evaluator import NEAR_ZERO_LOSS, honesty_warnings, perplexity

PROBLEM, CAUTION, OK = "problem", "caution", "ok"  # a finding's severity, worst first
DUPLICATE_SHARE = 0.01  # validation documents found verbatim in training above this share: a problem
LOW_BITS_PER_BYTE = 0.5  # validation bits per byte below this: no model of natural text gets there
NEAR_ONE_PERPLEXITY = 1.5  # without bits per byte: a validation perplexity per token below this (< 0.59 bits)
HASH_TOKENS_LIMIT = 1 << 28  # token files larger than this (in tokens) are not hashed document by document
LEAK_RECHECK_TOKENS = 1 << 28  # token files up to this size (in tokens) get the leak check recomputed
STALE_SHARE = 0.01  # a recorded overlap this far from the token files' own: meta.json is stale
HONESTY_KINDS = ("memorising", "val_below_train", "near_zero_loss")


@dataclass
class Finding:
    """One thing the audit checked: `kind` (leak, duplicates, near_zero_loss, ...), its severity
    (problem, caution or ok), a one-line message, and the figure behind it (a share, a loss) or None."""

    kind: str
    severity: str
    message: str
    value: float | None = None
    reason: str = ""  # the short reason the verdict gives (problems and cautions)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "severity": self.severity, "message": self.message, "value": self.value}


@dataclass
class AuditReport:
    """What `audit` found about a run or dataset directory: the findings, worst first, and a verdict."""

    path: str
    kind: str  # "run" or "dataset"
    findings: list[Finding] = field(default_factory=list)
    dataset: str | None = None  # a run's dataset directory
    history: list[dict] = field(default_factory=list)  # a run's eval records: step, val/train loss, gap

    @property
    def trustworthy(self) -> bool:
        return not any(f.severity == PROBLEM for f in self.findings)

    @property
    def verdict(self) -> str:
        """One line: `verdict: NOT TRUSTWORTHY — reasons`, `verdict: caution — reasons` or `verdict: clean — ...`."""
        for severity, label in ((PROBLEM, "NOT TRUSTWORTHY"), (CAUTION, "caution")):
            reasons = [f.reason or f.message for f in self.findings if f.severity == severity]
            if reasons:
                return f"verdict: {label} — {'; '.join(reasons)}"
        checked = ", ".join(f.kind for f in self.findings) or "nothing to check"
        return f"verdict: clean — no leak, duplication or memorisation found (checked: {checked})"

    def text(self) -> str:
        head = f"audit of {self.kind} {self.path}" + (f" (dataset {self.dataset})" if self.dataset else "")
        lines = [head]
        lines += [f"  [{f.severity}] {f.kind}: {f.message}" for f in self.findings]
        if self.history:
            lines.append("  train/val gap (val - train loss, nats) by step: " + ", ".join(
                f"{h['step']}: {h['gap']:+.3f}" for h in _thin(self.history) if h["gap"] is not None))
        lines.append(self.verdict)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"path": self.path, "kind": self.kind, "dataset": self.dataset, "trustworthy": self.trustworthy,
                "verdict": self.verdict, "findings": [f.to_dict() for f in self.findings], "history": self.history}


def audit(path) -> AuditReport:
    """Audit a run directory (made by `slm train`) or a dataset directory (made by `slm prepare`).

    Shares are fractions (0..1), losses nats per token. Raises SlmError when `path` is neither, or is a
    damaged one (the reader's own message)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SlmError(f"{path} does not exist; give a run directory (slm train) or a dataset directory (slm prepare)")
    if is_run_dir(path) or ((path / RUN_CONFIG).is_file() and not (path / "meta.json").is_file()):
        return _audit_run(path)
    if (path / "meta.json").is_file():
        report = AuditReport(str(path), "dataset")
        report.findings = _sorted(_dataset_findings(path))
        return report
    raise SlmError(f"{path} is neither a run directory (no {RUN_CONFIG} or checkpoints/) nor a dataset directory "
                   f"(no meta.json); give a directory made by `slm train` or `slm prepare`")


def _audit_run(path: Path) -> AuditReport:
    config = read_run_config(path)
    events = read_metrics(path)
    data_path = (config.get("data") or {}).get("path")
    report = AuditReport(str(path), "run", dataset=data_path)
    findings: list[Finding] = []
    dataset_findings: list[Finding] = []
    if data_path and (Path(data_path) / "meta.json").is_file():
        dataset_findings = _dataset_findings(Path(data_path))
    else:
        findings.append(Finding("dataset", CAUTION, f"the run's dataset {data_path} no longer exists: the split "
                                "was not checked for leaks", reason="its dataset is gone, the split unchecked"))
    evals = [e for e in events if e.get("event") == "eval" and e.get("val_loss") is not None]
    report.history = [{"step": e.get("step"), "val_loss": e["val_loss"], "train_loss": e.get("train_loss"),
                       "gap": None if e.get("train_loss") is None else round(e["val_loss"] - e["train_loss"], 6)}
                      for e in evals]
    findings += _history_findings(evals, events, dataset_findings)
    report.findings = _sorted(dataset_findings + findings)  # the data's problems explain the figures: first
    return report


def _history_findings(evals: list[dict], events: list[dict], dataset_findings: list[Finding]) -> list[Finding]:
    """Findings from the eval history and logged warnings of a run."""
    if not evals:
        return [Finding("evaluations", CAUTION, "the run logged no evaluation: no validation figure to trust",
                        reason="no evaluation logged")]
    findings = []
    best = min(evals, key=lambda e: e["val_loss"])
    last = evals[-1]
    best_ppl = perplexity(best["val_loss"])
    bpb = best.get("val_bpb")
    findings.append(Finding(
        "validation", OK, f"best val loss {best['val_loss']:.4f} (perplexity {best_ppl:.3f}"
        + (f", {bpb:.3f} bits per byte" if bpb is not None else "") + f") at step {best.get('step')}; last "
        f"{last['val_loss']:.4f} (perplexity {perplexity(last['val_loss']):.3f}) at step {last.get('step')}",
        value=best["val_loss"]))
    leak = next((f for f in dataset_findings if f.kind == "leak" and f.severity == PROBLEM), None)
    if leak is not None:  # the leak explains the figure: say so in the verdict's reason
        leak.reason = f"validation perplexity {best_ppl:.2f} with {leak.reason}"
    implausible = bpb < LOW_BITS_PER_BYTE if bpb is not None else best_ppl < NEAR_ONE_PERPLEXITY
    if implausible:
        figure = f"{bpb:.3f} bits per byte" if bpb is not None else f"perplexity {best_ppl:.3f} per token"
        bound = f"{LOW_BITS_PER_BYTE} bits per byte" if bpb is not None else f"perplexity {NEAR_ONE_PERPLEXITY}"
        if leak is not None:  # with the overlap, the figure is the model reciting what it memorised
            findings.append(Finding(
                "memorised", PROBLEM, f"validation {figure} (perplexity {best_ppl:.3f}) is below {bound}, lower "
                "than models of natural text reach; the validation text is in the training text, so the model "
                "recites what it memorised", value=bpb if bpb is not None else best_ppl,
                reason=f"memorised: validation {figure}, below what models of natural text reach"))
        else:
            findings.append(Finding("low_perplexity", CAUTION, f"validation {figure} is below {bound}, lower than "
                                    "models of natural text reach; check the data",
                                    value=bpb if bpb is not None else best_ppl,
                                    reason=f"validation {figure} is implausibly low"))

    low = [(e.get("step"), name, e[key]) for e in events if e.get("event") in ("train", "eval")
           for name, key in (("validation", "val_loss"), ("training", "train_loss"), ("training", "loss"))
           if isinstance(e.get(key), (int, float)) and e[key] < NEAR_ZERO_LOSS]
    if low:
        step, name, value = low[0]
        findings.append(Finding(
            "near_zero_loss", PROBLEM, f"{name} loss {value:.4f} (perplexity {math.exp(value):.3f}) at step {step}, "
            f"{len(low)} losses under {NEAR_ZERO_LOSS} nats: the data is memorised or leaks", value=value,
            reason=f"{name} loss {value:.4f} by step {step} (memorised: no model of real text gets there)"))
    else:
        findings.append(Finding("near_zero_loss", OK, f"no loss under {NEAR_ZERO_LOSS} nats"))

    logged = {e.get("kind"): e.get("message", "") for e in events if e.get("event") == "warning"
              and e.get("kind") in HONESTY_KINDS}
    for kind, message in honesty_warnings(evals):  # runs from before the warnings existed, too
        logged.setdefault(kind, message)
    gaps = [e["val_loss"] - e["train_loss"] for e in evals if e.get("train_loss") is not None]
    gap_text = f"val - train gap {gaps[0]:+.3f} at first eval, {gaps[-1]:+.3f} at the last" if gaps else "no train loss"
    for kind in ("memorising", "val_below_train"):
        if kind in logged:
            severity = PROBLEM if kind == "val_below_train" else CAUTION
            reason = ("validation loss below training loss (leak or an easier split)" if kind == "val_below_train"
                      else "memorising: train/val gap wide or val stalled while train fell; keep the best checkpoint")
            findings.append(Finding(kind, severity, f"{logged[kind]} ({gap_text})",
                                    value=gaps[-1] if gaps else None, reason=reason))
    if not any(kind in logged for kind in ("memorising", "val_below_train")):
        findings.append(Finding("gap", OK, gap_text, value=gaps[-1] if gaps else None))
    return findings


def _dataset_findings(directory: Path) -> list[Finding]:
    """Leak, verbatim duplicates and near-duplicates across the split of one dataset directory."""
    dataset = open_dataset(directory, scan_ids=False)
    meta = dataset.meta
    train, val = dataset.train, dataset.val
    findings = []

    recorded = meta.get("leak_check") or {}
    recorded_share = recorded.get("overlap_share")
    leak, source = recorded, "prepare's leak check"
    if recorded_share is None or len(train) + len(val) <= LEAK_RECHECK_TOKENS:
        splits = meta["splits"]["train"]  # the bytes per token prepare's check used, so the n-gram length agrees
        bpt = (splits.get("bytes") or 0) / max(splits["tokens"] - splits.get("documents", 0), 1) or 1.0
        leak = leak_check(train, val, dataset.eot_id, bpt)
        source = "recomputed on the token files"
        if recorded_share is not None and abs(recorded_share - leak["overlap_share"]) <= STALE_SHARE:
            source = "prepare's leak check, confirmed on the token files"
        elif recorded_share is not None:
            source += f"; meta.json records {recorded_share:.1%}"
            findings.append(Finding(
                "stale_meta", CAUTION, f"meta.json's leak check records {recorded_share:.1%} overlap, the token files "
                f"hold {leak['overlap_share']:.1%}: train.bin or val.bin changed after `slm prepare` wrote them, so "
                "meta.json's other records (near-duplicates, split) describe other files", value=recorded_share,
                reason="meta.json's records do not match its token files (changed after prepare)"))
    share, n = leak["overlap_share"], leak["ngram_tokens"]
    message = (f"{share:.1%} of validation {n}-token sequences (about {leak.get('ngram_bytes', '?')} bytes) "
               f"also occur in training ({source}; warn above {LEAK_WARN_SHARE:.0%})")
    if share > LEAK_WARN_SHARE:
        findings.append(Finding("leak", PROBLEM, message, value=share,
                                reason=f"{share:.0%} of validation {n}-grams in training text (leak)"))
    else:
        findings.append(Finding("leak", OK, message, value=share))

    if len(train) + len(val) <= HASH_TOKENS_LIMIT:
        val_docs, shared = _shared_documents(train, val, dataset.eot_id)
        duplicate_share = shared / val_docs if val_docs else 0.0
        message = f"{shared} of {val_docs} validation documents occur verbatim in training"
        severity = PROBLEM if duplicate_share > DUPLICATE_SHARE else OK
        findings.append(Finding("duplicates", severity, message, value=duplicate_share,
                                reason=f"{shared} of {val_docs} validation documents copied from training"))
    else:
        findings.append(Finding("duplicates", OK, f"not hashed: over {HASH_TOKENS_LIMIT} tokens"))

    near = meta.get("near_duplicates")
    across = (meta.get("leak_check") or {}).get("near_duplicate_pairs_across_split")
    if near:
        message = (f"prepare grouped {near.get('pairs', 0)} near-duplicate pairs into {near.get('groups', 0)} groups "
                   f"(mode {near.get('mode')}, threshold {near.get('threshold')}), each kept on one side of the split")
        if across:
            findings.append(Finding("near_duplicates", PROBLEM, f"{message}; yet {across} pairs span the split",
                                    value=across, reason=f"{across} near-duplicate pairs span the split"))
        else:
            findings.append(Finding("near_duplicates", OK, message, value=0))
    else:
        findings.append(Finding("near_duplicates", OK, "meta.json records no near-duplicate grouping (not made "
                                "by `slm prepare`, or an older one): only the verbatim checks above apply"))
    return findings


def _shared_documents(train: np.ndarray, val: np.ndarray, eot_id: int) -> tuple[int, int]:
    """(validation documents, of them found verbatim among the training documents); documents are the
    token runs between end-of-text ids, compared by a 16-byte hash of their ids."""
    train_hashes = set(_document_hashes(train, eot_id))
    val_hashes = _document_hashes(val, eot_id)
    return len(val_hashes), sum(1 for h in val_hashes if h in train_hashes)


def _document_hashes(tokens: np.ndarray, eot_id: int) -> list[bytes]:
    tokens = np.asarray(tokens)
    bounds = np.concatenate([[-1], np.flatnonzero(tokens == eot_id), [len(tokens)]])
    data = tokens.tobytes()
    size = tokens.itemsize
    return [hashlib.blake2b(data[(a + 1) * size : b * size], digest_size=16).digest()
            for a, b in zip(bounds[:-1], bounds[1:]) if b - a > 1]


def _sorted(findings: list[Finding]) -> list[Finding]:
    order = {PROBLEM: 0, CAUTION: 1, OK: 2}
    return sorted(findings, key=lambda f: order[f.severity])


def _thin(history: list[dict], most: int = 12) -> list[dict]:
    """At most `most` records, evenly spaced, the first and last kept."""
    if len(history) <= most:
        return history
    picks = sorted({round(i * (len(history) - 1) / (most - 1)) for i in range(most)})
    return [history[i] for i in picks]
