"""`slm eval`: stride windows scored as by hand and as the transformers perplexity guide scores them;
an slmkit model and its Hugging Face export agree; models with different tokenizers compare by bits
per byte; every checkpoint of a run in a table and a plot; the trainer's evaluation reproduced; one
clear line for each bad input."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from train_support import one_thread, synthetic_text, tiny_overrides, train_events, write_dataset

from slmkit import api
from slmkit.errors import SlmError
from slmkit.eval import perplexity, scoring
from slmkit.eval.perplexity import BITS_PER_BYTE_NOTE, evaluate_checkpoints, evaluate_models
from slmkit.model import ModelConfig, Transformer, load_model, save_model
from slmkit.tokenizer import CharTokenizer, train_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
pytestmark = pytest.mark.usefixtures(one_thread.__name__)
FP32 = {"precision": "fp32", "device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "ds")


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    """20 steps; evaluations (2 batches of 4 x 32 tokens) and checkpoints at steps 10 and 20."""
    run = tmp_path_factory.mktemp("runs") / "run"
    api.train(data_dir, run, overrides=tiny_overrides(data_dir, max_steps=20), quiet=True, report=False)
    return run


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "story.txt"
    path.write_text(" ".join(synthetic_text(3, seed=7)))
    return path


@pytest.fixture(scope="module")
def hf_export(run, tmp_path_factory):
    pytest.importorskip("transformers")
    return api.export_hf(run, tmp_path_factory.mktemp("hf") / "model")


def uniform_checkpoint(directory, tokenizer) -> ModelConfig:
    """An slmkit checkpoint whose every weight is zero: its logits are all 0, so its loss on any token
    is exactly ln(vocab size)."""
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=32, n_layers=1, d_model=16, n_heads=2,
                         d_mlp=32)
    model = Transformer(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    saved = tokenizer.save(directory.parent / f"{directory.name}-tokenizer")
    save_model(model, directory, extra_files={p.name: p for p in saved.iterdir()})
    return config


def random_checkpoint(directory, tokenizer, seed: int = 0):
    """An slmkit checkpoint of random weights (context 32): its loss depends on every token it reads."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, context_length=32, n_layers=1, d_model=16,
                                    n_heads=2, d_mlp=32))
    saved = tokenizer.save(directory.parent / f"{directory.name}-tokenizer")
    save_model(model, directory, extra_files={p.name: p for p in saved.iterdir()})
    return directory


def decoded_documents(dataset_dir, directory, split: str = "val") -> list:
    """The split's documents decoded with the dataset's tokenizer, one text file each (as a user would
    write them to score them with slm eval TEXT...)."""
    from slmkit.data.loader import open_dataset

    dataset = open_dataset(dataset_dir)
    tokens = np.asarray(dataset.split(split))
    bounds = np.flatnonzero(tokens == dataset.eot_id)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (start, end) in enumerate(zip(np.concatenate([[-1], bounds[:-1]]), bounds)):
        path = directory / f"doc-{index:03d}.txt"
        path.write_text(dataset.tokenizer.decode(tokens[start + 1:end]), encoding="utf-8")
        paths.append(path)
    return paths


# -- the windows ----------------------------------------------------------------------------------
def test_stride_windows_score_every_token_but_the_first_exactly_once():
    for n_tokens in range(1, 40):
        for context in range(1, 9):
            for stride in range(1, context + 1):
                windows = list(scoring.stride_windows(n_tokens, context, stride))
                assert len(windows) == scoring.count_windows(n_tokens, context, stride)
                targets = [t for start, scored in windows for t in range(start + context + 1 - scored, start + context + 1)]
                assert sorted(targets) == (list(range(1, n_tokens)) if n_tokens > context else [])
                assert all(start >= 0 and start + context < n_tokens for start, _ in windows)


