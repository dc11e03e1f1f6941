"""`slm code-eval`: the sandboxed code-generation suite (slmkit.eval.code) through slmkit.api."""

from __future__ import annotations

import json
import sys

from slmkit import api
from slmkit.cli.command import add_command
from slmkit.errors import SlmError


def register(subparsers) -> None:
    add_command(
        subparsers, "code-eval", _code_eval_arguments, _code_eval,
        help="the code-generation suite: completions run in a sandbox against hidden tests, pass@k",
        description="Each of the suite's Python tasks (a signature and docstring) is continued by MODEL; every "
                    "completion runs in a sandbox (a fresh interpreter, CPU/memory/file limits, a throwaway "
                    "directory, no network) against the task's hidden tests. Prints pass@k (the unbiased "
                    "estimator). --self-test proves the harness: canonical solutions score 1, broken ones 0.")
    register_lm_eval(subparsers)


def _code_eval_arguments(code) -> None:
    code.add_argument("model", nargs="?", metavar="MODEL", help="an slmkit checkpoint or run directory")
    code.add_argument("--n", type=int, default=None, help="completions per task (default 1: greedy; more: sampled)")
    code.add_argument("--k", type=int, action="append", metavar="K", help="report pass@K (repeatable; K <= n)")
    code.add_argument("--max-new-tokens", type=int, default=256, help="tokens per completion at most (default 256)")
    code.add_argument("--seed", type=int, default=0, help="seed of the sampled completions (default 0)")
    code.add_argument("--baseline", metavar="RESULTS", help="a previous results JSON to compare with")
    code.add_argument("--out", metavar="PATH", help="write the results JSON here (with --checkpoints: a directory)")
    code.add_argument("--checkpoints", action="store_true",
                      help="every step-N checkpoint of the run MODEL: results per checkpoint and a plot of pass@k")
    code.add_argument("--self-test", action="store_true", help="run the harness on known answers and exit")
    code.add_argument("--json", action="store_true", help="print the results as JSON")


def _code_eval(args) -> int:
    if args.self_test:
        result = api.code_self_test()
        print(json.dumps(result, indent=2) if args.json else
              "\n".join(f"{variant}: pass@1 {score:.2f} (expected {result['expected'][variant]:.2f})"
                        for variant, score in result["pass_at_1"].items()))
        return 0 if result["ok"] else 1
    if not args.model:
        raise SlmError("name a MODEL (an slmkit checkpoint or run directory), or use --self-test")
    options = {"n": args.n, "k": tuple(args.k or (1,)), "max_new_tokens": args.max_new_tokens, "seed": args.seed,
               "baseline": args.baseline}
    if args.checkpoints:
        results = api.run_code_suite_on_checkpoints(args.model, args.out, **options)
        for result in results:
            print(f"step {result['step']}: " + ", ".join(f"{key} {value:.3f}" for key, value in
                                                          result["pass_at_k"].items()))
        return 0
    model = api.load(args.model)
    result = api.run_code_suite(model, api.model_tokenizer(model, required=True), results_path=args.out,
                                **options)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    summary = ", ".join(f"{key} {value:.3f}" for key, value in result["pass_at_k"].items())
    print(f"{result['model']}: {summary} over {len(result['tasks'])} tasks ({result['isolation']})")
    if "baseline" in result:
        base = result["baseline"]
        deltas = ", ".join(f"{key} {value['baseline']:.3f} -> {value['current']:.3f} ({value['delta']:+.3f})"
                           for key, value in base["pass_at_k"].items())
        print(f"against the baseline: {deltas}; improved {len(base['improved'])} tasks, regressed "
              f"{len(base['regressed'])}")
    return 0


def register_lm_eval(subparsers) -> None:
    add_command(
        subparsers, "lm-eval-task", _lm_eval_task_arguments, _lm_eval_task,
        help="write the offline lm-evaluation-harness task and print the lm_eval command",
        description="Write slmkit's small lm-evaluation-harness task (slmkit_cloze) into DIR and print the "
                    "lm_eval command that runs it on a model exported with `slm export-hf` (lm-eval is the "
                    "optional `lm-eval` extra).")


def _lm_eval_task_arguments(task) -> None:
    task.add_argument("directory", metavar="DIR", help="where to write the task YAML")
    task.add_argument("--model", default="HF_DIR", help="the exported Hugging Face model directory to name")


def _lm_eval_task(args) -> int:
    print(api.write_lm_eval_task(args.directory, args.model))
    return 0
