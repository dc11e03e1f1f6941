"""Commands that run no model never import PyTorch (about 280 MB and a second or two of start-up).

`slm prepare`, `slm tokenizer`, `slm presets`, `slm info`, `slm --help` and `slm --version` are run in
a fresh interpreter with PYTHONPROFILEIMPORTTIME set, which makes it (and every process it forks or
spawns: prepare's tokenizing workers) log each module it imports to stderr; no log may name torch.
Negative controls: `slm train --help` is caught importing torch, and an import in a forked worker does
show in the log. The lazy API (`slmkit.api`, PEP 562) still resolves every name it exports, to the same
object as its module's, and its list of lazy names agrees with its TYPE_CHECKING imports.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_text

from slmkit import api
from slmkit.cli import build_parser, command_name

API_SOURCE = Path(api.__file__)
LOGGING_IMPORTS = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}  # -X importtime, inherited by child processes


def run_logging_imports(*argv: str, cwd: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `python -m slmkit ARGV` (as `slm ARGV`) and return it with the modules any of its processes
    imported, read from the import-time log on stderr."""
    done = subprocess.run([sys.executable, "-m", "slmkit", *argv], cwd=cwd, capture_output=True, text=True,
                          env=LOGGING_IMPORTS, timeout=300)
    return done, imported_modules(done.stderr)


def imported_modules(stderr: str) -> set[str]:
    """The module names of the `import time: ... | module` lines of a -X importtime log."""
    return {match.group(1) for match in re.finditer(r"^import time:[^|]*\|[^|]*\|\s*(\S+)\s*$", stderr, re.M)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A folder of 12 small distinct text documents."""
    folder = tmp_path_factory.mktemp("lazy") / "corpus"
    folder.mkdir()
    for i in range(12):
        (folder / f"doc{i:02d}.txt").write_text(make_text(i, words=200), encoding="utf-8")
    return folder


def test_slm_prepare_with_workers_never_imports_torch(corpus, tmp_path):
    done, modules = run_logging_imports("prepare", str(corpus), "--tokenizer", "char", "--out", "ds",
                                        "--workers", "2", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert meta["machine"]["workers"] == 2  # the workers ran, so their imports are in the log too
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 12
    assert "slmkit.data.prepare" in modules
    assert "torch" not in modules


@pytest.mark.parametrize("argv", [
    ("--help",), ("--version",), ("presets",), ("info", "--preset", "nano"), ("prepare", "--help"),
    ("tokenizer", "train", "--help"), ("data", "--help"),
])
def test_commands_that_run_no_model_never_import_torch(argv, tmp_path):
    done, modules = run_logging_imports(*argv, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "slmkit.cli" in modules
    assert "torch" not in modules, f"slm {' '.join(argv)} imported torch"


def test_slm_tokenizer_train_and_info_never_import_torch(corpus, tmp_path):
    done, modules = run_logging_imports("tokenizer", "train", str(corpus), "--tokenizer", "bpe:300", "--out", "tok",
                                        cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trained bpe" in done.stdout
    info, info_modules = run_logging_imports("tokenizer", "info", "tok", "--text", "the cat", cwd=tmp_path)
    assert info.returncode == 0, info.stderr[-2000:]
    assert "vocab 300" in info.stdout
    assert "torch" not in modules | info_modules


def test_slm_train_help_is_caught_importing_torch(tmp_path):
    """Negative control: the check sees torch where a command's flags need it."""
    done, modules = run_logging_imports("train", "--help", cwd=tmp_path)
    assert done.returncode == 0 and "--preset" in done.stdout
    assert "torch" in modules


def test_the_import_log_includes_imports_made_in_forked_workers(tmp_path):
    """Negative control for the workers: a module first imported in a forked pool worker is logged."""
    script = ("import multiprocessing, sys\n"
              "def work(_):\n    import colorsys\n    return 'colorsys' in sys.modules\n"
              "if __name__ == '__main__':\n"
              "    with multiprocessing.get_context('fork').Pool(1) as pool:\n"
              "        assert pool.map(work, [0]) == [True]\n"
              "    assert 'colorsys' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=LOGGING_IMPORTS, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "colorsys" in imported_modules(done.stderr)


def test_every_name_the_api_exports_resolves_to_its_modules_object():
    for name in api.__all__:
        assert hasattr(api, name), name
    for name, module in api.LAZY_NAMES.items():
        assert getattr(api, name) is getattr(importlib.import_module(module), api.RENAMED.get(name, name)), name
    assert api.code_self_test is importlib.import_module("slmkit.eval.code").self_test
    assert api.DTYPES["bfloat16"] is importlib.import_module("torch").bfloat16
    assert api.GENERATION_PRESETS == ("creative", "coherent", "deterministic", "greedy")
    assert {"prepare", "train", "DTYPES"} <= set(dir(api))
    with pytest.raises(AttributeError, match="no_such_name"):
        api.no_such_name  # noqa: B018


def test_the_api_lazy_names_match_its_type_checking_imports():
    """What type checkers see (the TYPE_CHECKING imports) is what the API resolves at run time."""
    tree = ast.parse(API_SOURCE.read_text(encoding="utf-8"))
    declared = {}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for statement in node.body:
                if isinstance(statement, ast.ImportFrom):
                    for alias in statement.names:
                        declared[alias.asname or alias.name] = (statement.module, alias.name)
    lazy = {name: (module, api.RENAMED.get(name, name)) for name, module in api.LAZY_NAMES.items()}
    assert declared == lazy
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert set(api.__all__) <= set(lazy) | set(api.COMPUTED_NAMES) | defined


def test_the_command_is_the_first_word_that_is_not_a_flag():
    assert command_name(["prepare", "a.txt", "--out", "x"]) == "prepare"
    assert command_name(["-h", "train"]) == "train"
    assert command_name(["--version"]) == ""
    assert command_name([]) == ""


def _subparsers(parser):
    return parser._subparsers._group_actions[0].choices


def test_slm_help_is_the_same_without_the_commands_arguments():
    assert build_parser("").format_help() == build_parser().format_help()
    assert list(_subparsers(build_parser(""))) == list(_subparsers(build_parser()))


def test_each_command_built_alone_has_the_same_flags_and_help_as_in_the_full_parser():
    full = _subparsers(build_parser())
    for name, parser in full.items():
        alone = _subparsers(build_parser(name))
        assert alone[name].format_help() == parser.format_help(), name
    # Built for prepare, train's parser has no flags: the arguments really are left out.
    train_alone = _subparsers(build_parser("prepare"))["train"]
    assert "--preset" not in train_alone.format_help() and "--preset" in full["train"].format_help()
