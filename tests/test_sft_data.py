"""SFT data: JSONL rows checked line by line, a directory of rendered examples split by row, and packed
batches whose targets are exactly the response tokens of one example at a time."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_text

from slmkit.errors import SlmError
from slmkit.finetune.chat import render_chat, with_chat_tokens
from slmkit.finetune.sft_data import open_sft_data, prepare_sft_data, read_rows
from slmkit.tokenizer import train_tokenizer
from slmkit.train.loss import IGNORE_INDEX

SEQ_LEN = 96


def make_rows(count: int = 30) -> list[dict]:
    """Distinct rows of varied length in both forms, one with a system prompt."""
    rows = []
    for i in range(count):
        if i % 5 == 4:
            rows.append({"messages": [{"role": "user", "content": f"Count to {i % 7 + 2}."},
                                      {"role": "assistant", "content": " ".join(str(n) for n in range(1, i % 7 + 3))},
                                      {"role": "user", "content": "Again, backwards."},
                                      {"role": "assistant", "content": " ".join(str(n) for n in range(i % 7 + 2, 0, -1))}]})
        else:
            row = {"prompt": f"What is {i} + {2 * i + 1}?", "response": f"{i} + {2 * i + 1} = {3 * i + 1}."}
            if i % 7 == 3:
                row["system"] = "Answer with the sum written out."
            rows.append(row)
    return rows


def write_jsonl(path, rows, blank_lines=False):
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    if blank_lines:
        lines = [lines[0], "", "   ", *lines[1:]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    texts = [make_text(i, 300) for i in range(10)] + ["What is 12 + 25? = 37. Count to, backwards. Answer with the sum"]
    return with_chat_tokens(train_tokenizer(texts, "bpe:500"))


@pytest.fixture(scope="module")
def prepared(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    rows = write_jsonl(root / "rows.jsonl", make_rows(), blank_lines=True)
    out = prepare_sft_data(rows, tokenizer, root / "data", seq_len=SEQ_LEN, val_fraction=0.2, seed=3)
    return rows, out


def examples_of(directory, split):
    """Each example's (ids, mask) read straight from the files."""
    meta = json.loads((directory / "meta.json").read_text())
    ids = np.fromfile(directory / f"{split}.bin", dtype=meta["dtype"]).astype(np.int64)
    mask = np.fromfile(directory / f"{split}.mask.bin", dtype=np.uint8).astype(bool)
    offsets = np.load(directory / f"{split}.offsets.npy")
    return [(ids[a:b], mask[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]


# -- rows ----------------------------------------------------------------------------------------
def test_read_rows_reads_both_forms_and_skips_blank_lines(tmp_path):
    rows = read_rows(write_jsonl(tmp_path / "rows.jsonl", make_rows(5), blank_lines=True))
    assert len(rows) == 5
    assert rows[0] == [{"role": "user", "content": "What is 0 + 1?"}, {"role": "assistant", "content": "0 + 1 = 1."}]
    assert rows[3][0] == {"role": "system", "content": "Answer with the sum written out."}
    assert [m["role"] for m in rows[4]] == ["user", "assistant", "user", "assistant"]


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "hi", "response": "x"', r"line 4: not JSON"),
    ('["prompt", "response"]', r"line 4: a JSON list, not an object"),
    ('{"prompt": "hi"}', r"line 4: missing field 'response'"),
    ('{"messages": [{"role": "bot", "content": "hi"}]}',
     r"line 4: message 0 has unknown role 'bot'; the roles are system, user, assistant"),
    ('{"prompt": "hi", "response": "  "}', r"line 4: 'response' is empty"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', r"line 4: no assistant message"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 4}]}',
     r"line 4: message 1 \(assistant\) is a JSON int, not a string"),
    ('{"messages": "hi"}', r"line 4: \"messages\" must be a non-empty list"),
])
def test_a_bad_row_names_the_file_its_line_number_and_what_is_wrong(tmp_path, line, message):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "c", "response": "d"}\n' + line + "\n")
    with pytest.raises(SlmError, match=f"rows.jsonl, {message}"):
        read_rows(path)