def test_stride_scoring_equals_a_hand_computation_with_the_tail_window():
    """20 tokens, context 8, stride 3: windows at 0 (targets 1-8), 3 (9-11), 6 (12-14), 9 (15-17) and
    one aligned to the end at 11 (18-19), each target scored once with the left context written here."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=11, context_length=8, n_layers=1, d_model=16, n_heads=2, d_mlp=32)).eval()
    ids = np.random.default_rng(0).integers(0, 11, size=20)
    by_hand = {0: range(1, 9), 3: range(9, 12), 6: range(12, 15), 9: range(15, 18), 11: range(18, 20)}
    expected = 0.0
    with torch.no_grad():
        for start, targets in by_hand.items():
            log_probs = F.log_softmax(model(torch.tensor(ids[None, start:start + 8])).float(), dim=-1)[0]
            expected -= sum(log_probs[t - start - 1, ids[t]].item() for t in targets)
    assert list(scoring.stride_windows(20, 8, 3)) == [(start, len(t)) for start, t in by_hand.items()]
    from slmkit.train.loss import language_model_loss
    nll, count = scoring.score_batches(lambda x, y: language_model_loss(model, x, y, reduction="sum"),
                                       scoring.window_batches(ids, 8, 3, batch_size=2), torch.device("cpu")).tolist()
    assert count == 19
    assert nll == pytest.approx(expected, rel=1e-5)


def test_stride_scoring_equals_the_transformers_perplexity_guide_loop(tmp_path, text_file):
    """The guide's loop (huggingface.co/docs/transformers/perplexity) with max_length = context + 1,
    on a tiny GPT-2 saved with save_pretrained, gives the same perplexity as slm eval; the fused head
    and the plain loss on full logits agree. The guide weights each window's mean loss by its valid
    labels minus one, exact for the first window only (a later window's first label is masked, so the
    shift drops no valid one); here each window counts the labels left after the shift."""
    transformers = pytest.importorskip("transformers")
    text = text_file.read_text()
    tokenizer = train_tokenizer([text], "char")
    tokenizer.export_hf(tmp_path / "gpt2")
    torch.manual_seed(3)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=tokenizer.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2,
        bos_token_id=tokenizer.eot_id, eos_token_id=tokenizer.eot_id))
    model.save_pretrained(tmp_path / "gpt2")
    context, stride = 24, 10
    text = text[:context + stride * ((len(text) - context) // stride)]  # no tail: the guide's last window is full
    (tmp_path / "text.txt").write_text(text)
    ids = tokenizer.encode(text) + [tokenizer.eot_id]  # the end-of-text slm eval puts after a document

    encodings = torch.tensor([ids])
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    model.eval()
    for begin_loc in range(0, encodings.size(1), stride):
        end_loc = min(begin_loc + context + 1, encodings.size(1))
        trg_len = end_loc - prev_end_loc
        input_ids = encodings[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            outputs = model(input_ids, labels=target_ids)
        num_loss_tokens = (target_ids[:, 1:] != -100).sum().item()  # the labels left after the shift
        nll_sum += outputs.loss.item() * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == encodings.size(1):
            break
    guide = math.exp(nll_sum / n_tokens)

    fused = evaluate_models([tmp_path / "gpt2", tmp_path / "text.txt"], context=context, stride=stride, **FP32)
    assert fused.results[0].tokens == n_tokens == len(ids) - 1
    assert fused.results[0].perplexity == pytest.approx(guide, rel=1e-5)
    plain = perplexity.FUSED_HEAD_MODEL_TYPES
    try:
        perplexity.FUSED_HEAD_MODEL_TYPES = set()
        full_logits = evaluate_models([tmp_path / "gpt2"], texts=[tmp_path / "text.txt"], context=context,
                                      stride=stride, **FP32)
    finally:
        perplexity.FUSED_HEAD_MODEL_TYPES = plain
    assert full_logits.results[0].loss == pytest.approx(fused.results[0].loss, rel=1e-6)


# -- models and data ------------------------------------------------------------------------------
def test_slm_eval_of_a_run_on_its_dataset_reproduces_the_trainers_evaluation(run):
    """Context 32 and stride 32 over the first 2 x 4 windows are the trainer's own evaluation sample."""
    report = evaluate_models([run], max_tokens=2 * 4 * 32 + 1, **FP32)  # data: the run's own dataset
    last = train_events(run, "eval")[-1]
    result = report.results[0]
    assert (report.context, report.stride, result.tokens) == (32, 32, 256)
    assert result.loss == pytest.approx(last["val_loss"], rel=1e-6)
    assert result.bits_per_byte == pytest.approx(last["val_bpb"], rel=1e-6)
    assert result.step == 20 and result.kind == "slmkit"


