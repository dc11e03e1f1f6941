"""`slm run RECIPE`: a recipe end to end (prepare, train, evaluate, report, its own steps) through slmkit.api."""

from __future__ import annotations

import dataclasses

from slmkit import api
from slmkit.cli.command import add_command
from slmkit.cli.options import add_options, options_from_args


def register(subparsers) -> None:
    add_command(
        subparsers, "run", _run_arguments, _run,
        help="run a recipe end to end: prepare, train, evaluate, report, and its compare/code/export steps",
        description="Run a recipe file (recipes/*.toml: data sources with weights, tokenizer, model preset, "
                    "training for one GPU, a CPU smoke mode) end to end: prepare the data, train (samples and "
                    "report), evaluate on the validation split, then the recipe's own steps (compare with "
                    "reference models, the code suite, a Hugging Face export). Everything goes under --out. "
                    "--smoke --sample DIR runs the CPU smoke mode on local files standing in for the remote "
                    "sources.")


def _run_arguments(run) -> None:
    run.add_argument("recipe", metavar="RECIPE", help="a recipe file, or the name of one in recipes/ (" +
                     ", ".join(api.recipe_names()) + ")")
    add_options(run, api.RecipeOptions)


def _run(args) -> int:
    options = options_from_args(api.RecipeOptions, args)
    result = api.run_recipe(args.recipe, **dataclasses.asdict(options))
    if options.quiet:
        print(result.summary_path)
    return 130 if result.train.interrupted else 0
