"""`slm train`, `slm report` and `slm quickstart`: thin calls of slmkit.api, flags from its option dataclasses."""

from __future__ import annotations

import dataclasses

from slmkit import api
from slmkit.cli.command import add_command
from slmkit.cli.options import add_options, options_from_args


def register(subparsers) -> None:
    add_command(
        subparsers, "train", lambda parser: add_options(parser, api.TrainOptions), _train,
        help="train a model on a prepared dataset into a run directory",
        description="Train a model on a dataset made by `slm prepare`. Any config field can be set with "
                    "--set (model fields bare, training fields as train.FIELD). Under "
                    "`torchrun --nproc_per_node=N` the same command trains with DDP.")

    add_command(subparsers, "report", lambda parser: parser.add_argument("run_dir", metavar="RUN"), _report,
                help="write report.md and plots for a run directory")

    add_command(
        subparsers, "quickstart", lambda parser: add_options(parser, api.QuickstartOptions), _quickstart,
        help="prepare Shakespeare, train the nano model for a few minutes, sample, report",
        description="The whole flow on a CPU in a few minutes: prepare the built-in Shakespeare corpus "
                    "(the Python standard library if it cannot be fetched) with a 4,096-token BPE tokenizer, "
                    "train the nano preset, print samples and write the report.")


def _train(args) -> int:
    options = options_from_args(api.TrainOptions, args)
    result = api.train(**dataclasses.asdict(options))
    if not options.quiet:
        print(f"\nrun: {result.run_dir} (step {result.step:,}, {result.tokens:,} tokens, {result.stop_reason})")
        if result.interrupted:
            print(f"continue with: slm train --resume {result.run_dir}")
    return 130 if result.interrupted else 0


def _report(args) -> int:
    print(api.report(args.run_dir))
    return 0


def _quickstart(args) -> int:
    result = api.quickstart(**dataclasses.asdict(options_from_args(api.QuickstartOptions, args)))
    return 130 if result.interrupted else 0