def test_missing_empty_and_non_utf8_files_each_give_one_clear_line(tmp_path):
    with pytest.raises(SlmError, match="rows file not found"):
        read_rows(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(SlmError, match="empty.jsonl holds no rows"):
        read_rows(tmp_path / "empty.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "a", "response": "b"}\n{"prompt": "café"}\n'.encode("latin-1"))
    with pytest.raises(SlmError, match="latin1.jsonl is not UTF-8 text .*line 2"):
        read_rows(tmp_path / "latin1.jsonl")


# -- preparing -----------------------------------------------------------------------------------
def test_prepared_files_agree_with_meta_and_with_render_chat(prepared, tokenizer):
    rows_path, out = prepared
    meta = json.loads((out / "meta.json").read_text())
    rows = read_rows(rows_path)
    val_lines = meta["split"]["val_lines"]
    assert meta["format"] == "slmkit-sft-data" and meta["dtype"] == "uint16" and meta["chat_template"] == "chatml"
    assert meta["source"]["rows"] == 30 and len(val_lines) == 6
    assert meta["tokenizer"]["name"] == tokenizer.name and meta["vocab_size"] == tokenizer.vocab_size
    # Line numbers count the blank lines after the first row: row i (i >= 1) is on line i + 3.
    line_of = [1] + [i + 3 for i in range(1, 30)]
    for split in ("train", "val"):
        chosen = [row for row, line in zip(rows, line_of) if (line in val_lines) == (split == "val")]
        examples = examples_of(out, split)
        assert len(examples) == meta["splits"][split]["examples"] == len(chosen)
        for (ids, mask), messages in zip(examples, chosen):
            expected_ids, expected_mask = render_chat(tokenizer, messages)
            assert ids.tolist() == expected_ids and mask.tolist() == expected_mask
        assert meta["splits"][split]["tokens"] == sum(len(ids) for ids, _ in examples)
        assert meta["splits"][split]["response_tokens"] == sum(int(mask.sum()) for _, mask in examples)
        # Nothing truncated here: the response bytes are the assistant texts' UTF-8 bytes.
        assert meta["splits"][split]["response_bytes"] == sum(
            len(m["content"].encode()) for messages in chosen for m in messages if m["role"] == "assistant")
    data = open_sft_data(out, SEQ_LEN)
    assert data.bytes_per_token("val") == meta["splits"]["val"]["response_bytes"] / meta["splits"]["val"]["response_tokens"]
    assert data.bits_per_byte(np.log(2), "val") == pytest.approx(1 / data.bytes_per_token("val"))


def test_rows_split_by_seed_deterministically_with_at_least_one_val_row(tokenizer, tmp_path):
    rows = write_jsonl(tmp_path / "rows.jsonl", make_rows(12))

    def val_lines(seed, name, fraction=0.25):
        out = prepare_sft_data(rows, tokenizer, tmp_path / name, seq_len=SEQ_LEN, val_fraction=fraction, seed=seed)
        return json.loads((out / "meta.json").read_text())["split"]["val_lines"]

    first, again, other = val_lines(1, "a"), val_lines(1, "b"), val_lines(2, "c")
    assert first == again and len(first) == 3 and first != other
    assert len(val_lines(0, "tiny", fraction=0.01)) == 1
    two = write_jsonl(tmp_path / "two.jsonl", make_rows(2))
    meta = json.loads((prepare_sft_data(two, tokenizer, tmp_path / "two", seq_len=SEQ_LEN) / "meta.json").read_text())
    assert meta["splits"]["train"]["examples"] == 1 and meta["splits"]["val"]["examples"] == 1
    one = write_jsonl(tmp_path / "one.jsonl", make_rows(1))
    with pytest.raises(SlmError, match="holds 1 row; SFT data needs at least 2 rows"):
        prepare_sft_data(one, tokenizer, tmp_path / "one", seq_len=SEQ_LEN)


def test_overlong_examples_are_truncated_or_dropped_and_counted(tokenizer, tmp_path):
    long_answer = " ".join(str(n) for n in range(200))
    rows = make_rows(6) + [{"prompt": "Count to 199.", "response": long_answer},
                           {"prompt": "Count to 199. " + long_answer, "response": "Done."}]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    counts = {}
    for mode in ("truncate", "drop"):
        out = prepare_sft_data(path, tokenizer, tmp_path / mode, seq_len=SEQ_LEN, val_fraction=0.2, seed=0, overlong=mode)
        meta = json.loads((out / "meta.json").read_text())
        counts[mode] = (meta["truncated"], meta["dropped"])
        examples = examples_of(out, "train") + examples_of(out, "val")
        assert max(len(ids) for ids, _ in examples) <= SEQ_LEN + 1
        assert sum(meta["splits"][s]["examples"] for s in ("train", "val")) == 8 - meta["dropped"]
        if mode == "truncate":  # the long answer keeps its first seq_len + 1 tokens, masked from its start
            kept = [(ids, mask) for ids, mask in examples if len(ids) == SEQ_LEN + 1]
            assert len(kept) == 1 and kept[0][1][-1] and tokenizer.decode(kept[0][0]).startswith("user\nCount to 199.\nassistant\n0 1 2")
    # The long prompt leaves no response token within seq_len + 1: dropped even when truncating.
    assert counts == {"truncate": (1, 1), "drop": (0, 2)}


def test_prepare_refuses_its_input_an_unrelated_directory_and_a_tokenizer_without_chat_tokens(tokenizer, tmp_path):
    rows = write_jsonl(tmp_path / "in" / "rows.jsonl", make_rows(4)) if (tmp_path / "in").mkdir() is None else None
    with pytest.raises(SlmError, match="will not replace .*: it contains the input"):
        prepare_sft_data(rows, tokenizer, tmp_path / "in", seq_len=SEQ_LEN, overwrite=True)
    assert rows.is_file()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(SlmError, match="will not replace"):
        prepare_sft_data(rows, tokenizer, tmp_path / "notes", seq_len=SEQ_LEN, overwrite=True)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"
    out = prepare_sft_data(rows, tokenizer, tmp_path / "out", seq_len=SEQ_LEN)
    with pytest.raises(SlmError, match="already holds SFT data; pass overwrite"):
        prepare_sft_data(rows, tokenizer, out, seq_len=SEQ_LEN)
    assert prepare_sft_data(rows, tokenizer, out, seq_len=SEQ_LEN, seed=5, overwrite=True, fingerprint="f1") == out
    assert json.loads((out / "meta.json").read_text())["fingerprint"] == "f1"
    (out / ".notes").write_text("a file prepare did not write")
    with pytest.raises(SlmError, match="besides SFT data written there before, it holds .notes"):
        prepare_sft_data(rows, tokenizer, out, seq_len=SEQ_LEN, overwrite=True)
    plain = train_tokenizer([make_text(0, 200)], "bpe:300")
    with pytest.raises(SlmError, match="has no chat tokens .*with_chat_tokens"):
        prepare_sft_data(rows, plain, tmp_path / "plain", seq_len=SEQ_LEN)


# -- batches -------------------------------------------------------------------------------------
def check_rows(x, y, segments, examples, pad_id):
    """Each row holds whole examples one after another, then padding; targets are the next token of the
    same example exactly where it is a response token. Returns how many targets count."""
    counted = 0
    for b in range(x.shape[0]):
        row_x, row_y, row_s = x[b].tolist(), y[b].tolist(), segments[b].tolist()
        assert row_s == sorted(row_s) and row_s[0] == 0
        position = 0
        for number in range(max(row_s) + 1):
            width = row_s.count(number)
            tokens = row_x[position : position + width]
            ends_row = position + width == len(row_x)
            if number == max(row_s) and tokens[0] == pad_id:  # (an example starts with <|im_start|>)
                assert set(tokens) == {pad_id} and set(row_y[position:]) == {IGNORE_INDEX}  # padding
                break
            # the example whose ids these are (the last one in a full row may have one more token, a target only)
            matches = [(ids, mask) for ids, mask in examples
                       if ids[:width].tolist() == tokens and (len(ids) == width or ends_row and len(ids) == width + 1)]
            assert len(matches) == 1, (b, number)
            ids, mask = matches[0]
            expected = [int(ids[t + 1]) if t + 1 < len(ids) and mask[t + 1] else IGNORE_INDEX for t in range(width)]
            assert row_y[position : position + width] == expected
            counted += sum(t != IGNORE_INDEX for t in expected)
            position += width
    return counted


@pytest.mark.parametrize("packing", [True, False])
def test_random_batches_hold_whole_examples_and_learn_only_their_responses(prepared, packing):
    _, out = prepared
    data = open_sft_data(out, SEQ_LEN, packing=packing)
    examples = examples_of(out, "train")
    x, y, segments = data.random_batch("train", 6, SEQ_LEN, seed=7, step=3)
    assert x.shape == y.shape == segments.shape == (6, SEQ_LEN) and x.dtype == y.dtype == segments.dtype
    assert check_rows(x, y, segments, examples, data.pad_id) > 0
    if packing:
        assert int(segments.max()) >= 2  # short examples share rows
    else:
        assert set(segments.unique().tolist()) <= {0, 1}
    again = data.random_batch("train", 6, SEQ_LEN, seed=7, step=3)
    other = data.random_batch("train", 6, SEQ_LEN, seed=7, step=4)
    assert all(a.equal(b) for a, b in zip((x, y, segments), again))
    assert not x.equal(other[0])


@pytest.mark.parametrize("packing", [True, False])
def test_eval_batches_score_every_val_response_token_exactly_once(prepared, packing):
    _, out = prepared
    data = open_sft_data(out, SEQ_LEN, packing=packing)
    examples = examples_of(out, "val")
    batches = list(data.eval_batches("val", 2, SEQ_LEN))
    rows = sum(x.shape[0] for x, _, _ in batches)
    assert rows == data.eval_windows("val", SEQ_LEN)
    assert rows == (len(examples) if not packing else rows) and (rows < len(examples)) == packing
    counted = sum(check_rows(x, y, s, examples, data.pad_id) for x, y, s in batches)
    assert counted == data.meta["splits"]["val"]["response_tokens"]
    assert batches[0][0][0, : len(examples[0][0])].tolist() == examples[0][0].tolist()  # in order
    assert len(list(data.eval_batches("val", 2, SEQ_LEN, max_batches=1))) == 1


def test_open_sft_data_refuses_too_short_a_seq_len_damaged_files_and_a_pretraining_dataset(prepared, tmp_path):
    _, out = prepared
    data = open_sft_data(out)
    longest = data.meta["splits"]["train"]["longest"]
    with pytest.raises(SlmError, match=f"examples of up to {longest} tokens.*use seq_len {longest - 1} or more"):
        open_sft_data(out, seq_len=longest - 2)
    assert "train" in data.summary() and "truncated" in data.summary() and "SFTData(" in repr(data)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for path in out.iterdir():
        (damaged / path.name).write_bytes(path.read_bytes())
    (damaged / "val.mask.bin").write_bytes(b"\x01")
    with pytest.raises(SlmError, match="val.mask.bin holds 1 bytes"):
        open_sft_data(damaged)
    (damaged / "meta.json").write_text(json.dumps({"format": "slmkit-dataset"}))
    with pytest.raises(SlmError, match="not SFT data .*pretraining dataset"):
        open_sft_data(damaged)


def test_the_trainers_dataset_identity_reads_sft_data(prepared):
    from slmkit.train.run_config import dataset_identity

    _, out = prepared
    identity = dataset_identity(open_sft_data(out))
    assert identity["splits"]["val"]["tokens"] == open_sft_data(out).meta["splits"]["val"]["tokens"]
