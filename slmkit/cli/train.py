"""`slm train`, `slm report` and `slm quickstart`: thin calls of slmkit.train and slmkit.report."""

from __future__ import annotations

from slmkit.cli.model import add_config_arguments


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="train a model on a prepared dataset into a run directory",
        description="Train a model on a dataset made by `slm prepare`. Any config field can be set with "
                    "--set (model fields bare, training fields as train.FIELD). Under "
                    "`torchrun --nproc_per_node=N` the same command trains with DDP.")
    train.add_argument("--data", help="the dataset directory (from `slm prepare`); a resumed run reuses its own")
    train.add_argument("--out", help="the run directory to create (default runs/<model name>, or the next free "
                                      "runs/<name>-N)")
    add_config_arguments(train)
    train.add_argument("--resume", metavar="RUN", help="continue the run in RUN exactly where it stopped")
    train.add_argument("--init-from", metavar="CHECKPOINT",
                       help="start a new run from these weights (a checkpoint or run dir); the optimizer starts fresh")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    train.add_argument("--quiet", action="store_true", help="print only errors")
    train.set_defaults(run=_train)

    report = subparsers.add_parser("report", help="write report.md and plots for a run directory")
    report.add_argument("run_dir", metavar="RUN")
    report.set_defaults(run=_report)

    quick = subparsers.add_parser(
        "quickstart", help="prepare Shakespeare, train the nano model for a few minutes, sample, report",
        description="The whole flow on a CPU in a few minutes: prepare the built-in Shakespeare corpus "
                    "(the Python standard library if it cannot be fetched) with a 4,096-token BPE tokenizer, "
                    "train the nano preset, print samples and write the report.")
    quick.add_argument("--minutes", type=float, default=3.0, help="training time (default 3)")
    quick.add_argument("--data", default="data/shakespeare-bpe4096", help="where to put the dataset")
    quick.add_argument("--out", default="runs/quickstart", help="the run directory (a free name is chosen "
                                                                 "next to it if it exists)")
    quick.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                       help="override a field, e.g. --set train.batch_size=8 (repeatable)")
    quick.set_defaults(run=_quickstart)


def _train(args) -> int:
    from slmkit.train import train

    result = train(args.data, args.out, preset=args.preset, config=args.config, overrides=args.overrides,
                   resume=args.resume, init_from=args.init_from, overwrite=args.overwrite, quiet=args.quiet)
    if not args.quiet:
        print(f"\nrun: {result.run_dir} (step {result.step:,}, {result.tokens:,} tokens, {result.stop_reason})")
        if result.interrupted:
            print(f"continue with: slm train --resume {result.run_dir}")
    return 130 if result.interrupted else 0


def _report(args) -> int:
    from slmkit.report import write_report

    print(write_report(args.run_dir))
    return 0


def _quickstart(args) -> int:
    from slmkit.train.quickstart import quickstart

    result = quickstart(minutes=args.minutes, data_dir=args.data, out=args.out, overrides=args.overrides)
    return 130 if result.interrupted else 0
