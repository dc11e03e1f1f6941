"""`slm prepare`, `slm tokenizer ...` and `slm data info`: thin calls of slmkit.data and slmkit.tokenizer."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from slmkit.data.clean import ENCODING_POLICIES
from slmkit.data.dedup import DEFAULT_THRESHOLD


def _split_val(values: list[str] | None, sources: list[str] | None) -> tuple[float, list[str]]:
    """--val values: numbers are the validation share (0.05) or document count (10); anything else is a
    validation source. Returns (val, val_sources)."""
    val, val_sources = 0.05, list(sources or [])
    for value in values or []:
        try:
            val = float(value)
        except ValueError:
            val_sources.append(value)
    return val, val_sources


def _add_source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoding-errors", choices=ENCODING_POLICIES, default="strict",
                   help="invalid UTF-8: stop (strict), replace with U+FFFD, or skip the document")
    p.add_argument("--min-chars", type=int, default=32, help="drop documents shorter than this (default 32)")
    p.add_argument("--doc-separator", help="split text files into documents at this string (e.g. '<|endoftext|>')")
    p.add_argument("--ext", action="append", metavar="EXT",
                   help="file extensions read from folders (repeatable; default: common text and code extensions)")
    p.add_argument("--text-field", default="text", help="field or column holding the text in .jsonl/.json/.parquet/.csv "
                   "and hf: sources (default text)")
    p.add_argument("--hf-split", default="train", help="split of hf: sources that name none (default train)")


def _default_out(sources: list[str], tokenizer: str) -> Path:
    names = []
    for source in sources:
        base = source.rpartition("@")[0] if re.search(r"@[\d.]+$", source) else source
        base = base.rstrip("/").split("/")[-1].split(":")[-1] or "data"
        names.append(re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(base).stem if "." in base else base))
    tok = re.sub(r"[^A-Za-z0-9_.-]+", "", Path(tokenizer).name if Path(tokenizer).exists() else tokenizer)
    return Path("data") / f"{'+'.join(names[:3])}-{tok}"


def cmd_prepare(args) -> int:
    from slmkit.data import prepare
    from slmkit.data.report import format_summary

    out = Path(args.out) if args.out else _default_out(args.sources, args.tokenizer)
    val, val_sources = _split_val(args.val, args.val_source)
    dataset = prepare(
        args.sources, out, tokenizer=args.tokenizer, val=val, val_sources=val_sources, seed=args.seed,
        near_dup=args.near_dup, near_dup_threshold=args.near_dup_threshold, encoding_errors=args.encoding_errors,
        min_chars=args.min_chars, max_line_chars=args.max_line_chars, doc_separator=args.doc_separator,
        extensions=args.ext, text_field=args.text_field, hf_split=args.hf_split, max_documents=args.max_documents,
        dtype=args.dtype, chat_tokens=args.chat_tokens, tokenizer_train_bytes=args.tokenizer_train_bytes,
        workers=args.workers, force=args.force, progress=not args.quiet,
    )
    print(format_summary(dataset.meta, out, reused=dataset.reused))
    return 0


def cmd_data_info(args) -> int:
    from slmkit.data import open_dataset
    from slmkit.data.report import format_summary

    dataset = open_dataset(args.dir)
    print(json.dumps(dataset.meta, indent=2) if args.json else format_summary(dataset.meta, args.dir))
    return 0


def cmd_tokenizer_train(args) -> int:
    from slmkit.data import train_tokenizer_on_sources

    tokenizer = train_tokenizer_on_sources(
        args.sources, args.tokenizer, args.out, chat_tokens=args.chat_tokens, min_frequency=args.min_frequency,
        max_bytes=args.max_bytes, encoding_errors=args.encoding_errors, min_chars=args.min_chars,
        doc_separator=args.doc_separator, extensions=args.ext, text_field=args.text_field, hf_split=args.hf_split,
    )
    print(f"trained {tokenizer.name}: vocab {tokenizer.vocab_size:,}, eot id {tokenizer.eot_id}, "
          f"tiktoken fast path {'on' if getattr(tokenizer, 'uses_tiktoken', False) else 'off'}; saved to {args.out}")
    return 0


def cmd_tokenizer_info(args) -> int:
    from slmkit.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    print(f"{tokenizer.name} ({tokenizer.kind}): vocab {tokenizer.vocab_size:,}, eot id {tokenizer.eot_id}, "
          f"pad id {tokenizer.pad_id}")
    if args.text is not None:
        ids = tokenizer.encode(args.text)
        print(f"{len(ids)} tokens: {ids}")
        print(" | ".join(tokenizer.decode([i]) for i in ids))
    return 0


def cmd_tokenizer_export(args) -> int:
    from slmkit.tokenizer import load_tokenizer

    out = load_tokenizer(args.tokenizer).export_hf(args.out)
    print(f"wrote Hugging Face tokenizer files to {out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare", help="sources -> dataset dir (train.bin, val.bin, meta.json, tokenizer)",
        description="Read, clean, deduplicate, split and tokenize text into a dataset directory. SOURCE: a file, "
        "folder or glob; hf:NAME[:CONFIG[:SPLIT]]; a built-in (tinystories, wikitext-103, slimpajama-6b, "
        "python-stdlib, shakespeare, shakespeare-folio); append @WEIGHT to repeat a source's training documents.",
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE")
    p.add_argument("--out", "-o", help="dataset directory (default data/<sources>-<tokenizer>)")
    p.add_argument("--tokenizer", "-t", default="gpt2",
                   help="gpt2, bpe:VOCAB (trained here), char, or a tokenizer dir / tokenizer.json (default gpt2)")
    p.add_argument("--val", action="append", metavar="SHARE|COUNT|SOURCE",
                   help="validation: a share of the tokens (default 0.05), a number of documents (10), or a "
                   "source that is the validation set (repeatable)")
    p.add_argument("--val-source", action="append", metavar="SOURCE", help="explicit validation source (repeatable)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the split (default 1337)")
    p.add_argument("--near-dup", choices=("group", "drop", "off"), default="group",
                   help="near-duplicates: keep on one side of the split (group), keep one (drop), or skip the check")
    p.add_argument("--near-dup-threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"estimated Jaccard similarity that makes two documents near-duplicates (default {DEFAULT_THRESHOLD})")
    p.add_argument("--max-line-chars", type=int, default=20_000, help="drop documents with a longer line (minified)")
    p.add_argument("--max-documents", type=int, help="read at most this many documents (files, rows) per source")
    p.add_argument("--dtype", choices=("uint16", "uint32"), help="token dtype (default: uint16 when the vocab fits)")
    p.add_argument("--chat-tokens", action="store_true", help="trained BPE: add <|im_start|> and <|im_end|>")
    p.add_argument("--tokenizer-train-bytes", type=int, default=1 << 30,
                   help="train bpe:/char on at most this many characters of the cleaned text (default 2^30)")
    p.add_argument("--workers", type=int, help="tokenizing processes (default: usable cores minus the load average, at least 1)")
    p.add_argument("--force", action="store_true", help="rebuild even when the inputs are unchanged")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _add_source_options(p)
    p.set_defaults(run=cmd_prepare)

    data = subparsers.add_parser("data", help="inspect datasets").add_subparsers(dest="data_command", metavar="ACTION")
    info = data.add_parser("info", help="summary of a dataset directory")
    info.add_argument("dir")
    info.add_argument("--json", action="store_true", help="print meta.json")
    info.set_defaults(run=cmd_data_info)

    tok = subparsers.add_parser("tokenizer", help="train, inspect and export tokenizers")
    actions = tok.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    train = actions.add_parser("train", help="train bpe:N or char on sources and save it")
    train.add_argument("sources", nargs="+", metavar="SOURCE")
    train.add_argument("--tokenizer", "-t", default="bpe:8192", help="bpe:VOCAB or char (default bpe:8192)")
    train.add_argument("--out", "-o", required=True, help="directory to save the tokenizer in")
    train.add_argument("--chat-tokens", action="store_true", help="add <|im_start|> and <|im_end|>")
    train.add_argument("--min-frequency", type=int, default=2, help="BPE: least count of a merged pair (default 2)")
    train.add_argument("--max-bytes", type=int, default=1 << 30, help="train on at most this many characters")
    _add_source_options(train)
    train.set_defaults(run=cmd_tokenizer_train)
    show = actions.add_parser("info", help="vocab size and special ids; encode --text")
    show.add_argument("tokenizer", help="gpt2, a tokenizer dir, a dataset dir or a tokenizer.json")
    show.add_argument("--text", help="text to encode and show piece by piece")
    show.set_defaults(run=cmd_tokenizer_info)
    export = actions.add_parser("export-hf", help="write tokenizer files that transformers.AutoTokenizer loads")
    export.add_argument("tokenizer", help="gpt2, a tokenizer dir, a dataset dir or a tokenizer.json")
    export.add_argument("--out", "-o", required=True)
    export.set_defaults(run=cmd_tokenizer_export)
