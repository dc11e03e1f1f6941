"""`slm average`: a thin call of slmkit.api.average_checkpoints (and, with --eval, evaluate_models)."""

from __future__ import annotations

import json
from pathlib import Path

from slmkit import api
from slmkit.cli.command import add_command


def register(subparsers) -> None:
    add_command(
        subparsers, "average", _average_arguments, _average,
        help="average the weights of several checkpoints of one run into a new checkpoint",
        description="Average the weights of several checkpoints of one run, uniformly (in float64, cast back to "
                    "the stored dtype), into a normal checkpoint with the tokenizer: by default "
                    "RUN/checkpoints/average-FIRST-LAST. The checkpoints must be one network from one run.")


def _average_arguments(average) -> None:
    average.add_argument("run_dir", metavar="RUN", help="a run directory (slm train)")
    chosen = average.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--last", type=int, metavar="N", help="the N newest step-N checkpoints of the run")
    chosen.add_argument("--checkpoints", nargs="+", metavar="NAME",
                        help="checkpoints by name (step-800, last, best, ema) or directory")
    average.add_argument("--out", metavar="DIR", help="where to write the average (default RUN/checkpoints/"
                                                      "average-FIRST-LAST)")
    average.add_argument("--overwrite", action="store_true", help="replace an average written there before")
    average.add_argument("--eval", action="store_true",
                         help="then print the validation loss and bits per byte of each input and of the average "
                              "(on the run's dataset)")


def _average(args) -> int:
    out = api.average_checkpoints(args.run_dir, last=args.last, names=args.checkpoints, out=args.out,
                                  overwrite=args.overwrite)
    inputs = json.loads((Path(out) / "config.json").read_text())["averaged"]["checkpoints"]
    print(f"wrote {out}: the mean of {len(inputs)} checkpoints")
    for path in inputs:
        print(f"  {path}")
    if args.eval:
        print(api.evaluate_models([*inputs, str(out)], progress=False).table())
    return 0