def test_an_slmkit_model_and_its_hugging_face_export_give_the_same_bits_per_byte(run, hf_export, text_file, data_dir):
    on_text = evaluate_models([run, hf_export, text_file], context=24, stride=8, **FP32)
    ours, theirs = on_text.results
    assert theirs.kind == "hugging face" and ours.kind == "slmkit"
    assert ours.tokens == theirs.tokens == len(text_file.read_text())  # + the end-of-text, - the first token
    assert theirs.bits_per_byte == pytest.approx(ours.bits_per_byte, rel=1e-5)
    on_dataset = evaluate_models([run, hf_export], data=data_dir, **FP32)
    assert on_dataset.results[1].loss == pytest.approx(on_dataset.results[0].loss, rel=1e-5)
    # negative control: the step-10 checkpoint of the same run is told apart at this tolerance
    earlier = evaluate_models([run / "checkpoints" / "step-10", text_file], context=24, stride=8, **FP32)
    assert abs(earlier.results[0].bits_per_byte - ours.bits_per_byte) > 1e-3


def test_models_with_different_tokenizers_compare_by_bits_per_byte_of_the_same_text(tmp_path, text_file):
    """Two uniform models (loss ln V on every token), one reading characters and one a 300-id BPE:
    per token they differ, per byte each is log2(V) x its tokens / the text's bytes."""
    text = text_file.read_text()
    char, bpe = train_tokenizer([text], "char"), train_tokenizer(synthetic_text(60, 0), "bpe:300")
    uniform_checkpoint(tmp_path / "char-model", char)
    uniform_checkpoint(tmp_path / "bpe-model", bpe)
    report = evaluate_models([tmp_path / "char-model", tmp_path / "bpe-model", text_file], context=16, **FP32)
    n_bytes = len(text.encode())
    for result, tokenizer in zip(report.results, (char, bpe)):
        n_tokens = len(tokenizer.encode(text)) + 1  # the end-of-text separator after the document
        assert result.tokens == n_tokens - 1
        assert result.loss == pytest.approx(math.log(tokenizer.vocab_size), rel=1e-6)
        assert result.bits_per_byte == pytest.approx(math.log2(tokenizer.vocab_size) * n_tokens / n_bytes, rel=1e-6)
    assert report.results[0].tokens > 2 * report.results[1].tokens  # the BPE reads the text in fewer tokens
    assert [r.tokenizer for r in report.results] == ["char", "bpe:300"]
    assert BITS_PER_BYTE_NOTE in report.table() and report.to_dict()["note"] == BITS_PER_BYTE_NOTE


# -- a dataset of another tokenizer: its text, decoded and re-tokenized ----------------------------
def test_a_model_of_another_tokenizer_scores_a_dataset_as_its_decoded_documents_as_text_files(tmp_path, data_dir):
    """A BPE model on a character dataset: the same tokens, loss and bits per byte, exactly, as the
    split's documents decoded and given as text files (each a document followed by end-of-text)."""
    bpe = train_tokenizer(synthetic_text(60, 0), "bpe:300")
    model = random_checkpoint(tmp_path / "bpe-model", bpe)
    files = decoded_documents(data_dir, tmp_path / "docs")
    on_dataset = evaluate_models([model], data=data_dir, context=16, stride=8, **FP32).results[0]
    on_files = evaluate_models([model, *files], context=16, stride=8, **FP32).results[0]
    texts = [path.read_text() for path in files]
    assert on_dataset.tokens == on_files.tokens == sum(len(bpe.encode(text)) + 1 for text in texts) - 1
    assert (on_dataset.loss, on_dataset.bits_per_byte) == (on_files.loss, on_files.bits_per_byte)
    assert on_dataset.bytes_per_token == on_files.bytes_per_token == sum(map(len, texts)) / (on_dataset.tokens + 1)
    assert (on_dataset.tokenizer, on_dataset.retokenized_from) == ("bpe:300", "char")
    assert (on_dataset.documents, on_dataset.unfaithful_documents) == (8, 0) and on_files.retokenized_from is None
    # with the dataset's own tokenizer the split is scored as its ids: another number of tokens
    char_model = random_checkpoint(tmp_path / "char-model", open_dataset_tokenizer(data_dir))
    as_ids = evaluate_models([char_model], data=data_dir, context=16, **FP32).results[0]
    assert as_ids.retokenized_from is None and as_ids.tokens == sum(map(len, texts)) + 8 - 1


