"""The evaluator: loss, perplexity and bits per byte of a model on a dataset's fixed samples, and the
honest-number warnings that watch those figures over a run.

It needs a model, a dataset and a few sizes, not a trainer: the trainer calls it at each evaluation,
and the evaluation commands use it on their own. The scoring itself (summed loss and counted tokens
over batches of windows) is `slmkit.eval.scoring.score_batches`, which `slm eval` uses too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from slmkit.data.loader import bits_per_byte
from slmkit.errors import SlmError
from slmkit.eval.scoring import evaluation_mode, score_batches
from slmkit.train import distributed
from slmkit.train.device import DeviceSetup
from slmkit.train.loss import language_model_loss

SPLITS = ("val", "train")
GAP_MIN_NATS = 0.1  # a gap smaller than this is noise, however it moves
STALLED_EVALS = 3  # evaluations without a new best validation loss, while training loss falls
LARGE_GAP_SHARE = 0.25  # a val - train gap above this share of the validation loss is memorising
NEAR_ZERO_LOSS = 0.05  # nats: perplexity below about 1.05


def perplexity(loss: float) -> float:
    """exp(loss), capped at exp(50) so a diverged loss stays a number."""
    return math.exp(min(loss, 50))


@dataclass
class Evaluator:
    """Mean loss (nats per token) over the first `batches` windows of `seq_len` tokens of each split.

    The windows are fixed (the start of each split, no overlap), so evaluations of one run, and of
    runs on the same dataset, are comparable. Under DDP each process takes every world_size-th batch
    and the sums are all-reduced; under FSDP every process runs every batch (forwards are collective).
    """

    dataset: object  # slmkit.data.loader.Dataset
    seq_len: int
    batch_size: int
    batches: int
    setup: DeviceSetup
    dist: distributed.DistInfo = field(default_factory=distributed.DistInfo)
    shard: bool = True  # False under FSDP
    history: list[dict] = field(default_factory=list)  # every evaluation so far (for the warnings)
    warned: set[str] = field(default_factory=set)  # warning kinds already given (once per run)

    def split_loss(self, model, split: str) -> float:
        """Mean loss in nats per token on the fixed sample of `split`; the model is left in the
        mode it was in."""
        shard = self.shard and self.dist.enabled
        batches = self.dataset.eval_batches(split, self.batch_size, self.seq_len, self.batches)
        if shard:
            batches = (batch for index, batch in enumerate(batches) if index % self.dist.world_size == self.dist.rank)
        with evaluation_mode(model):
            totals = score_batches(lambda x, y, segments=None: language_model_loss(model, x, y, segments,
                                                                                   reduction="sum"), batches,
                                   self.setup.device, self.setup.autocast)
        if shard:
            distributed.all_reduce_sum(totals, self.dist)
        if totals[1].item() == 0:
            raise SlmError(f"the {split} split has no complete evaluation window of {self.seq_len + 1} tokens; "
                           f"lower train.seq_len")
        return (totals[0] / totals[1]).item()

    @torch.no_grad()
    def logits_are_finite(self, model) -> bool:
        """Whether `model` gives finite logits on the first validation window (one row: cheap), the
        test a checkpoint must pass before it is saved as good."""
        x, _, *segments = next(iter(self.dataset.eval_batches("val", 1, self.seq_len, 1)))
        extra = {"segment_ids": segments[0].to(self.setup.device)} if segments else {}
        with evaluation_mode(model), self.setup.autocast():
            logits = model(x.to(self.setup.device), **extra)
        return bool(torch.isfinite(logits).all())

    def evaluate(self, model, step: int, tokens: int) -> dict:
        """One evaluation record: val and train loss, perplexity and bits per byte (None when the
        dataset has no byte counts), at `step` after `tokens` training tokens."""
        record: dict = {"step": step}
        for split in SPLITS:
            loss = self.split_loss(model, split)
            record.update({f"{split}_loss": loss, f"{split}_ppl": perplexity(loss),
                           f"{split}_bpb": bits_per_byte(loss, self.dataset.bytes_per_token(split))})
        record["tokens"] = tokens
        self.history.append(record)
        return record

    def resume(self, events: list[dict], state) -> None:
        """Continue a run's watch: its eval events up to the resumed step, and the warnings given."""
        self.history = [e for e in events if e.get("event") == "eval" and e.get("step", 0) <= state.step]
        self.warned = set(state.warned)

    def new_warnings(self) -> list[tuple[str, str]]:
        """Warnings raised by the evaluations so far that were not given before (then marked given)."""
        found = honesty_warnings(self.history, self.warned)
        self.warned.update(kind for kind, _ in found)
        return found


