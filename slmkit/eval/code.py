"""The code-generation suite: Python tasks written for slmkit, completions checked in the sandbox,
pass@k with the unbiased estimator of Chen et al. (2021), results JSON, baseline deltas and a plot.

    from slmkit.eval.code import run_code_suite, self_test
    results = run_code_suite(model, n=1, results_path="runs/tiny/eval/code.json")   # greedy, pass@1
    results = run_code_suite(model, n=20, k=(1, 10), baseline="old.json")           # sampled
    print(results["pass_at_k"], results["summary"]["status_counts"])
    assert self_test()["ok"]        # canonical solutions score 1.0, broken ones 0.0

A task's prompt is a signature and docstring; a completion is the function body the model writes
after it. Each completion is judged in three steps: does prompt + completion parse, does it define
the function (a body after the docstring), does it pass the task's hidden tests (run in
`slmkit.eval.sandbox`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from slmkit.errors import SlmError
from slmkit.eval.sandbox import (
    MISSING_FUNCTION,
    STATUSES,
    SYNTAX_ERROR,
    SandboxLimits,
    inspect_program,
    run_many,
    sandbox_isolation,
)
from slmkit.report.plots import pyplot, save_figure
from slmkit.utils import write_json_atomic

TASKS_FILE = Path(__file__).with_name("code_tasks.jsonl")
RESULTS_FORMAT = "slmkit-code-eval"
RESULTS_VERSION = 1
# A completion is one function body: generation stops where top-level code would begin (Codex's rule).
STOP_STRINGS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert ", "\n#")
TASK_FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "broken_solution", "test")


@dataclass(frozen=True)
class CodeTask:
    """One task. prompt: the signature and docstring (ends with a newline); canonical_solution: a
    correct body; broken_solution: a plausible wrong body (the tests must catch it); test: assert
    statements run after the program, in its namespace; entry_point: the function's name."""

    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    broken_solution: str
    test: str


def load_tasks(path: str | os.PathLike | None = None) -> list[CodeTask]:
    """The tasks of a JSONL file (one object per line with the TASK_FIELDS), by default the suite's
    own `code_tasks.jsonl`. Raises SlmError naming the line of a malformed or duplicated task."""
    path = Path(path) if path is not None else TASKS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise SlmError(f"cannot read the code tasks {path}: {error.strerror or error}") from None
    tasks, seen = [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise SlmError(f"{path}, line {number}: not valid JSON ({error})") from None
        missing = [name for name in TASK_FIELDS if not isinstance(item.get(name), str)]
        if missing:
            raise SlmError(f"{path}, line {number}: the task lacks {', '.join(missing)} (each a string)")
        if item["task_id"] in seen:
            raise SlmError(f"{path}, line {number}: task_id {item['task_id']!r} is used twice")
        seen.add(item["task_id"])
        tasks.append(CodeTask(**{name: item[name] for name in TASK_FIELDS}))
    if not tasks:
        raise SlmError(f"{path} holds no tasks")
    return tasks


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from n samples of which c are correct (Chen et al., 2021):
    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i) so that no binomial
    coefficient overflows. Raises SlmError unless 0 <= c <= n and 1 <= k <= n."""
    for name, value in (("n", n), ("c", c), ("k", k)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise SlmError(f"pass_at_k: {name} = {value!r} must be a whole number")
    if n < 1 or not 0 <= c <= n:
        raise SlmError(f"pass_at_k: need n >= 1 and 0 <= c <= n, got n = {n}, c = {c}")
    if not 1 <= k <= n:
        raise SlmError(f"pass_at_k: k = {k} must be between 1 and n = {n} (pass@k needs at least k samples)")
    if n - c < k:  # every draw of k samples holds a correct one
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def check_completions(tasks: Sequence[CodeTask], completions: Mapping[str, Sequence[str]],
                      k: Sequence[int] = (1,), limits: SandboxLimits | None = None, workers: int | None = None,
                      on_progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Judge completions: for each task (in order) its completions' parse / define / pass results and
    its pass@k. completions maps task_id to the bodies written after the task's prompt. Completions
    that do not parse or define the function are judged without running them; the rest run in the
    sandbox, `workers` at a time (default: the CPUs this process may use). on_progress(done, total)
    is called as sandbox runs finish."""
    checks, jobs, job_of = [], [], {}
    for task in tasks:
        for completion in completions[task.task_id]:
            program = task.prompt + completion
            parses, defines, detail = inspect_program(program, task.entry_point)
            status = SYNTAX_ERROR if not parses else MISSING_FUNCTION if not defines else None
            checks.append({"completion": completion, "parses": parses, "defines_function": defines,
                           "passed": False, "status": status, "detail": detail, "duration_s": 0.0})
            if status is None:
                job_of[len(jobs)] = len(checks) - 1
                jobs.append((program, task.test, task.entry_point))
    done, lock = 0, threading.Lock()

    def progress(_, __):  # called from the sandbox's worker threads
        nonlocal done
        with lock:
            done += 1
            if on_progress is not None:
                on_progress(done, len(jobs))

    for index, result in enumerate(run_many(jobs, limits, workers, on_result=progress)):
        check = checks[job_of[index]]
        check.update(passed=result.passed, status=result.status, detail=result.detail,
                     duration_s=round(result.duration_s, 4), isolation=result.isolation)
    per_task, position = [], 0
    for task in tasks:
        count = len(completions[task.task_id])
        task_checks = checks[position:position + count]
        position += count
        correct = sum(check["passed"] for check in task_checks)
        per_task.append({"task_id": task.task_id, "entry_point": task.entry_point, "n": count, "correct": correct,
                         "pass_at_k": {f"pass@{j}": pass_at_k(count, correct, j) for j in k},
                         "completions": task_checks})
    return per_task