def test_split_documents_across_chunk_boundaries_equals_a_split_on_end_of_text(monkeypatch):
    tokens = np.array([5, 6, 9, 7, 9, 9, 1, 2, 3, 4, 5, 6, 7, 9, 8, 8], dtype=np.uint16)  # 9: end-of-text
    for chunk in (1, 2, 3, 5, 100):
        monkeypatch.setattr(perplexity, "SPLIT_CHUNK_TOKENS", chunk)
        found = [(ids.tolist(), ended) for ids, ended in perplexity.split_documents(tokens, 9)]
        assert found == [([5, 6], True), ([7], True), ([], True), ([1, 2, 3, 4, 5, 6, 7], True), ([8, 8], False)]


def test_a_re_tokenized_dataset_is_named_in_the_table_and_the_json(tmp_path, data_dir):
    model = random_checkpoint(tmp_path / "bpe-model", train_tokenizer(synthetic_text(60, 0), "bpe:300"))
    report = evaluate_models([model], data=data_dir, context=16, **FP32)
    table = report.table()
    assert f"| {model} | slmkit | bpe:300, re-tokenized from char |" in table
    note = (f"{model}: the dataset's text, decoded with its tokenizer 'char', was re-tokenized with the model's "
            f"'bpe:300'; all 8 documents decode faithfully")
    assert note in table.splitlines()
    result = report.to_dict()["results"][0]
    assert (result["retokenized_from"], result["documents"], result["unfaithful_documents"]) == ("char", 8, 0)
    assert result["note"] == note


def test_max_tokens_stops_re_tokenizing_after_the_document_that_reaches_it(tmp_path, data_dir):
    bpe = train_tokenizer(synthetic_text(60, 0), "bpe:300")
    model = random_checkpoint(tmp_path / "bpe-model", bpe)
    texts = [path.read_text() for path in decoded_documents(data_dir, tmp_path / "docs")]
    result = evaluate_models([model], data=data_dir, context=16, max_tokens=40, **FP32).results[0]
    first = len(bpe.encode(texts[0])) + 1
    assert first >= 40 and result.tokens == 39 and result.documents == 1
    assert result.bytes_per_token == len(texts[0]) / first  # the bytes of the document read


def test_a_dataset_whose_tokenizer_loses_characters_is_scored_and_says_so(tmp_path):
    """A character tokenizer with an unknown id (as prepare trains one): "ï" and "ß" of two validation
    documents decode to nothing, so those documents are not faithful and the output says so."""
    directory = write_dataset(tmp_path / "ds")
    tokenizer = CharTokenizer(open_dataset_tokenizer(directory).chars, unknown=True)
    tokenizer.save(directory)
    val_docs = synthetic_text(8, seed=1)
    val_docs[2], val_docs[5] = val_docs[2] + " naïve", "straße " + val_docs[5]
    ids = [i for doc in val_docs for i in tokenizer.encode(doc) + [tokenizer.eot_id]]
    np.asarray(ids, dtype=np.uint16).tofile(directory / "val.bin")
    meta = json.loads((directory / "meta.json").read_text())
    meta["vocab_size"] = meta["tokenizer"]["vocab_size"] = tokenizer.vocab_size
    meta["splits"]["val"].update(tokens=len(ids), bytes=sum(len(doc.encode()) for doc in val_docs))
    (directory / "meta.json").write_text(json.dumps(meta))

    bpe = train_tokenizer(synthetic_text(60, 0), "bpe:300")
    model = random_checkpoint(tmp_path / "bpe-model", bpe)
    report = evaluate_models([model], data=directory, context=16, **FP32)
    result = report.results[0]
    assert (result.documents, result.unfaithful_documents) == (8, 2)
    assert "2 of 8 documents do not decode faithfully" in report.table()
    assert "bits per byte is of the decoded text" in report.to_dict()["results"][0]["note"]
    decoded = [path.read_text() for path in decoded_documents(directory, tmp_path / "docs")]
    assert decoded[2].endswith(". nave") and decoded[5].startswith("strae ")
    assert result.bytes_per_token == sum(len(text.encode()) for text in decoded) / (result.tokens + 1)


