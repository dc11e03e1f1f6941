import json
import math

import numpy as np
import pytest
import torch

from slmkit.data import bits_per_byte, open_dataset
from slmkit.errors import SlmError


@pytest.fixture
def dataset(tmp_path):
    """A hand-made dataset: train = 0..9999 mod 50000, val = 500 tokens; no tokenizer needed."""
    train = (np.arange(10_000) % 50_000).astype(np.uint16)
    val = np.arange(1000, 1500).astype(np.uint16)
    train.tofile(tmp_path / "train.bin")
    val.tofile(tmp_path / "val.bin")
    meta = {
        "format": "slmkit-dataset", "version": 1, "vocab_size": 50257, "dtype": "uint16",
        "tokenizer": {"name": "gpt2", "vocab_size": 50257, "eot_id": 50256},
        "splits": {"train": {"tokens": 10_000, "bytes": 40_000, "documents": 1},
                   "val": {"tokens": 500, "bytes": 1_600, "documents": 1}},
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    return open_dataset(tmp_path)


def test_random_batch_shapes_and_targets_shift_by_one(dataset):
    x, y = dataset.random_batch("train", batch_size=4, seq_len=16, seed=0, step=0)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    # train token i is i, so each row counts up by one and y is x + 1.
    assert torch.equal(y, x + 1)
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 15, dtype=torch.int64))


def test_random_batch_is_a_function_of_seed_and_step(dataset):
    def batch(**kw):
        return dataset.random_batch("train", 8, 32, **kw)[0]

    assert torch.equal(batch(seed=1, step=5), batch(seed=1, step=5))
    assert not torch.equal(batch(seed=1, step=5), batch(seed=1, step=6))
    assert not torch.equal(batch(seed=1, step=5), batch(seed=2, step=5))


def test_random_windows_are_the_ones_earlier_versions_drew(dataset):
    """Resumed and repeated runs depend on it: the windows of (seed, step) never change."""
    x, _ = dataset.random_batch("train", 4, 16, seed=1, step=5)
    starts = np.random.default_rng([1, 5, 0, 0x5E9]).integers(0, 10_000 - 16, size=4)
    assert x[:, 0].tolist() == starts.tolist()


def test_random_windows_cover_the_whole_split(dataset):
    starts = torch.cat([dataset.random_batch("train", 64, 8, seed=0, step=s)[0][:, 0] for s in range(50)])
    assert int(starts.min()) < 200 and int(starts.max()) > 10_000 - 8 - 200