def generate_completions(model, tasks: Sequence[CodeTask], tokenizer=None, *, n: int = 1, config=None,
                         max_new_tokens: int = 256, seed: int = 0,
                         on_progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, list[str]], dict]:
    """n completions of each task's prompt from `model`: ({task_id: [completion, ...]}, the generation
    config used, as a dict).

    Default decoding: greedy for n = 1; for n > 1 sampling at temperature 0.8 with top-p 0.95 and
    `seed` (row i of a task's batch draws with seed + i). A given `config` (GenerationConfig or preset
    name) is used as it is, with num_return_sequences set to n and STOP_STRINGS added when it has no
    stop strings. The tokenizer defaults to the one saved with the model's checkpoint.
    """
    from slmkit.generate import GenerationConfig, generate, model_tokenizer, resolve_config

    tokenizer = tokenizer or model_tokenizer(model, required=True)
    if config is None:
        config = (GenerationConfig(temperature=0.0, max_new_tokens=max_new_tokens) if n == 1 else
                  GenerationConfig(temperature=0.8, top_p=0.95, seed=seed, max_new_tokens=max_new_tokens))
    config = resolve_config(config)
    config = config.replace(num_return_sequences=n, stop_strings=list(config.stop_strings) or list(STOP_STRINGS))
    completions = {}
    for index, task in enumerate(tasks):
        outputs = generate(model, task.prompt, config, tokenizer=tokenizer)
        outputs = outputs if isinstance(outputs, list) else [outputs]
        completions[task.task_id] = [output.text or "" for output in outputs]
        if on_progress is not None:
            on_progress(index + 1, len(tasks))
    return completions, dataclasses.asdict(config)


