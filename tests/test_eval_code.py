"""The code-generation suite: the harness proves itself on known answers, the sandbox stops harmful
programs (and the machine is left as it was), pass@k against hand-computed values, results JSON,
baselines, the plot, and a whole run on a tiny random model."""

from __future__ import annotations

import ast
import json
import math
import socket
import string

import pytest
import torch

from slmkit.errors import SlmError
from slmkit.eval import (
    SandboxLimits,
    compare_results,
    load_results,
    load_tasks,
    pass_at_k,
    plot_pass_at_k,
    run_code_suite,
    run_code_suite_on_checkpoints,
    run_in_sandbox,
    sandbox_isolation,
    self_test,
)
from slmkit.eval.code import STOP_STRINGS
from slmkit.model import ModelConfig, Transformer, save_model
from slmkit.tokenizer.char import CharTokenizer

FAST = SandboxLimits(cpu_seconds=1, wall_seconds=10, memory_bytes=256 * 2**20)


# -- the harness proves itself ------------------------------------------------------------------
def test_self_test_scores_canonical_solutions_one_and_every_broken_variant_zero():
    report = self_test()
    assert report["pass_at_1"] == {"canonical": 1.0, "broken": 0.0, "returns_none": 0.0, "syntax_error": 0.0,
                                   "empty_body": 0.0}
    assert report["wrong"] == []
    assert report["ok"] is True


def test_self_test_notices_a_task_whose_tests_accept_a_wrong_answer():
    task = load_tasks()[0]
    lenient = type(task)(**{**task.__dict__, "test": "assert True\n"})  # tests that catch nothing
    report = self_test([lenient])
    assert report["ok"] is False
    assert report["pass_at_1"]["broken"] == 1.0
    assert ("broken", task.task_id, "passed", "") in report["wrong"]


def test_the_suite_has_at_least_30_parseable_tasks_with_several_hidden_asserts_each():
    tasks = load_tasks()
    assert len(tasks) >= 30
    assert len({t.task_id for t in tasks}) == len(tasks)
    assert len({t.entry_point for t in tasks}) == len(tasks)
    for task in tasks:
        tree = ast.parse(task.prompt)  # signature + docstring only
        function = tree.body[0]
        assert isinstance(function, ast.FunctionDef) and function.name == task.entry_point
        assert len(function.body) == 1 and ast.get_docstring(function)
        assert task.test.count("assert ") >= 3, task.task_id
        assert task.canonical_solution.strip() != task.broken_solution.strip()


def test_load_tasks_names_the_line_of_a_malformed_task(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"task_id": "a"}\n')
    with pytest.raises(SlmError, match=r"line 1: the task lacks prompt, entry_point"):
        load_tasks(path)


# -- the sandbox --------------------------------------------------------------------------------
def test_sandbox_stops_an_infinite_loop_at_its_cpu_limit():
    result = run_in_sandbox("while True:\n    pass\n", limits=FAST)
    assert result.status == "timeout"
    assert "CPU" in result.detail
    assert result.duration_s < FAST.wall_seconds


def test_sandbox_kills_a_sleeping_program_at_the_wall_clock_limit():
    result = run_in_sandbox("import time\ntime.sleep(60)\n",
                            limits=SandboxLimits(cpu_seconds=1, wall_seconds=1.5, memory_bytes=256 * 2**20))
    assert result.status == "timeout"
    assert "wall-clock" in result.detail
    assert result.duration_s < 10


@pytest.mark.parametrize("bomb", ["huge = bytearray(10**11)\n",
                                  "chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))\n"])
def test_sandbox_stops_a_memory_bomb(bomb):
    result = run_in_sandbox(bomb, limits=FAST)
    assert result.status == "memory"
    assert run_in_sandbox("x = 1\n", limits=FAST).status == "passed"  # and the machine goes on


@pytest.mark.parametrize("write", [
    "open({target!r}, 'w').write('harm')",
    "import pathlib\npathlib.Path({target!r}).write_text('harm')",
    "import os\nos.close(os.open({target!r}, os.O_WRONLY | os.O_CREAT))",
    "import shutil\nopen('mine.txt', 'w').write('harm')\nshutil.copyfile('mine.txt', {target!r})",
    "import os\nopen('mine.txt', 'w').write('harm')\nos.rename('mine.txt', {target!r})",
    "import os\nos.symlink({target!r}, 'link')\nopen('link', 'w').write('harm')",
])
def test_sandbox_refuses_a_file_write_outside_its_directory_and_the_file_never_appears(tmp_path, write):
    target = str(tmp_path / "outside.txt")
    result = run_in_sandbox(write.format(target=target) + "\n", limits=FAST)
    assert result.status == "forbidden"
    assert "outside the working directory" in result.detail
    assert not (tmp_path / "outside.txt").exists()