def test_eval_batches_are_sequential_non_overlapping_windows(dataset):
    batches = list(dataset.eval_batches("val", batch_size=3, seq_len=50))
    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    assert xs.shape == ((500 - 1) // 50, 50)
    assert torch.equal(xs.flatten(), torch.arange(1000, 1000 + xs.numel()))
    assert torch.equal(ys, xs + 1)
    assert [len(x) for x, _ in batches] == [3, 3, 3]
    assert len(list(dataset.eval_batches("val", 2, 50, max_batches=2))) == 2


def test_split_shorter_than_a_window_is_an_error(dataset):
    with pytest.raises(SlmError, match="val split has 500 tokens"):
        dataset.random_batch("val", 1, 500, seed=0, step=0)
    with pytest.raises(SlmError, match="unknown split"):
        dataset.split("test")


def test_bits_per_byte_uses_tokens_per_byte_of_the_split(dataset):
    assert dataset.bytes_per_token("val") == pytest.approx(3.2)
    assert dataset.bits_per_byte(math.log(2) * 3.2, "val") == pytest.approx(1.0)
    assert bits_per_byte(math.log(2) * 3.2, 3.2) == pytest.approx(1.0)


def test_bits_per_byte_is_none_without_byte_counts(dataset):
    del dataset.meta["splits"]["val"]["bytes"]
    assert dataset.bytes_per_token("val") is None and dataset.bits_per_byte(1.0, "val") is None
    assert bits_per_byte(None, 3.2) is None and bits_per_byte(1.0, None) is None


def test_splits_are_memory_maps_not_loaded_arrays(dataset):
    assert isinstance(dataset.train, np.memmap)
    assert dataset.vocab_size == 50257


def rewrite_meta(directory, **changes):
    meta = json.loads((directory / "meta.json").read_text())
    meta.update(changes)
    (directory / "meta.json").write_text(json.dumps(meta))


def test_open_dataset_checks_everything_up_front(dataset, tmp_path):
    with pytest.raises(SlmError, match="dataset directory not found: .*nowhere.*slm prepare"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "val.bin").rename(tmp_path / "moved.bin")
    with pytest.raises(SlmError, match="incomplete: missing val.bin"):
        open_dataset(tmp_path)
    (tmp_path / "moved.bin").rename(tmp_path / "val.bin")
    with open(tmp_path / "train.bin", "r+b") as f:
        f.truncate(1001)
    with pytest.raises(SlmError, match="train.bin holds 1001 bytes, but meta.json says 10000 uint16 tokens.*truncated"):
        open_dataset(tmp_path)
    rewrite_meta(tmp_path, dtype="int8")
    with pytest.raises(SlmError, match="dtype 'int8' must be uint16 or uint32"):
        open_dataset(tmp_path)
    rewrite_meta(tmp_path, splits={"train": {"tokens": 1}})
    with pytest.raises(SlmError, match="has no 'splits.val.tokens'"):
        open_dataset(tmp_path)
    rewrite_meta(tmp_path, format="other")
    with pytest.raises(SlmError, match="not an slmkit dataset"):
        open_dataset(tmp_path)
    (tmp_path / "meta.json").write_text("{")
    with pytest.raises(SlmError, match="not valid JSON"):
        open_dataset(tmp_path)
    (tmp_path / "meta.json").unlink()
    with pytest.raises(SlmError, match="not a dataset .no meta.json"):
        open_dataset(tmp_path)


def test_open_dataset_with_seq_len_refuses_a_split_shorter_than_one_window(dataset, tmp_path):
    assert open_dataset(tmp_path, seq_len=499).val.shape == (500,)
    with pytest.raises(SlmError, match="val split has 500 tokens, fewer than one window of seq_len . 1 = 501"):
        open_dataset(tmp_path, seq_len=500)


# -- token ids outside the vocabulary ---------------------------------------------------------------
def _edit_meta(directory, **changes):
    meta = json.loads((directory / "meta.json").read_text())
    meta.update(changes)
    (directory / "meta.json").write_text(json.dumps(meta))


def test_open_dataset_refuses_a_recorded_largest_id_outside_the_vocabulary(dataset, tmp_path):
    _edit_meta(tmp_path, max_token_id=50257)
    with pytest.raises(SlmError, match=r"meta.json records token id 50257, outside its vocabulary of 50257 ids "
                                       r"\(0..50256\).*rebuild it with `slm prepare --force`"):
        open_dataset(tmp_path)
    _edit_meta(tmp_path, max_token_id=9999)
    assert open_dataset(tmp_path).vocab_size == 50257


def test_open_dataset_reads_the_token_files_for_ids_outside_the_vocabulary(dataset, tmp_path):
    """A train.bin of the right size whose ids exceed the vocabulary, with or without a (stale) record."""
    np.full(10_000, 60_000, np.uint16).tofile(tmp_path / "train.bin")
    with pytest.raises(SlmError, match="train.bin holds token id 60000, outside its vocabulary of 50257"):
        open_dataset(tmp_path)
    _edit_meta(tmp_path, max_token_id=9999)  # small token files are read in full even so
    with pytest.raises(SlmError, match="train.bin holds token id 60000"):
        open_dataset(tmp_path)
    assert open_dataset(tmp_path, scan_ids=False).vocab_size == 50257  # the pass skipped: the record is trusted


def test_every_batch_refuses_token_ids_outside_the_vocabulary(dataset, tmp_path):
    bad = np.arange(10_000).astype(np.uint16)
    bad[5000:] = 60_000
    bad.tofile(tmp_path / "train.bin")
    _edit_meta(tmp_path, max_token_id=9999)
    ds = open_dataset(tmp_path, scan_ids=False)  # as for token files too large to read in full on opening
    with pytest.raises(SlmError, match=r"the train split near token [\d,]+ holds token id 60000, outside"):
        for step in range(20):
            ds.random_batch("train", 4, 16, seed=0, step=step)
    with pytest.raises(SlmError, match="the train split near token 4,992 holds token id 60000"):
        for _ in ds.eval_batches("train", 4, 16):
            pass
    assert len(list(ds.eval_batches("val", 4, 16))) == 8  # the clean split is unaffected


def test_slm_train_on_token_files_beyond_the_vocabulary_fails_before_making_a_run(corpus_dir, tmp_path):
    from test_force_safety import one_line_error, slm

    from slmkit.data import prepare

    prepare([str(corpus_dir)], tmp_path / "ds", workers=1, progress=False)
    size = (tmp_path / "ds" / "train.bin").stat().st_size
    np.full(size // 2, 60_000, np.uint16).tofile(tmp_path / "ds" / "train.bin")  # the right size, wrong ids
    done = slm("train", "--data", tmp_path / "ds", "--out", tmp_path / "run", "--preset", "nano", "--quiet",
               "--set", "train.max_steps=2")
    one_line_error(done, "train.bin holds token id 60000, outside its vocabulary of 50257")
    assert not (tmp_path / "run").exists()
