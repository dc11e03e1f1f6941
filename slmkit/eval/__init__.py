"""Evaluation stages. The code-generation suite (`slmkit.eval.code`): Python tasks with hidden tests,
completions judged in a sandbox (`slmkit.eval.sandbox`), pass@k, results JSON, baselines and plots.

    from slmkit.eval import run_code_suite, self_test
    results = run_code_suite(model, n=1, results_path="runs/tiny/eval/code.json")
    print(results["pass_at_k"])

Importing this package stays light: torch and the generation engine load when a model is evaluated.
"""

from slmkit.eval.code import (
    CodeTask,
    check_completions,
    compare_results,
    generate_completions,
    load_results,
    load_tasks,
    pass_at_k,
    plot_pass_at_k,
    run_code_suite,
    run_code_suite_on_checkpoints,
    self_test,
    write_results,
)
from slmkit.eval.sandbox import SandboxLimits, SandboxResult, run_in_sandbox, sandbox_isolation

__all__ = ["CodeTask", "SandboxLimits", "SandboxResult", "check_completions", "compare_results",
           "generate_completions", "load_results", "load_tasks", "pass_at_k", "plot_pass_at_k", "run_code_suite",
           "run_code_suite_on_checkpoints", "run_in_sandbox", "sandbox_isolation", "self_test", "write_results"]