def honesty_warnings(evals: list[dict], already: set[str] | None = None) -> list[tuple[str, str]]:
    """(kind, message) for each suspicious pattern in the eval records so far, skipping kinds in
    `already` (each kind is raised once per run).

    - memorising: the validation loss has not improved on its best for 3 evaluations while the
      training loss kept falling, or the val - train gap exceeds a quarter of the validation loss
      (and 0.1 nats). A gap that widens while both losses fall is not flagged: validation text of
      other documents (other works of the same author, say) is learnt more slowly, not unlearnt;
    - val_below_train: validation loss well below training loss (leakage, or a val split easier than train);
    - near_zero_loss: a loss under 0.05 nats, a perplexity near one (memorisation or leakage; a
      real corpus of natural language does not get there).
    """
    already = already or set()
    found = []
    if not evals:
        return found
    last = evals[-1]
    val, train = last.get("val_loss"), last.get("train_loss")
    step = last.get("step")
    if "memorising" not in already and val is not None and train is not None:
        reason = _memorising(evals)
        if reason:
            found.append(("memorising",
                          f"step {step}: {reason} (val {val:.3f}, train {train:.3f}); the model is memorising its "
                          f"training data. Use more data, fewer steps, dropout or a smaller model; the best "
                          f"checkpoint is the one to keep"))
    if "val_below_train" not in already and val is not None and train is not None \
            and val < train - max(GAP_MIN_NATS, 0.05 * train):
        found.append(("val_below_train",
                      f"step {step}: validation loss {val:.3f} is well below training loss {train:.3f}; check the "
                      f"split for leakage (documents in both splits) or a validation set easier than training"))
    if "near_zero_loss" not in already:
        low = [(name, value) for name, value in (("validation", val), ("training", train))
               if value is not None and value < NEAR_ZERO_LOSS]
        if low:
            name, value = low[0]
            found.append(("near_zero_loss",
                          f"step {step}: {name} loss {value:.4f} (perplexity {math.exp(value):.3f}) is near zero; "
                          f"a language model of real text does not get there: the data is memorised or leaks "
                          f"between splits, so these numbers do not measure generalisation"))
    return found


def _memorising(evals: list[dict]) -> str:
    """Why the eval records show memorisation, or "" (see `honesty_warnings`)."""
    records = [e for e in evals if e.get("val_loss") is not None and e.get("train_loss") is not None]
    if not records:
        return ""
    val, train = records[-1]["val_loss"], records[-1]["train_loss"]
    gap = val - train
    if gap > max(GAP_MIN_NATS, LARGE_GAP_SHARE * val):
        return f"the train/val gap is {gap:.3f} nats, {100 * gap / val:.0f}% of the validation loss"
    if len(records) > STALLED_EVALS:
        before, recent = records[:-STALLED_EVALS], records[-STALLED_EVALS:]
        best_before = min(e["val_loss"] for e in before)
        stalled = all(e["val_loss"] >= best_before for e in recent)
        trains = [before[-1]["train_loss"]] + [e["train_loss"] for e in recent]
        falling = all(b < a for a, b in zip(trains, trains[1:]))
        if stalled and falling and gap > GAP_MIN_NATS:
            return (f"validation loss has not improved on its best ({best_before:.3f}) for {STALLED_EVALS} "
                    f"evaluations while training loss kept falling")
    return ""
