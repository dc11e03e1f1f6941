"""`slm prepare`, `slm tokenizer ...` and `slm data info`: thin calls of `slmkit.api`.

The flags of `slm prepare` are the fields of `api.PrepareOptions` (one flag each, by `add_options`, with the
help and default the field declares); `slm tokenizer train` takes the fields that say how sources are read
and cleaned. Written here by hand: the sources, --out, --val (a share, a count or a source), --val-source
and --quiet, which have no field of their own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

from slmkit import api
from slmkit.cli.command import add_command
from slmkit.cli.options import add_options, given_options, options_from_args


def _split_val(values: list[str] | None, sources: list[str] | None) -> tuple[float, list[str]]:
    """--val values: numbers are the validation share (0.05) or document count (10); anything else is a
    validation source. Returns (val, val_sources)."""
    val, val_sources = api.PrepareOptions.val, list(sources or [])
    for value in values or []:
        try:
            val = float(value)
        except ValueError:
            val_sources.append(value)
    return val, val_sources


def _default_out(sources: list[str], tokenizer: str) -> Path:
    names = []
    for source in sources:
        base = source.rpartition("@")[0] if re.search(r"@[\d.]+$", source) else source
        base = base.rstrip("/").split("/")[-1].split(":")[-1] or "data"
        names.append(re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(base).stem if "." in base else base))
    tok = re.sub(r"[^A-Za-z0-9_.-]+", "", Path(tokenizer).name if Path(tokenizer).exists() else tokenizer)
    return Path("data") / f"{'+'.join(names[:3])}-{tok}"


def prepare_options(args: argparse.Namespace) -> tuple[api.PrepareOptions, list[str]]:
    """The api.PrepareOptions and validation sources that the parsed `slm prepare` flags ask for."""
    val, val_sources = _split_val(args.val, args.val_source)
    return options_from_args(api.PrepareOptions, args, val=val, progress=not args.quiet), val_sources


def cmd_prepare(args) -> int:
    options, val_sources = prepare_options(args)
    out = Path(args.out) if args.out else _default_out(args.sources, options.tokenizer)
    dataset = api.prepare(args.sources, out, val_sources=val_sources, **dataclasses.asdict(options))
    if args.quiet:  # quiet: no progress bar, no summary; its warnings still matter
        for warning in dataset.meta.get("warnings", []):
            print(f"warning: {warning}", file=sys.stderr)
    else:
        print(dataset.summary(out))
    return 0


def cmd_data_info(args) -> int:
    dataset = api.open_dataset(args.dir)
    print(json.dumps(dataset.meta, indent=2) if args.json else dataset.summary(args.dir))
    return 0


def cmd_tokenizer_train(args) -> int:
    given = {name: value for name, value in (("spec", args.spec), ("min_frequency", args.min_frequency),
                                             ("max_bytes", args.max_bytes)) if value is not None}
    tokenizer = api.train_tokenizer_on_sources(args.sources, out_dir=args.out, **given,
                                               **given_options(api.PrepareOptions, args))
    print(f"trained {tokenizer.name}: vocab {tokenizer.vocab_size:,}, eot id {tokenizer.eot_id}, "
          f"tiktoken fast path {'on' if getattr(tokenizer, 'uses_tiktoken', False) else 'off'}; saved to {args.out}")
    return 0


def cmd_tokenizer_info(args) -> int:
    tokenizer = api.load_tokenizer(args.tokenizer)
    print(f"{tokenizer.name} ({tokenizer.kind}): vocab {tokenizer.vocab_size:,}, eot id {tokenizer.eot_id}, "
          f"pad id {tokenizer.pad_id}")
    if args.text is not None:
        ids = tokenizer.encode(args.text)
        print(f"{len(ids)} tokens: {ids}")
        print(" | ".join(tokenizer.decode([i]) for i in ids))
    return 0


def cmd_tokenizer_export(args) -> int:
    out = api.load_tokenizer(args.tokenizer).export_hf(args.out)
    print(f"wrote Hugging Face tokenizer files to {out}")
    return 0


def register(subparsers) -> None:
    add_command(
        subparsers, "prepare", _prepare_arguments, cmd_prepare,
        help="sources -> dataset dir (train.bin, val.bin, meta.json, tokenizer)",
        description="Read, clean, deduplicate, split and tokenize text into a dataset directory. SOURCE: a file, "
        "folder or glob; hf:NAME[:CONFIG[:SPLIT]]; a built-in (tinystories, wikitext-103, slimpajama-6b, "
        "python-stdlib, shakespeare, shakespeare-folio); append @WEIGHT to repeat a source's training documents.",
    )
    add_command(subparsers, "data", _data_arguments, help="inspect datasets")
    add_command(subparsers, "tokenizer", _tokenizer_arguments, help="train, inspect and export tokenizers")


def _prepare_arguments(p) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE")
    p.add_argument("--out", "-o", help="dataset directory (default data/<sources>-<tokenizer>)")
    # --val takes a share, a count or a source, so it is parsed by _split_val rather than as the float field.
    p.add_argument("--val", action="append", metavar="SHARE|COUNT|SOURCE",
                   help=f"validation: a share of the tokens (default {api.PrepareOptions.val}), a number of documents "
                   "(10), or a source that is the validation set (repeatable)")
    p.add_argument("--val-source", action="append", metavar="SOURCE", help="explicit validation source (repeatable)")
    p.add_argument("--quiet", "-q", action="store_true",  # the progress field, inverted
                   help="no progress bar and no summary (warnings still go to stderr)")
    add_options(p, api.PrepareOptions, skip=("val", "progress"))


def _data_arguments(parser) -> None:
    data = parser.add_subparsers(dest="data_command", metavar="ACTION")
    info = data.add_parser("info", help="summary of a dataset directory")
    info.add_argument("dir")
    info.add_argument("--json", action="store_true", help="print meta.json")
    info.set_defaults(run=cmd_data_info)


def _tokenizer_arguments(tok) -> None:
    actions = tok.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    train = actions.add_parser("train", help="train bpe:N or char on sources and save it")
    train.add_argument("sources", nargs="+", metavar="SOURCE")
    # Arguments of train_tokenizer_on_sources itself, which applies its defaults to those not given.
    train.add_argument("--tokenizer", "-t", dest="spec", help="bpe:VOCAB or char (default bpe:8192)")
    train.add_argument("--out", "-o", required=True,
                       help="directory to save the tokenizer in: new, empty, or one this command wrote before")
    train.add_argument("--min-frequency", type=int, help="BPE: least count of a merged pair (default 2)")
    train.add_argument("--max-bytes", type=int, help="train on at most this many characters (default "
                       f"{api.PrepareOptions.tokenizer_train_bytes})")
    # The api.PrepareOptions fields `slm tokenizer train` takes; the rest shape only a prepared dataset.
    takes = (*api.PrepareOptions.SOURCE_FIELDS, "chat_tokens")
    add_options(train, api.PrepareOptions,
                skip=tuple(f.name for f in dataclasses.fields(api.PrepareOptions) if f.name not in takes))
    train.set_defaults(run=cmd_tokenizer_train)
    show = actions.add_parser("info", help="vocab size and special ids; encode --text")
    show.add_argument("tokenizer", help="gpt2, a tokenizer dir, a dataset dir or a tokenizer.json")
    show.add_argument("--text", help="text to encode and show piece by piece")
    show.set_defaults(run=cmd_tokenizer_info)
    export = actions.add_parser("export-hf", help="write tokenizer files that transformers.AutoTokenizer loads")
    export.add_argument("tokenizer", help="gpt2, a tokenizer dir, a dataset dir or a tokenizer.json")
    export.add_argument("--out", "-o", required=True)
    export.set_defaults(run=cmd_tokenizer_export)
