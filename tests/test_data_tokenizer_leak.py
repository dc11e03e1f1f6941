"""A tokenizer that `prepare` trains ("bpe:N", "char") learns from the training side of the split only:
never from validation documents, nor from their near-duplicate twins."""

import itertools

import numpy as np
from conftest import make_text
from test_data_dedup import old_spelling

from slmkit.data import prepare

# make_text never uses j, q, x or y, so these words are the only text holding them.
WORDS = ["".join(p) for p in itertools.permutations("jqxyjq", 6)]
WORDS = sorted(set(WORDS))[::7]


def run(sources, out, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("workers", 1)
    return prepare(sources, out, **kwargs)


def document(k: int) -> str:
    """Ordinary text with a distinctive word of its own repeated often enough to become one BPE token."""
    return make_text(500 + k, 300) + " " + " ".join([WORDS[k]] * 100) + "."


def split_docs(ds, name):
    tok, ids, out, current = ds.tokenizer, np.asarray(ds.split(name)).tolist(), [], []
    for i in ids:
        if i == tok.eot_id:
            out.append(tok.decode(current))
            current = []
        else:
            current.append(i)
    return out


def learned_only_from(ds, texts) -> list[str]:
    """Tokens of the dataset's BPE (2+ characters) that occur in none of `texts`: learned elsewhere."""
    tok = ds.tokenizer
    pieces = (tok.decode([i]) for i in range(tok.vocab_size))
    return [p for p in pieces if len(p) >= 2 and not any(p in t for t in texts)]


def test_trained_bpe_never_learns_validation_words_nor_their_twins(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    for k in range(12):
        (folder / f"doc{k:02d}.txt").write_text(document(k))
        if k < 6:  # a near-duplicate twin, which must follow its original to validation
            (folder / f"twin{k:02d}.txt").write_text(old_spelling(document(k)))
    twins_in_val = 0
    for seed in range(3):
        ds = run([str(folder)], tmp_path / f"ds{seed}", tokenizer="bpe:1000", val=0.25, seed=seed)
        val_names = {n.rsplit("/", 1)[1] for n in ds.meta["split"]["val_documents_names"]}
        val_words = [WORDS[int(n[-6:-4])] for n in val_names]
        twins_in_val += sum(n.startswith("twin") for n in val_names)
        assert val_words and len(val_words) < 12
        train = split_docs(ds, "train")
        assert not learned_only_from(ds, train)
        tok = ds.tokenizer
        for word in WORDS[:12]:
            pieces = len(tok.encode(" " + word))
            # Training words became single tokens, so a validation word seen in training would have too.
            assert (pieces > 1) if word in val_words else (pieces == 1), (seed, word)
        trained_on = ds.meta["tokenizer"]["trained_on"]
        assert trained_on == {"split": "train", "documents": len(train), "bytes": ds.meta["splits"]["train"]["bytes"]}
    assert twins_in_val, "some seed must send a twin pair to validation for the test to mean something"


def test_trained_bpe_ignores_validation_sources_and_training_twins_of_them(tmp_path):
    train_dir, val_dir = tmp_path / "train", tmp_path / "val"
    train_dir.mkdir()
    val_dir.mkdir()
    for k in range(8):
        (train_dir / f"doc{k}.txt").write_text(document(k))
    for k in (8, 9):
        (val_dir / f"doc{k}.txt").write_text(document(k))
    (train_dir / "twin9.txt").write_text(old_spelling(document(9)))  # dropped: a near-duplicate of validation
    ds = run([str(train_dir)], tmp_path / "ds", tokenizer="bpe:1000", val_sources=[str(val_dir)])
    assert ds.meta["filters"]["near_duplicate_of_val"] == 1
    assert not learned_only_from(ds, split_docs(ds, "train"))
    assert [len(ds.tokenizer.encode(" " + WORDS[k])) > 1 for k in (7, 8, 9)] == [False, True, True]
    assert ds.meta["tokenizer"]["trained_on"]["documents"] == 8
    parallel = run([str(train_dir)], tmp_path / "parallel", tokenizer="bpe:1000", val_sources=[str(val_dir)],
                   workers=2)
    assert np.array_equal(parallel.train, ds.train) and np.array_equal(parallel.val, ds.val)
    budget = run([str(train_dir)], tmp_path / "budget", tokenizer="bpe:1000", val_sources=[str(val_dir)],
                 tokenizer_train_bytes=1)
    assert budget.meta["tokenizer"]["trained_on"]["documents"] == 1


def test_trained_char_vocabulary_lacks_validation_only_characters_which_encode_as_unknown(tmp_path):
    train_dir, val_dir = tmp_path / "train", tmp_path / "val"
    train_dir.mkdir()
    val_dir.mkdir()
    for k in range(4):
        (train_dir / f"doc{k}.txt").write_text(make_text(k, 200))
    (val_dir / "omega.txt").write_text(make_text(9, 200) + " Ω and q")
    ds = run([str(train_dir)], tmp_path / "ds", tokenizer="char", val_sources=[str(val_dir)])
    tok = ds.tokenizer
    assert "Ω" not in tok.chars and "q" not in tok.chars
    assert set(tok.chars) == set("".join(split_docs(ds, "train")))
    assert (tok.eot_id, tok.unk_id, tok.vocab_size) == (len(tok.chars), len(tok.chars) + 1, len(tok.chars) + 2)
    val = np.asarray(ds.val).tolist()
    assert val.count(tok.unk_id) == 2 and val[-1] == tok.eot_id
    assert ds.tokenizer.decode(val, skip_special_tokens=False).endswith(" <|unk|> and <|unk|><|endoftext|>")
    assert ds.meta["splits"]["val"]["tokens"] == len((val_dir / "omega.txt").read_text().strip()) + 1


def test_ready_tokenizers_record_no_training_text(corpus_dir, tmp_path):
    ds = run([str(corpus_dir)], tmp_path / "ds", tokenizer="gpt2", val=2)
    assert ds.meta["tokenizer"]["trained_on"] is None
