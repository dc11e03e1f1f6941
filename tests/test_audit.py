"""`slm audit`: the two failures this project grew from are flagged with their reasons (a validation
split copied from training text; a tiny corpus memorised to loss ~0), a healthy run is clean, and a
directory that is neither a run nor a dataset is one clear error."""

import argparse
import json

import numpy as np
import pytest
from train_support import one_thread, synthetic_text, tiny_overrides, write_cycle_dataset, write_dataset

from slmkit import api
from slmkit.errors import SlmError
from slmkit.eval.audit import PROBLEM, audit

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


def leaky_dataset(directory):
    """~200 KB of training text; the validation split is a contiguous slice of it (documents 100..139,
    verbatim), laid out as `slm prepare` writes a dataset (prepare itself keeps near-duplicates on one
    side of the split, so it cannot make this one)."""
    from slmkit.tokenizer import train_tokenizer

    directory.mkdir(parents=True)
    train_docs = synthetic_text(1000, seed=3)
    val_docs = train_docs[100:140]
    tokenizer = train_tokenizer(train_docs, "char")
    tokenizer.save(directory)
    splits = {}
    for split, docs in (("train", train_docs), ("val", val_docs)):
        ids = [i for doc in docs for i in tokenizer.encode(doc) + [tokenizer.eot_id]]
        np.asarray(ids, dtype=np.uint16).tofile(directory / f"{split}.bin")
        splits[split] = {"tokens": len(ids), "documents": len(docs), "bytes": sum(len(d.encode()) for d in docs)}
    meta = {"format": "slmkit-dataset", "version": 1, "vocab_size": tokenizer.vocab_size, "dtype": "uint16",
            "eot_id": tokenizer.eot_id, "splits": splits,
            "tokenizer": {"name": tokenizer.name, "kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
                          "eot_id": tokenizer.eot_id, "pad_id": tokenizer.pad_id}}
    (directory / "meta.json").write_text(json.dumps(meta))
    assert splits["train"]["bytes"] > 180_000
    return directory


def test_a_validation_split_copied_from_training_is_flagged_as_a_leak_with_its_overlap(tmp_path):
    report = audit(leaky_dataset(tmp_path / "ds"))
    leak = next(f for f in report.findings if f.kind == "leak")
    assert leak.severity == PROBLEM and leak.value == pytest.approx(1.0)  # every val n-gram is in train
    duplicates = next(f for f in report.findings if f.kind == "duplicates")
    assert duplicates.severity == PROBLEM and "40 of 40 validation documents" in duplicates.message
    assert report.verdict.startswith("verdict: NOT TRUSTWORTHY — ") and "100% of validation" in report.verdict


def test_a_run_at_perplexity_1_15_on_a_leaking_split_is_not_trustworthy_and_says_why(tmp_path):
    """The first write-up's failure, its figures synthesized: validation perplexity about 1.15 on
    ~200 KB whose validation text is training text. The run directory is written as `slm train` writes
    it (config.json, checkpoints/, metrics.jsonl with eval events), so this runs in a second; the
    failure trained for real, a model driven to perplexity ~1.2 by slmkit's trainer, is
    tests/test_audit_reproductions.py (slow)."""
    data = leaky_dataset(tmp_path / "ds")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"format": "slmkit-run", "data": {"path": str(data)}}))
    losses = [(250, 1.90, 1.95), (500, 0.80, 0.70), (750, 0.30, 0.25), (1000, 0.16, 0.14)]
    events = [{"event": "eval", "step": step, "train_loss": train, "val_loss": val, "val_ppl": float(np.exp(val)),
               "val_bpb": val / np.log(2) / 0.99} for step, train, val in losses]
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    report = audit(run)
    assert not report.trustworthy
    assert "verdict: NOT TRUSTWORTHY — validation perplexity 1.15 with 100% of validation" in report.verdict
    assert "in training text (leak); 40 of 40 validation documents copied from training" in report.verdict
    assert report.verdict.endswith("; memorised: validation 0.204 bits per byte, below what models of natural text "
                                   "reach")
    memorised = next(f for f in report.findings if f.kind == "memorised")
    assert memorised.severity == PROBLEM and memorised.value == pytest.approx(0.14 / np.log(2) / 0.99)
    assert [h["step"] for h in report.history] == [250, 500, 750, 1000]
    assert report.history[-1]["gap"] == pytest.approx(-0.02)
    assert report.to_dict()["trustworthy"] is False


def test_a_tiny_corpus_driven_to_loss_near_zero_is_flagged_as_memorised(tmp_path):
    """The second write-up's failure: a tiny corpus (one short cycle of tokens, as in
    test_memorising_run_logs_warnings_that_reach_the_report) trained to a loss of about zero."""
    data = write_cycle_dataset(tmp_path / "ds")
    run = tmp_path / "run"
    api.train(data, run, overrides=tiny_overrides(data, max_steps=40, lr=3e-2, eval_interval=20,
                                                  checkpoint_interval=0), quiet=True, report=False)
    report = audit(run)
    near_zero = next(f for f in report.findings if f.kind == "near_zero_loss")
    assert near_zero.severity == PROBLEM and near_zero.value < 0.05
    assert report.verdict.startswith("verdict: NOT TRUSTWORTHY — ") and "memorised" in report.verdict


