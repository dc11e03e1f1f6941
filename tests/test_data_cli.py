import json

import pytest

from slmkit.cli import main


def test_slm_prepare_writes_dataset_and_prints_summary(corpus_dir, tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["prepare", str(corpus_dir), "--out", str(out), "--val", "3", "-q", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "train       17 documents" in printed and "leak check" in printed
    assert json.loads((out / "meta.json").read_text())["splits"]["val"]["documents"] == 3
    assert main(["prepare", str(corpus_dir), "--out", str(out), "--val", "3", "-q"]) == 0
    assert "up to date, reused" in capsys.readouterr().out
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
