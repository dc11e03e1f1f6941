"""Hugging Face datasets as sources: a quick probe of the Hub, then the rows of a dataset, streamed.

The probe (a TCP connect, 3 s) lets an unreachable Hub fail at once with a message saying how to use
a local copy, instead of after the datasets library's long retries. HF_ENDPOINT is respected, and with
HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set the datasets cache is read without probing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

from slmkit.data.readers import STR, RawItem, text_of
from slmkit.data.readers import wikitext_articles as join_wikitext_rows
from slmkit.errors import SlmError

HF_TIMEOUT_S = 3.0


def hub_address() -> tuple[str, int]:
    """(host, port) of the Hub: HF_ENDPOINT, else huggingface.co:443."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def hub_reachable(timeout: float = HF_TIMEOUT_S) -> str | None:
    """None when the Hugging Face Hub answers a TCP connect within `timeout` seconds, else the reason."""
    host, port = hub_address()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        return f"{host}:{port}: {error or type(error).__name__}"


def offline_mode() -> bool:
    """True when HF_HUB_OFFLINE or HF_DATASETS_OFFLINE asks for the local cache only."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def read_hub_dataset(spec: str, name: str, config: str | None, split: str, text_field: str = "text",
                     wikitext_articles: bool = False) -> Iterator[RawItem]:
    """The rows of the Hugging Face dataset `name` (`config`, `split`) as documents, their text in
    `text_field`; with `wikitext_articles`, rows are lines joined into articles at " = Title = " headings.
    `spec` names the source in messages and item names. Raises SlmError when the Hub is unreachable or the
    dataset cannot be loaded, saying how to use a local copy instead."""
    hint = (
        f"download it where the Hub is reachable (e.g. `huggingface-cli download --repo-type dataset {name}`) "
        "and pass the local .parquet/.jsonl files or their folder to slm prepare instead (or set "
        "HF_DATASETS_OFFLINE=1 to read a copy already in the datasets cache)"
    )
    offline = offline_mode()
    if not offline:
        reason = hub_reachable()
        if reason is not None:
            raise SlmError(f"the Hugging Face Hub is unreachable ({reason}) so {spec!r} cannot be read; {hint}")
    try:
        import datasets  # optional and heavy: only hf: sources need it
    except ImportError:
        raise SlmError("Hugging Face sources need the `datasets` package: pip install 'slmkit[hf]'") from None
    try:
        dataset = datasets.load_dataset(name, config, split=split, streaming=not offline)
    except Exception as error:
        where = "from the local cache (offline mode)" if offline else "from the Hub"
        raise SlmError(f"cannot load {spec!r} {where}: {type(error).__name__}: {error}; {hint}") from None
    texts = (text_of(row, text_field, f"{spec} row {i}") for i, row in enumerate(dataset))
    if wikitext_articles:
        yield from join_wikitext_rows(texts, spec)
        return
    for i, text in enumerate(texts):
        if text:
            yield RawItem(STR, f"{spec}:{i}", text)
