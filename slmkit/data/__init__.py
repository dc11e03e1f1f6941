"""Data: sources, cleaning and deduplication, splitting, parallel tokenization, memory-mapped datasets.

    from slmkit.data import prepare, open_dataset
    ds = prepare(["shakespeare"], "data/shakespeare", tokenizer="gpt2")
    ds = open_dataset("data/shakespeare", seq_len=256)
    x, y = ds.random_batch("train", batch_size=8, seq_len=256, seed=0, step=0)
"""

from slmkit.data.loader import Dataset, bits_per_byte, open_dataset
from slmkit.data.options import PrepareOptions
from slmkit.data.prepare import prepare, train_tokenizer_on_sources
from slmkit.data.sources import BUILTINS, resolve_source

__all__ = ["BUILTINS", "Dataset", "PrepareOptions", "bits_per_byte", "open_dataset", "prepare", "resolve_source",
           "train_tokenizer_on_sources"]