def test_a_healthy_run_gets_a_clean_verdict(tmp_path):
    data = write_dataset(tmp_path / "ds")
    run = tmp_path / "run"
    api.train(data, run, overrides=tiny_overrides(data, max_steps=20), quiet=True, report=False)
    report = audit(run)
    assert report.trustworthy, report.text()
    assert report.verdict.startswith("verdict: clean — "), report.text()
    assert report.dataset == str(data) and len(report.history) == 2
    assert "train/val gap" in report.text()


def test_a_run_whose_dataset_is_gone_is_audited_from_its_history_alone(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"format": "slmkit-run", "data": {"path": str(tmp_path / "gone")}}))
    (run / "metrics.jsonl").write_text(json.dumps({"event": "eval", "step": 10, "train_loss": 2.0, "val_loss": 2.1}))
    report = audit(run)
    assert report.trustworthy and report.verdict.startswith("verdict: caution — its dataset is gone")


def test_a_directory_that_is_neither_a_run_nor_a_dataset_is_one_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SlmError, match=r"is neither a run directory .* nor a dataset directory .*`slm train` or `slm prepare`"):
        audit(tmp_path)
    with pytest.raises(SlmError, match="does not exist"):
        audit(tmp_path / "missing")


def test_slm_audit_prints_the_report_or_json(tmp_path, monkeypatch, capsys):
    from slmkit.cli import audit as audit_cli

    parser = argparse.ArgumentParser(prog="slm")
    audit_cli.register(parser.add_subparsers())
    monkeypatch.setattr(api, "audit", audit, raising=False)  # until slmkit.api exports it
    data = write_dataset(tmp_path / "ds")
    args = parser.parse_args(["audit", str(data)])
    assert args.run(args) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("verdict: clean")
    args = parser.parse_args(["audit", str(data), "--json"])
    args.run(args)
    printed = json.loads(capsys.readouterr().out)
    assert printed["kind"] == "dataset" and printed["trustworthy"] is True


def test_a_low_perplexity_without_a_leak_is_a_caution_not_a_problem(tmp_path):
    data = write_dataset(tmp_path / "ds")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"format": "slmkit-run", "data": {"path": str(data)}}))
    (run / "metrics.jsonl").write_text(json.dumps({"event": "eval", "step": 10, "train_loss": 0.3, "val_loss": 0.3}))
    report = audit(run)  # no bits per byte logged: the per-token perplexity 1.35 is judged
    assert report.trustworthy and report.verdict == ("verdict: caution — validation perplexity 1.350 per token is "
                                                     "implausibly low")


def test_a_val_split_replaced_after_prepare_is_caught_though_meta_json_records_no_leak(tmp_path):
    """A careless user copies a prepared dataset, replaces val.bin with a slice of train.bin and edits
    meta.json's token counts to match: meta.json's leak check (0%) is stale; the audit recomputes it."""
    sources = tmp_path / "src"
    sources.mkdir()
    for index, doc in enumerate(synthetic_text(120, seed=5)):
        (sources / f"{index}.txt").write_text(doc)
    data = tmp_path / "ds"
    api.prepare([str(sources)], data, "char", val=0.1)
    train = np.fromfile(data / "train.bin", dtype=np.uint16)
    train[5000:8000].tofile(data / "val.bin")
    meta = json.loads((data / "meta.json").read_text())
    assert meta["leak_check"]["overlap_share"] < 0.05
    meta["splits"]["val"]["tokens"] = 3000
    (data / "meta.json").write_text(json.dumps(meta))
    report = audit(data)
    leak = next(f for f in report.findings if f.kind == "leak")
    assert leak.severity == PROBLEM and leak.value == pytest.approx(1.0)
    assert "recomputed on the token files; meta.json records" in leak.message
    stale = next(f for f in report.findings if f.kind == "stale_meta")
    assert stale.value == meta["leak_check"]["overlap_share"] and "changed after `slm prepare`" in stale.message
    assert report.verdict.startswith("verdict: NOT TRUSTWORTHY — 100% of validation")


def test_a_prepared_dataset_is_audited_from_its_meta_records(tmp_path):
    """What `slm prepare` recorded is reported (its leak check, its near-duplicate grouping), and a
    near-duplicate pair spanning the split, as meta.json records it, is a problem."""
    sources = tmp_path / "src"
    sources.mkdir()
    for index, doc in enumerate(synthetic_text(120, seed=5)):
        (sources / f"{index}.txt").write_text(doc)
    data = tmp_path / "ds"
    api.prepare([str(sources)], data, "char", val=0.1)
    report = audit(data)
    assert report.verdict.startswith("verdict: clean"), report.text()
    assert "prepare's leak check, confirmed on the token files" in next(f for f in report.findings
                                                                       if f.kind == "leak").message
    assert "prepare grouped 0 near-duplicate pairs" in report.text()
    meta = json.loads((data / "meta.json").read_text())
    meta["leak_check"]["near_duplicate_pairs_across_split"] = 3
    (data / "meta.json").write_text(json.dumps(meta))
    assert "3 near-duplicate pairs span the split" in audit(data).verdict