def run_code_suite(source, tokenizer=None, *, n: int | None = None, k: Sequence[int] = (1,),
                   tasks: Sequence[CodeTask] | str | os.PathLike | None = None, config=None,
                   max_new_tokens: int = 256, seed: int = 0, limits: SandboxLimits | None = None,
                   workers: int | None = None, results_path: str | os.PathLike | None = None,
                   baseline: Mapping | str | os.PathLike | None = None, model_name: str | None = None,
                   checkpoint: str | os.PathLike | None = None, step: int | None = None,
                   on_progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Run the code suite and return its results.

    source: a model (slmkit Transformer; n completions per task are generated, see
    generate_completions) or a mapping {task_id: [completion, ...]} with the same number of
    completions for every task. k: the pass@k to report (each <= n). tasks: CodeTasks or a JSONL path
    (default: the suite's own). limits/workers: the sandbox's (see SandboxLimits, run_many).
    results_path: also write the results there as JSON (atomically). baseline: a previous results
    dict or JSON path; its comparison is added under "baseline". model_name, checkpoint, step: recorded
    in the results (taken from a loaded model's checkpoint when not given). on_progress(stage, done,
    total) with stage "generate" or "check".

    Returns {"format", "version", "model", "checkpoint", "step", "n", "k", "pass_at_k",
    "summary", "generation", "limits", "isolation", "tasks", ...}; "pass_at_k" maps "pass@K" to the
    mean over tasks. Raises SlmError for missing completions, k > n and bad limits.
    """
    tasks = list(tasks) if isinstance(tasks, (list, tuple)) else load_tasks(tasks)
    limits = (limits or SandboxLimits()).validate()
    k = sorted({int(j) for j in k})
    generation = None
    started = time.time()
    if isinstance(source, Mapping):
        completions = _checked_completions(source, tasks, n)
        n = len(completions[tasks[0].task_id])
        model_name = model_name or "completions"
    else:
        n = 1 if n is None else n
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise SlmError(f"n = {n!r}: the number of completions per task must be a whole number >= 1")
        _check_k(k, n)
        meta = getattr(source, "checkpoint_meta", None) or {}
        checkpoint = checkpoint if checkpoint is not None else getattr(source, "checkpoint_dir", None)
        step = step if step is not None else meta.get("step")
        model_name = model_name or (str(checkpoint) if checkpoint is not None else "model")
        completions, generation = generate_completions(
            source, tasks, tokenizer, n=n, config=config, max_new_tokens=max_new_tokens, seed=seed,
            on_progress=(lambda done, total: on_progress("generate", done, total)) if on_progress else None)
    _check_k(k, n)
    per_task = check_completions(tasks, completions, k, limits, workers,
                                 (lambda done, total: on_progress("check", done, total)) if on_progress else None)
    checks = [check for task in per_task for check in task["completions"]]
    isolation = next((c.pop("isolation") for c in checks if "isolation" in c), None)
    for check in checks:
        check.pop("isolation", None)
    total = len(checks)
    results = {
        "format": RESULTS_FORMAT, "version": RESULTS_VERSION,
        "model": model_name, "checkpoint": str(checkpoint) if checkpoint is not None else None, "step": step,
        "n": n, "k": k,
        "pass_at_k": {f"pass@{j}": sum(t["pass_at_k"][f"pass@{j}"] for t in per_task) / len(per_task) for j in k},
        "summary": {
            "tasks": len(per_task), "completions": total,
            "parsed": sum(c["parses"] for c in checks) / total,
            "defined": sum(c["defines_function"] for c in checks) / total,
            "passed": sum(c["passed"] for c in checks) / total,
            "status_counts": {status: count for status, count in Counter(c["status"] for c in checks).items()},
        },
        "generation": generation,
        "limits": {"cpu_seconds": limits.cpu_seconds, "wall_seconds": limits.wall_seconds,
                   "memory_bytes": limits.memory_bytes, "file_size_bytes": limits.file_size_bytes},
        "isolation": isolation or sandbox_isolation(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 2),
        "tasks": per_task,
    }
    if baseline is not None:
        results["baseline"] = compare_results(results, baseline)
    if results_path is not None:
        write_results(results, results_path)
    return results


def self_test(tasks: Sequence[CodeTask] | str | os.PathLike | None = None, limits: SandboxLimits | None = None,
              workers: int | None = None) -> dict:
    """Prove the harness on known answers, through run_code_suite: the canonical solutions must score
    pass@1 = 1.0; the hand-written wrong solutions, a body that returns None, a body that does not
    parse and an empty body must each score 0.0.

    Returns {"ok", "pass_at_1": {variant: score}, "expected": {variant: score}, "wrong": [(variant,
    task_id, status, detail), ...]} where "wrong" lists every completion judged against expectation.
    """
    tasks = list(tasks) if isinstance(tasks, (list, tuple)) else load_tasks(tasks)
    variants = {
        "canonical": lambda task: task.canonical_solution,
        "broken": lambda task: task.broken_solution,
        "returns_none": lambda task: "    return None\n",
        "syntax_error": lambda task: "    return (\n",
        "empty_body": lambda task: "",
    }
    scores, expected, wrong = {}, {}, []
    for variant, body in variants.items():
        results = run_code_suite({task.task_id: [body(task)] for task in tasks}, tasks=tasks, limits=limits,
                                 workers=workers, model_name=f"self-test:{variant}")
        scores[variant] = results["pass_at_k"]["pass@1"]
        expected[variant] = 1.0 if variant == "canonical" else 0.0
        for task in results["tasks"]:
            check = task["completions"][0]
            if check["passed"] != (variant == "canonical"):
                wrong.append((variant, task["task_id"], check["status"], check["detail"]))
    return {"ok": scores == expected and not wrong, "pass_at_1": scores, "expected": expected, "wrong": wrong}


def write_results(results: Mapping, path: str | os.PathLike) -> Path:
    """Write a results dict as indented JSON, atomically (the folder is created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, results)
    return path


def load_results(path: str | os.PathLike) -> dict:
    """A results dict written by run_code_suite. Raises SlmError for a missing or foreign file."""
    path = Path(path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SlmError(f"cannot read the code results {path}: {error.strerror or error}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SlmError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(results, dict) or results.get("format") != RESULTS_FORMAT:
        found = results.get("format") if isinstance(results, dict) else type(results).__name__
        raise SlmError(f"{path} is not a code-suite results file (format={found!r}, expected {RESULTS_FORMAT!r})")
    return results


def compare_results(current: Mapping, baseline: Mapping | str | os.PathLike) -> dict:
    """Deltas of `current` against `baseline` (a results dict or JSON path), over the tasks both hold.

    Returns {"model", "checkpoint", "step" (the baseline's), "pass_at_k": {"pass@K": {"baseline",
    "current", "delta"}}, "tasks": {task_id: {"baseline", "current", "delta"} of each pass@K},
    "improved", "regressed" (task ids whose first common pass@K rose or fell), "only_in_current",
    "only_in_baseline"}. Overall scores here are means over the common tasks, so they can differ from
    each file's own pass@k when the task sets differ. Only the k values both report are compared.
    """
    if not isinstance(baseline, Mapping):
        baseline = load_results(baseline)
    current_tasks = {t["task_id"]: t for t in current["tasks"]}
    baseline_tasks = {t["task_id"]: t for t in baseline["tasks"]}
    common = [task_id for task_id in current_tasks if task_id in baseline_tasks]
    keys = [key for key in current["pass_at_k"] if key in baseline["pass_at_k"]]
    tasks, improved, regressed = {}, [], []
    for task_id in common:
        was, now = baseline_tasks[task_id]["pass_at_k"], current_tasks[task_id]["pass_at_k"]
        tasks[task_id] = {key: {"baseline": was[key], "current": now[key], "delta": now[key] - was[key]}
                          for key in keys}
        if keys and now[keys[0]] > was[keys[0]]:
            improved.append(task_id)
        elif keys and now[keys[0]] < was[keys[0]]:
            regressed.append(task_id)
    overall = {}
    for key in keys:
        was = sum(tasks[t][key]["baseline"] for t in common) / len(common) if common else 0.0
        now = sum(tasks[t][key]["current"] for t in common) / len(common) if common else 0.0
        overall[key] = {"baseline": was, "current": now, "delta": now - was}
    return {"model": baseline.get("model"), "checkpoint": baseline.get("checkpoint"), "step": baseline.get("step"),
            "pass_at_k": overall, "tasks": tasks, "improved": improved, "regressed": regressed,
            "only_in_current": [t for t in current_tasks if t not in baseline_tasks],
            "only_in_baseline": [t for t in baseline_tasks if t not in current_tasks]}


def plot_pass_at_k(results: Sequence[Mapping | str | os.PathLike], path: str | os.PathLike) -> Path | None:
    """A PNG of pass@k against the training step, one line per k, from results of several checkpoints
    (dicts or JSON paths; those without a step are placed by their order). Written atomically;
    None when there is nothing to plot."""
    loaded = [r if isinstance(r, Mapping) else load_results(r) for r in results]
    if not loaded:
        return None
    points = sorted(((r["step"] if r.get("step") is not None else index, r) for index, r in enumerate(loaded)),
                    key=lambda point: point[0])
    keys = sorted({key for _, r in points for key in r["pass_at_k"]}, key=lambda key: int(key.split("@")[1]))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        shown = [(x, r["pass_at_k"][key]) for x, r in points if key in r["pass_at_k"]]
        ax.plot([x for x, _ in shown], [y for _, y in shown], marker="o", label=key)
    ax.set_xlabel("step" if all(r.get("step") is not None for r in loaded) else "checkpoint")
    ax.set_ylabel("pass@k")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Code suite ({loaded[0]['summary']['tasks']} tasks)")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def run_code_suite_on_checkpoints(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                                  device: str = "cpu", tokenizer=None, **options) -> list[dict]:
    """Run the suite on every step-N checkpoint of a run, oldest first: one results JSON per checkpoint
    (out_dir/code-step-N.json; out_dir defaults to RUN/eval) and a plot across them
    (out_dir/code-pass-at-k.png). options: those of run_code_suite. Returns the results, oldest first.
    Raises SlmError when the run has no step checkpoints."""
    from slmkit.generate import model_tokenizer
    from slmkit.model import load_model
    from slmkit.rundir import TOKENIZER, step_checkpoints
    from slmkit.tokenizer import load_tokenizer

    run_dir = Path(run_dir)
    checkpoints = step_checkpoints(run_dir)
    if not checkpoints:
        raise SlmError(f"{run_dir} has no step-N checkpoints to evaluate (is it an slmkit run directory?)")
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "eval"
    all_results = []
    for step, directory in checkpoints:
        model = load_model(directory, device=device)
        step_tokenizer = tokenizer or model_tokenizer(model) or load_tokenizer(run_dir / TOKENIZER)
        all_results.append(run_code_suite(model, step_tokenizer, step=step, checkpoint=directory,
                                          results_path=out_dir / f"code-step-{step}.json", **options))
    plot_pass_at_k(all_results, out_dir / "code-pass-at-k.png")
    return all_results


def _checked_completions(source: Mapping, tasks: Sequence[CodeTask], n: int | None) -> dict[str, list[str]]:
    completions = {}
    for task in tasks:
        if task.task_id not in source:
            raise SlmError(f"no completions for task {task.task_id!r}; give a list for every task")
        given = source[task.task_id]
        completions[task.task_id] = [given] if isinstance(given, str) else list(given)
        if not all(isinstance(c, str) for c in completions[task.task_id]):
            raise SlmError(f"the completions of task {task.task_id!r} must be strings")
    counts = {len(c) for c in completions.values()}
    if len(counts) != 1 or 0 in counts:
        raise SlmError(f"every task needs the same number (>= 1) of completions; got {sorted(counts)}")
    if n is not None and counts != {n}:
        raise SlmError(f"n = {n} but the tasks have {counts.pop()} completions each")
    return completions


def _check_k(k: Sequence[int], n: int) -> None:
    if not k or min(k) < 1 or max(k) > n:
        raise SlmError(f"k = {list(k)}: each k must be between 1 and n = {n} (the completions per task); "
                       f"raise n to report pass@{max(k) if k else 1}")


__all__ = ["STATUSES", "STOP_STRINGS", "TASKS_FILE", "CodeTask", "check_completions",
           "compare_results", "generate_completions", "load_results", "load_tasks", "pass_at_k", "plot_pass_at_k",
           "run_code_suite", "run_code_suite_on_checkpoints", "self_test", "write_results"]