def test_sandbox_refuses_deleting_a_file_outside_its_directory(tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("mine")
    result = run_in_sandbox(f"import os\nos.remove({str(keep)!r})\n", limits=FAST)
    assert result.status == "forbidden"
    assert keep.read_text() == "mine"


def test_sandbox_allows_files_inside_its_directory_and_removes_the_directory_afterwards(tmp_path):
    program = ("import os, tempfile\nopen('notes.txt', 'w').write('x')\nos.rename('notes.txt', 'moved.txt')\n"
               "tempfile.mkstemp()\nos.remove('moved.txt')\n")
    result = run_in_sandbox(program, limits=FAST, work_root=tmp_path)
    assert result.status == "passed", result.detail
    assert list(tmp_path.iterdir()) == []


def test_a_refusal_the_program_catches_is_still_reported_forbidden(tmp_path):
    program = f"try:\n    open({str(tmp_path / 'x')!r}, 'w')\nexcept Exception:\n    pass\n"
    result = run_in_sandbox(program, "assert True\n", limits=FAST)
    assert result.status == "forbidden"
    assert not (tmp_path / "x").exists()


@pytest.fixture
def listening_server():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    yield server
    server.close()


def arrived(server) -> bool:
    try:
        server.accept()[0].close()
        return True
    except TimeoutError:
        return False


def test_sandbox_refuses_a_socket_connect_and_no_connection_arrives(listening_server):
    port = listening_server.getsockname()[1]
    program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
    result = run_in_sandbox(program, limits=FAST)
    assert result.status == "forbidden"
    assert "network access (socket." in result.detail
    assert not arrived(listening_server)


def test_the_network_namespace_alone_keeps_a_connect_from_arriving(listening_server):
    if "namespace" not in sandbox_isolation():
        pytest.skip("network namespaces are not allowed here; the audit hook is the only guard")
    port = listening_server.getsockname()[1]
    program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
    result = run_in_sandbox(program, limits=FAST, audit_hook=False)
    assert result.status == "error"
    assert "OSError" in result.detail or "ConnectionRefusedError" in result.detail
    assert not arrived(listening_server)


@pytest.mark.parametrize("spawn", ["import os\nos.system('touch {target}')",
                                   "import subprocess\nsubprocess.run(['touch', '{target}'])"])
def test_sandbox_refuses_starting_processes(tmp_path, spawn):
    target = tmp_path / "spawned.txt"
    result = run_in_sandbox(spawn.format(target=target) + "\n", limits=FAST)
    assert result.status == "forbidden"
    assert not target.exists()


def test_sandbox_tells_a_failed_assertion_from_a_syntax_error_a_missing_function_and_an_exception():
    add = "def add(a, b):\n    return a - b\n"
    failed = run_in_sandbox(add, "assert add(2, 2) == 0\nassert add(2, 3) == 5\n", "add", FAST)
    assert (failed.status, failed.detail) == ("failed", "assert add(2, 3) == 5")
    assert run_in_sandbox("def add(a, b):\n    return (\n", "", "add", FAST).status == "syntax_error"
    missing = run_in_sandbox("def plus(a, b):\n    return a + b\n", "assert add(1, 1) == 2\n", "add", FAST)
    assert missing.status == "missing_function"
    error = run_in_sandbox("def add(a, b):\n    return a / 0\n", "assert add(1, 1) == 2\n", "add", FAST)
    assert error.status == "error"
    assert error.detail == "ZeroDivisionError: division by zero at line 2 of the program, in: assert add(1, 1) == 2"
    passed = run_in_sandbox("def add(a, b):\n    return a + b\n", "assert add(2, 3) == 5\n", "add", FAST)
    assert passed.passed
    assert passed.isolation in ("network namespace + audit hook", "user and network namespace + audit hook",
                                "audit hook only")


def test_a_program_that_exits_before_its_tests_finish_does_not_pass():
    quits = "def f():\n    import os\n    os._exit(0)\n"
    assert run_in_sandbox(quits, "assert f() == 1\n", "f", FAST).status == "crashed"
    raises = "def f():\n    raise SystemExit(0)\n"
    assert run_in_sandbox(raises, "assert f() == 1\n", "f", FAST).status == "error"


def test_sandbox_limits_refuse_impossible_values():
    with pytest.raises(SlmError, match="memory_bytes = 1000"):
        run_in_sandbox("pass", limits=SandboxLimits(memory_bytes=1000))


# -- pass@k -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 1, 0.4),
    (5, 2, 2, 0.7),                   # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (10, 3, 5, 1 - 21 / 252),         # 1 - C(7,5)/C(10,5)
    (200, 1, 100, 0.5),               # 1 - C(199,100)/C(200,100) = 1 - 100/200
    (7, 0, 3, 0.0),                   # c = 0
    (7, 7, 3, 1.0),                   # c = n
    (5, 3, 3, 1.0),                   # k > n - c: every draw holds a correct sample
])
def test_pass_at_k_matches_hand_computed_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_the_binomial_formula_where_that_is_computable():
    for n in range(1, 16):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1.0 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_stays_finite_for_large_n():
    assert 0.0 < pass_at_k(10_000, 3, 100) < 1.0