def test_a_random_weight_hugging_face_gpt2_scores_an_slmkit_bpe_dataset(tmp_path):
    """A GPT-2 of random weights with a character tokenizer, saved with save_pretrained, on a dataset
    `slm prepare` tokenized with a trained BPE: scored on the decoded text, equal to the text files."""
    transformers = pytest.importorskip("transformers")
    sources = tmp_path / "src"
    sources.mkdir()
    for index, doc in enumerate(synthetic_text(80, seed=4)):
        (sources / f"{index}.txt").write_text(doc)
    data = tmp_path / "ds"
    api.prepare([str(sources)], data, "bpe:300", val=0.1)
    files = decoded_documents(data, tmp_path / "docs")
    char = train_tokenizer([path.read_text() for path in files] + synthetic_text(80, seed=4), "char")
    char.export_hf(tmp_path / "gpt2")
    torch.manual_seed(5)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=char.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2,
        bos_token_id=char.eot_id, eos_token_id=char.eot_id)).save_pretrained(tmp_path / "gpt2")

    on_dataset = evaluate_models([tmp_path / "gpt2"], data=data, context=32, **FP32).results[0]
    on_files = evaluate_models([tmp_path / "gpt2", *files], context=32, **FP32).results[0]
    assert on_dataset.kind == "hugging face" and on_dataset.retokenized_from.startswith("bpe:")
    assert on_dataset.tokens == sum(len(path.read_text()) + 1 for path in files) - 1
    assert (on_dataset.loss, on_dataset.bits_per_byte) == (on_files.loss, on_files.bits_per_byte)
    assert on_dataset.unfaithful_documents == 0 and on_dataset.documents == len(files) >= 4


def open_dataset_tokenizer(directory):
    from slmkit.tokenizer import load_tokenizer

    return load_tokenizer(directory)


def test_every_checkpoint_of_a_run_in_a_table_by_step_and_a_plot(run, tmp_path):
    report = evaluate_checkpoints(run, out=tmp_path / "out", context=16, **FP32)
    assert [(r.name, r.step) for r in report.results] == [("step-10", 10), ("step-20", 20), ("best", 20), ("last", 20)]
    step_20 = report.results[1]
    assert all(r.loss == step_20.loss for r in report.results[2:])  # best and last are step-20's weights
    assert report.results[0].loss > step_20.loss  # training helped
    assert report.table_path == tmp_path / "out" / "eval_checkpoints.md"
    table = report.table_path.read_text()
    assert table.index("| step-10 | 10 |") < table.index("| step-20 | 20 |") < table.index("| last | 20 |")
    assert report.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    default = evaluate_checkpoints(run, context=16, max_tokens=200, **FP32)
    assert default.plot_path == run / "plots" / "eval_checkpoints.png" and default.plot_path.is_file()


def test_a_model_without_a_run_needs_data(tmp_path):
    tokenizer = train_tokenizer(["abc"], "char")
    uniform_checkpoint(tmp_path / "model", tokenizer)
    with pytest.raises(SlmError, match="nothing to score: give a dataset with --data"):
        evaluate_models([tmp_path / "model"], **FP32)


