import json

import pytest

from slmkit.cli import main


def test_slm_prepare_writes_dataset_and_prints_summary_unless_quiet(corpus_dir, tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["prepare", str(corpus_dir), "--out", str(out), "--val", "3", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "train       17 documents" in printed and "leak check" in printed
    assert json.loads((out / "meta.json").read_text())["splits"]["val"]["documents"] == 3
    assert main(["prepare", str(corpus_dir), "--out", str(out), "--val", "3"]) == 0
    assert "up to date, reused" in capsys.readouterr().out
    assert main(["prepare", str(corpus_dir), "--out", str(out), "--val", "3", "-q"]) == 0
    assert capsys.readouterr() == ("", "")  # --quiet: no progress bar, no summary
    assert main(["data", "info", str(out)]) == 0
    assert "near-dups" in capsys.readouterr().out


def test_slm_prepare_error_is_one_line_without_traceback(tmp_path, capsys):
    assert main(["prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "x"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: source") and "Traceback" not in err and err.count("\n") == 1


def test_slm_tokenizer_train_info_and_export(corpus_dir, tmp_path, capsys):
    pytest.importorskip("transformers")
    tok_dir, hf_dir = tmp_path / "tok", tmp_path / "hf"
    assert main(["tokenizer", "train", str(corpus_dir), "--tokenizer", "bpe:500", "--out", str(tok_dir)]) == 0
    assert "trained bpe:500: vocab 500" in capsys.readouterr().out
    assert main(["tokenizer", "info", str(tok_dir), "--text", "the and of"]) == 0
    assert "bpe:500 (bpe): vocab 500, eot id 0" in capsys.readouterr().out
    assert main(["tokenizer", "export-hf", str(tok_dir), "--out", str(hf_dir)]) == 0
    assert (hf_dir / "tokenizer.json").is_file() and (hf_dir / "tokenizer_config.json").is_file()


def test_default_out_dir_names_sources_and_tokenizer():
    from slmkit.cli.data import _default_out

    assert str(_default_out(["shakespeare"], "gpt2")) == "data/shakespeare-gpt2"
    assert str(_default_out(["../a/x", "../a/y@2"], "bpe:8192")) == "data/x+y-bpe8192"


def test_val_flag_takes_a_share_a_count_or_a_source():
    from slmkit.cli.data import _split_val

    assert _split_val(["0.1"], None) == (0.1, [])
    assert _split_val(["10"], None) == (10.0, [])
    assert _split_val(["held_out/"], ["more.txt"]) == (0.05, ["more.txt", "held_out/"])


def parse(argv):
    from slmkit.cli import build_parser

    return build_parser().parse_args(argv)


def test_every_prepare_option_has_a_flag_and_the_flags_default_to_the_api_defaults():
    import argparse
    import dataclasses

    from slmkit.cli import build_parser
    from slmkit.cli.data import prepare_options
    from slmkit.data import PrepareOptions

    parser = build_parser()
    prepare_parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["prepare"]
    dests = {action.dest for action in prepare_parser._actions}
    special = {"val": "val", "progress": "quiet"}  # hand-written: --val SHARE|COUNT|SOURCE, --quiet
    missing = [f.name for f in dataclasses.fields(PrepareOptions) if special.get(f.name, f.name) not in dests]
    assert missing == []
    assert prepare_options(parse(["prepare", "corpus/"])) == (PrepareOptions(), [])


def test_prepare_flags_reach_their_fields_and_old_flag_names_still_work():
    from slmkit.cli.data import prepare_options
    from slmkit.data import PrepareOptions

    args = parse(["prepare", "a/", "-o", "out", "-t", "bpe:500", "--val", "10", "--val", "held/", "--val-source",
                  "more/", "--seed", "3", "--near-dup", "drop", "--near-dup-threshold", "0.5", "--encoding-errors",
                  "skip", "--min-chars", "5", "--max-line-chars", "99", "--doc-separator", "<|x|>", "--ext", "md",
                  "--ext", ".rst", "--text-field", "body", "--hf-split", "test", "--max-documents", "7", "--dtype",
                  "uint32", "--chat-tokens", "--tokenizer-train-bytes", "1000", "--workers", "3", "--force", "-q"])
    options, val_sources = prepare_options(args)
    assert args.out == "out" and val_sources == ["more/", "held/"]
    assert options == PrepareOptions(
        tokenizer="bpe:500", val=10.0, seed=3, near_dup="drop", near_dup_threshold=0.5, encoding_errors="skip",
        min_chars=5, max_line_chars=99, doc_separator="<|x|>", extensions=("md", ".rst"), text_field="body",
        hf_split="test", max_documents=7, dtype="uint32", chat_tokens=True, tokenizer_train_bytes=1000, workers=3,
        force=True, progress=False)


def test_tokenizer_train_flags_default_to_the_api_defaults(monkeypatch, capsys):
    from slmkit import api
    from slmkit.data import PrepareOptions

    calls = []

    def fake_train(sources, spec="bpe:8192", out_dir=None, **kwargs):
        calls.append((sources, spec, out_dir, kwargs))
        return api.load_tokenizer("gpt2")

    monkeypatch.setattr(api, "train_tokenizer_on_sources", fake_train)
    assert main(["tokenizer", "train", "corpus/", "-o", "tok"]) == 0
    sources, spec, out_dir, kwargs = calls[-1]
    assert (sources, spec, out_dir) == (["corpus/"], "bpe:8192", "tok")
    assert set(kwargs) <= {*PrepareOptions.SOURCE_FIELDS, "chat_tokens"}  # min_frequency, max_bytes: the API's
    assert PrepareOptions(**kwargs) == PrepareOptions()
    assert main(["tokenizer", "train", "c/", "-o", "t", "-t", "char", "--min-frequency", "3", "--max-bytes", "9",
                 "--ext", "md", "--chat-tokens", "--min-chars", "1"]) == 0
    _, spec, _, kwargs = calls[-1]
    assert spec == "char" and kwargs["min_frequency"] == 3 and kwargs["max_bytes"] == 9
    assert (kwargs["extensions"], kwargs["chat_tokens"], kwargs["min_chars"]) == (["md"], True, 1)


def test_api_options_are_checked_by_name():
    from slmkit.data import prepare, train_tokenizer_on_sources
    from slmkit.errors import SlmError

    with pytest.raises(SlmError, match="'sed' .did you mean 'seed'"):
        prepare(["x"], "out", sed=1)
    with pytest.raises(SlmError, match="seed: prepare options that do not apply to tokenizer training"):
        train_tokenizer_on_sources(["x"], "bpe:500", seed=1)


def test_progress_written_to_a_file_is_plain_lines_not_redrawn_bars(corpus_dir, tmp_path):
    import subprocess
    import sys

    process = subprocess.run([sys.executable, "-m", "slmkit", "prepare", str(corpus_dir), "--tokenizer", "char",
                              "--out", str(tmp_path / "ds")], capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    lines = process.stderr.splitlines()
    assert "\r" not in process.stderr and "\x1b" not in process.stderr
    assert any(line.startswith("prepare: 100%") for line in lines)
    assert len(lines) <= 8  # a start and an end line per bar (plus one every 30 s), not one per redraw