@pytest.mark.parametrize("n, c, k", [(5, 2, 6), (5, 6, 1), (0, 0, 1), (5, 2, 0)])
def test_pass_at_k_refuses_impossible_counts(n, c, k):
    with pytest.raises(SlmError, match="pass_at_k"):
        pass_at_k(n, c, k)


# -- results, baselines, plot -------------------------------------------------------------------
def completions_passing(tasks, passing: set[int], n: int = 2) -> dict[str, list[str]]:
    """n completions per task: the canonical solution (once) for tasks in `passing`, wrong ones otherwise."""
    return {t.task_id: ([t.canonical_solution] if i in passing else [t.broken_solution])
            + ["    return None\n"] * (n - 1) for i, t in enumerate(tasks)}


def test_results_json_round_trips_and_the_baseline_comparison_names_improved_and_regressed_tasks(tmp_path):
    tasks = load_tasks()[:4]
    old = run_code_suite(completions_passing(tasks, {0, 1}), tasks=tasks, k=(1, 2), limits=FAST, step=100,
                         results_path=tmp_path / "old.json")
    assert load_results(tmp_path / "old.json") == json.loads(json.dumps(old))
    assert old["pass_at_k"] == {"pass@1": pytest.approx(0.25), "pass@2": pytest.approx(0.5)}
    assert [t["correct"] for t in old["tasks"]] == [1, 1, 0, 0]
    new = run_code_suite(completions_passing(tasks, {1, 2, 3}), tasks=tasks, k=(1, 2), limits=FAST, step=200,
                         baseline=tmp_path / "old.json", results_path=tmp_path / "new.json")
    comparison = new["baseline"]
    assert comparison["step"] == 100
    assert comparison["improved"] == [tasks[2].task_id, tasks[3].task_id]
    assert comparison["regressed"] == [tasks[0].task_id]
    assert comparison["pass_at_k"]["pass@1"] == pytest.approx({"baseline": 0.25, "current": 0.375, "delta": 0.125})
    assert comparison["tasks"][tasks[0].task_id]["pass@2"] == {"baseline": 1.0, "current": 0.0, "delta": -1.0}
    assert load_results(tmp_path / "new.json")["baseline"]["regressed"] == [tasks[0].task_id]


def test_baseline_comparison_lists_tasks_only_one_side_has():
    tasks = load_tasks()[:3]
    old = run_code_suite(completions_passing(tasks[:2], {0}, n=1), tasks=tasks[:2], limits=FAST)
    new = run_code_suite(completions_passing(tasks[1:], {0}, n=1), tasks=tasks[1:], limits=FAST)
    comparison = compare_results(new, old)
    assert comparison["only_in_current"] == [tasks[2].task_id]
    assert comparison["only_in_baseline"] == [tasks[0].task_id]
    assert comparison["improved"] == [tasks[1].task_id]
    assert comparison["pass_at_k"]["pass@1"] == {"baseline": 0.0, "current": 1.0, "delta": 1.0}


def test_results_record_why_each_completion_failed():
    tasks = load_tasks()[:3]
    completions = {tasks[0].task_id: ["    return (\n"], tasks[1].task_id: [""],
                   tasks[2].task_id: ["    while True:\n        pass\n"]}
    results = run_code_suite(completions, tasks=tasks, limits=FAST)
    checks = [t["completions"][0] for t in results["tasks"]]
    assert [(c["parses"], c["defines_function"], c["status"]) for c in checks] == [
        (False, False, "syntax_error"), (True, False, "missing_function"), (True, True, "timeout")]
    assert results["summary"]["status_counts"] == {"syntax_error": 1, "missing_function": 1, "timeout": 1}
    assert results["pass_at_k"] == {"pass@1": 0.0}


