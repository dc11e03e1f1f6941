"""`slm compare`: a thin call of slmkit.api.compare_models."""

from __future__ import annotations

import json

from slmkit import api
from slmkit.cli.command import add_command


def register(subparsers) -> None:
    add_command(
        subparsers, "compare", _compare_arguments, _compare,
        help="models side by side on the same prompts and seed, in markdown and HTML, with figures",
        description="Continue every prompt (the built-in suite of stories, encyclopedic prose, dialogue, verse "
                    "and code, or --prompts FILE) with every MODEL (slmkit checkpoints or runs, local Hugging "
                    "Face model directories) with the same decoding settings and seed. Writes compare.md and a "
                    "self-contained compare.html to --out, with per-model figures: bits per byte on a shared "
                    "text, distinct-1 and distinct-2, repetition rate, mean output length.")


def _compare_arguments(compare) -> None:
    compare.add_argument("models", nargs="+", metavar="MODEL", help="model directories to compare")
    compare.add_argument("--prompts", metavar="FILE",
                         help='a JSONL file, one object a line: {"id": "story", "prompt": "Once upon a time"} '
                              "(default: the built-in suite)")
    compare.add_argument("--text", metavar="FILE", help="the text to measure bits per byte on (default: built-in)")
    compare.add_argument("--out", default="compare", metavar="DIR", help="where compare.md and compare.html go "
                                                                       "(default compare)")
    compare.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="tokens per output (default 64)")
    compare.add_argument("--seed", type=int, default=0, metavar="S", help="the seed of every prompt (default 0)")
    compare.add_argument("--temperature", type=float, default=0.8, metavar="T",
                         help="sampling temperature, 0 for greedy (default 0.8)")
    compare.add_argument("--top-k", type=int, default=40, metavar="K", help="sample from the K likeliest tokens, "
                                                                          "0 for all (default 40)")
    compare.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto")
    compare.add_argument("--json", action="store_true", help="print JSON instead of the figures table")


def _compare(args) -> int:
    report = api.compare_models(args.models, args.prompts, max_new_tokens=args.max_new_tokens, seed=args.seed,
                                temperature=args.temperature, top_k=args.top_k, text=args.text, out=args.out,
                                device=args.device)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.table())
        print(f"wrote {report.markdown_path} and {report.html_path}")
    return 0