# -- bad input: one clear line each ---------------------------------------------------------------
def _bad_inputs(run, data_dir, text_file, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "weights.bin").write_bytes(b"\0" * 16)
    short = tmp_path / "short.txt"
    short.write_text("the king.")
    char_model = tmp_path / "char-model"  # characters without "k": the dataset's text holds "king"
    uniform_checkpoint(char_model, CharTokenizer("abcdefghijlmnopqrstuvwxyz .", unknown=False))
    return {
        "neither slmkit nor hf": (lambda: evaluate_models([foreign, text_file], **FP32),
                                  "is neither an slmkit checkpoint or run"),
        "a dataset as a model": (lambda: evaluate_models([data_dir, text_file], **FP32), "give it with --data"),
        "missing model": (lambda: evaluate_models([tmp_path / "nowhere", text_file], **FP32), "model not found"),
        "text shorter than a window": (lambda: evaluate_models([run, short], **FP32),
                                       "fewer than one window of context \\+ 1 = 33"),
        "stride above context": (lambda: evaluate_models([run], context=16, stride=20, **FP32),
                                 "stride 20 is larger than the context 16"),
        "context above the model's": (lambda: evaluate_models([run], context=64, **FP32),
                                      "context 64 is longer than .* 32 positions"),
        "text the model's tokenizer cannot read": (lambda: evaluate_models([char_model], data=data_dir, **FP32),
                                                   "cannot tokenize the text of dataset .*characters not in"),
        "fp16 on a CPU": (lambda: evaluate_models([run, text_file], precision="fp16", device="cpu", progress=False),
                          "--precision = 'fp16' is not supported on CPU"),
        "dataset and text": (lambda: evaluate_models([run, text_file], data=data_dir, **FP32), "not both"),
        "max tokens below a window": (lambda: evaluate_models([run], max_tokens=10, **FP32),
                                      "--max-tokens 10 is less than one window"),
        "not a run for --checkpoints": (lambda: evaluate_checkpoints(data_dir, **FP32), "not an slmkit run directory"),
        "two runs for --checkpoints": (lambda: evaluate_checkpoints(run, texts=[run], **FP32),
                                       "--checkpoints scores the checkpoints of one run; .* is a directory"),
    }


def test_each_bad_input_gives_one_clear_line(run, data_dir, text_file, tmp_path):
    for name, (call, message) in _bad_inputs(run, data_dir, text_file, tmp_path).items():
        with pytest.raises(SlmError, match=message) as caught:
            call()
        assert "\n" not in str(caught.value), name


def test_a_model_without_its_tokenizer_is_refused(run, tmp_path, text_file):
    bare = tmp_path / "bare"
    save_model(load_model(run / "checkpoints" / "last"), bare)
    with pytest.raises(SlmError, match="no usable tokenizer saved with the checkpoint"):
        evaluate_models([bare, text_file], **FP32)


# -- the command line (the module's register, on a parser of its own until slm wires it) ----------
@pytest.fixture
def cli(monkeypatch):
    from slmkit.cli import eval as cli_eval
    from slmkit.eval import status

    for name, value in (("EvalOptions", perplexity.EvalOptions), ("evaluate_models", evaluate_models),
                        ("evaluate_checkpoints", evaluate_checkpoints), ("run_status", status.run_status),
                        ("format_status", status.format_status)):
        monkeypatch.setattr(api, name, value, raising=False)
    parser = argparse.ArgumentParser(prog="slm")
    cli_eval.register(parser.add_subparsers())

    def main(*argv):
        args = parser.parse_args([str(a) for a in argv])
        return args.run(args)

    return main


def test_slm_eval_prints_a_table_or_json(cli, run, text_file, capsys):
    assert cli("eval", run, text_file, "--context", "16", "--precision", "fp32") == 0
    table = capsys.readouterr().out
    assert f"| {run} | slmkit (step 20) | char |" in table and BITS_PER_BYTE_NOTE in table
    cli("eval", run, text_file, "--context", "16", "--precision", "fp32", "--json")
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["model"] == str(run) and result["tokens"] == len(text_file.read_text())


def test_slm_eval_checkpoints_writes_beside_the_run_or_to_out(cli, run, tmp_path, capsys):
    shutil.rmtree(run / "plots", ignore_errors=True)
    cli("eval", run, "--checkpoints", "--context", "16", "--max-tokens", "200", "--precision", "fp32",
        "--out", tmp_path / "plots")
    out = capsys.readouterr().out
    assert "| step-10 | 10 |" in out and f"wrote {tmp_path / 'plots' / 'eval_checkpoints.md'}" in out
    assert (tmp_path / "plots" / "eval_checkpoints.png").is_file() and not (run / "plots").exists()
    with pytest.raises(SlmError, match="--out is for --checkpoints"):
        cli("eval", run, "--out", tmp_path / "x")