def test_run_code_suite_refuses_missing_completions_and_k_above_n():
    tasks = load_tasks()[:2]
    with pytest.raises(SlmError, match=f"no completions for task '{tasks[1].task_id}'"):
        run_code_suite({tasks[0].task_id: ["    return 1\n"]}, tasks=tasks)
    with pytest.raises(SlmError, match="k = \\[1, 5\\]: each k must be between 1 and n = 1"):
        run_code_suite(completions_passing(tasks, set(), n=1), tasks=tasks, k=(1, 5))


def test_load_results_refuses_a_file_that_is_not_code_results(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"format": "slmkit-run"}')
    with pytest.raises(SlmError, match="not a code-suite results file"):
        load_results(path)


def test_plot_of_pass_at_k_across_checkpoints_is_a_png(tmp_path):
    tasks = load_tasks()[:2]
    results = [run_code_suite(completions_passing(tasks, passing, n=2), tasks=tasks, k=(1, 2), limits=FAST,
                              step=step) for step, passing in ((10, set()), (20, {0}), (30, {0, 1}))]
    path = plot_pass_at_k(results, tmp_path / "plots" / "code.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_pass_at_k([], tmp_path / "none.png") is None


# -- a whole run on a tiny random model ---------------------------------------------------------
def tiny_model_and_tokenizer(tasks):
    chars = set(string.printable) | {ch for t in tasks for ch in t.prompt}
    tokenizer = CharTokenizer(chars, unknown=True)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, n_layers=2, d_model=32, n_heads=4, d_mlp=64,
                         context_length=512, init_std=0.35)
    return Transformer(config).eval(), tokenizer


def test_run_code_suite_on_a_tiny_random_model_completes_and_reports_parse_and_define_failures(tmp_path):
    tasks = load_tasks()[:4]
    model, tokenizer = tiny_model_and_tokenizer(tasks)
    stages = set()
    results = run_code_suite(model, tokenizer, tasks=tasks, n=2, k=(1, 2), max_new_tokens=24, seed=1,
                             limits=FAST, model_name="tiny", results_path=tmp_path / "code.json",
                             on_progress=lambda stage, done, total: stages.add(stage))
    assert results["model"] == "tiny" and results["n"] == 2 and results["k"] == [1, 2]
    assert results["pass_at_k"] == {"pass@1": 0.0, "pass@2": 0.0}
    assert results["generation"]["temperature"] == 0.8 and results["generation"]["seed"] == 1
    assert results["generation"]["stop_strings"] == list(STOP_STRINGS)
    checks = [c for t in results["tasks"] for c in t["completions"]]
    assert len(checks) == 8 and not any(c["passed"] for c in checks)
    for check in checks:  # random text fails at the first hurdle it cannot clear, and says which
        expected = "syntax_error" if not check["parses"] else "missing_function" if not check["defines_function"] \
            else check["status"]
        assert check["status"] == expected
    assert sum(results["summary"]["status_counts"].values()) == 8
    assert "generate" in stages
    assert load_results(tmp_path / "code.json")["tasks"][0]["completions"][0]["completion"] == checks[0]["completion"]


def test_one_completion_per_task_is_greedy_decoding_with_the_stop_strings():
    from slmkit.generate import generate

    tasks = load_tasks()[:2]
    model, tokenizer = tiny_model_and_tokenizer(tasks)
    results = run_code_suite(model, tokenizer, tasks=tasks, max_new_tokens=40, limits=FAST)
    assert results["generation"]["temperature"] == 0.0
    for task, result in zip(tasks, results["tasks"]):
        expected = generate(model, task.prompt, temperature=0.0, max_new_tokens=40, tokenizer=tokenizer,
                            stop_strings=list(STOP_STRINGS)).text
        assert result["completions"][0]["completion"] == expected


def test_run_code_suite_on_checkpoints_writes_results_per_checkpoint_and_a_plot(tmp_path):
    tasks = load_tasks()[:2]
    model, tokenizer = tiny_model_and_tokenizer(tasks)
    run = tmp_path / "run"
    tokenizer.save(run / "tokenizer")
    for step in (5, 10):
        save_model(model, run / "checkpoints" / f"step-{step}", extra={"step": step})
    results = run_code_suite_on_checkpoints(run, tasks=tasks, max_new_tokens=8, limits=FAST)
    assert [r["step"] for r in results] == [5, 10]
    assert load_results(run / "eval" / "code-step-10.json")["checkpoint"] == str(run / "checkpoints" / "step-10")
    assert (run / "eval" / "code-pass-at-k.png").read_bytes()[:4] == b"\x89PNG"
