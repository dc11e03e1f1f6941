"""`slm eval` and `slm status`: thin calls of slmkit.api, the window flags from its EvalOptions."""

from __future__ import annotations

import dataclasses
import json

from slmkit import api
from slmkit.cli.command import add_command
from slmkit.cli.options import add_options, options_from_args
from slmkit.errors import SlmError


def register(subparsers) -> None:
    add_command(
        subparsers, "eval", _eval_arguments, _eval,
        help="loss, perplexity and bits per byte of models on a dataset or text files",
        description="Score each MODEL (an slmkit checkpoint or run, or a local Hugging Face model directory) on "
                    "a dataset's split (--data) or on text files (given after the models; each file is one "
                    "document), on the same windows. Each model reads text with its own tokenizer, so bits per "
                    "byte compares models with different tokenizers; loss and perplexity do not. Without data, "
                    "a run is scored on its own dataset. --checkpoints scores every checkpoint of one run.")

    add_command(
        subparsers, "status", _status_arguments, _status,
        help="every run under a directory: state, step, tokens, best validation loss, last checkpoint",
        description="One line per run under DIR: running (a live process holds its lock), finished, stopped "
                    "(interrupted; --resume continues it) or failed (with the reason), the step and tokens "
                    "reached, the best validation loss and bits per byte, the newest checkpoint and the time of "
                    "the last update.")


def _eval_arguments(evaluate) -> None:
    evaluate.add_argument("inputs", nargs="+", metavar="MODEL",
                          help="model directories, then any text files to score (files are text, directories models)")
    evaluate.add_argument("--data", metavar="DATASET_DIR", help="a dataset made by `slm prepare` (its val split; a model of another tokenizer "
                          "scores its text, decoded and re-tokenized)")
    add_options(evaluate, api.EvalOptions)
    evaluate.add_argument("--checkpoints", action="store_true",
                          help="score every checkpoint (step-N, best, last) of the run MODEL; write the table and a "
                               "plot of loss and bits per byte against step to RUN/plots/eval_checkpoints.{md,png}")
    evaluate.add_argument("--out", metavar="DIR", help="with --checkpoints: write the table and plot here instead")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of the table")


def _status_arguments(status) -> None:
    status.add_argument("directory", nargs="?", default="runs", metavar="DIR", help="where the runs are (default runs)")
    status.add_argument("--json", action="store_true", help="print JSON instead of the table")


def _eval(args) -> int:
    options = dataclasses.asdict(options_from_args(api.EvalOptions, args))
    if args.checkpoints:
        report = api.evaluate_checkpoints(args.inputs[0], data=args.data, texts=args.inputs[1:], out=args.out,
                                          **options)
    else:
        if args.out:
            raise SlmError("--out is for --checkpoints (where the table and plot go); drop it or add --checkpoints")
        report = api.evaluate_models(args.inputs, data=args.data, **options)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0


def _status(args) -> int:
    statuses = api.run_status(args.directory)
    if args.json:
        print(json.dumps([status.to_dict() for status in statuses], indent=2))
    else:
        print(api.format_status(statuses, args.directory))
    return 0
