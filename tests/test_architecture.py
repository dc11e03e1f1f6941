"""Imports run one way: cli, then the API, then the stages, then model/data/tokenizer, then utils/errors.

Every module under slmkit/ is parsed with `ast` (imports inside functions count too, and so do
`importlib.import_module("slmkit....")` calls) and each import is checked against the layers below. A
failure names the importing module, the imported one and both layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import slmkit

PACKAGE_DIR = Path(slmkit.__file__).parent

# Highest first. A module belongs to the longest area name that is a prefix of its dotted name; the
# package root "slmkit" holds only slmkit/__init__.py, so a new top-level module must be placed here.
LAYERS: dict[str, int] = {
    **dict.fromkeys(("slmkit.cli", "slmkit.__main__"), 5),
    **dict.fromkeys(("slmkit.api", "slmkit.pipeline", "slmkit.recipe"), 4),  # pipeline: the API's chained stages
    **dict.fromkeys(("slmkit.train", "slmkit.generate", "slmkit.eval", "slmkit.interop", "slmkit.report",
                     "slmkit.finetune", "slmkit.quantize", "slmkit.serve"), 3),
    **dict.fromkeys(("slmkit.model", "slmkit.data", "slmkit.tokenizer", "slmkit.config", "slmkit.rundir"), 2),
    **dict.fromkeys(("slmkit.utils", "slmkit.errors", "slmkit.runtime", "slmkit"), 1),
}
LAYER_NAMES = {5: "cli", 4: "api", 3: "stages", 2: "model/data/tokenizer", 1: "utils/errors"}

# Same-layer imports are allowed, except these (importing area, imported area).
FORBIDDEN = {
    ("slmkit.train", "slmkit.report"): "training writes metrics; the report reads them afterwards",
    ("slmkit.train", "slmkit.generate"): "training must not depend on the decoding engine",
    ("slmkit.generate", "slmkit.train"): "decoding must not depend on the trainer",
    ("slmkit.model", "slmkit.data"): "the model knows nothing of datasets",
    ("slmkit.model", "slmkit.tokenizer"): "the model works on token ids, not text",
}

# Upward imports allowed by name: (importing module, imported module).
EXCEPTIONS = {
    ("slmkit", "slmkit.api"): "slmkit.load is a lazy shortcut to slmkit.api.load (import slmkit stays light)",
}

# What the CLI may import: it reaches the stages only through the API.
CLI_MAY_IMPORT = ("slmkit.cli", "slmkit.api", "slmkit.utils", "slmkit.errors", "slmkit")


def area_of(module: str) -> str | None:
    """The LAYERS key a dotted module name falls under, or None when it is not in slmkit."""
    best = None
    for area in LAYERS:
        if (module == area or (area != "slmkit" and module.startswith(area + "."))) and (best is None or len(area) > len(best)):
            best = area
    return best


def module_name(path: Path, root: Path = PACKAGE_DIR) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_sources(root: Path = PACKAGE_DIR) -> dict[str, tuple[str, bool]]:
    """{module name: (source, is_package)} for every .py file under slmkit/."""
    return {module_name(path, root): (path.read_text(encoding="utf-8"), path.name == "__init__.py")
            for path in sorted(root.rglob("*.py"))}


def imports_of(module: str, source: str, is_package: bool, known: set[str]) -> list[tuple[str, int]]:
    """(imported slmkit module, line) for every import in `source`, at any depth."""
    found = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                # `from slmkit import api` imports the module slmkit.api, not a name of slmkit.
                submodule = f"{base}.{alias.name}"
                found.append((submodule if submodule in known else base, node.lineno))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            found.append((node.args[0].value, node.lineno))
    found = list(dict.fromkeys(found))  # `from x import a, b` is one import
    return [(name, line) for name, line in found if name == "slmkit" or name.startswith("slmkit.")]


def layering_violations(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """One line per import that goes up a layer, crosses a forbidden pair or falls outside every layer."""
    known = set(sources)
    problems = []
    for module, (source, is_package) in sorted(sources.items()):
        area = area_of(module)
        if area is None:
            problems.append(f"{module}: in no layer; add its package to LAYERS in tests/test_architecture.py")
            continue
        for imported, line in imports_of(module, source, is_package, known):
            target = area_of(imported)
            if target is None or (module, imported) in EXCEPTIONS:
                continue
            where = f"{module} (line {line}, layer {LAYERS[area]} {LAYER_NAMES[LAYERS[area]]})"
            what = f"{imported} (layer {LAYERS[target]} {LAYER_NAMES[LAYERS[target]]})"
            if LAYERS[target] > LAYERS[area]:
                problems.append(f"{where} imports {what} from a higher layer")
            elif (area, target) in FORBIDDEN:
                problems.append(f"{where} imports {what}: forbidden, {FORBIDDEN[area, target]}")
    return problems


def cli_violations(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """One line per CLI import of something other than the API, the CLI itself, utils or errors."""
    known = set(sources)
    problems = []
    for module, (source, is_package) in sorted(sources.items()):
        if area_of(module) != "slmkit.cli":
            continue
        for imported, line in imports_of(module, source, is_package, known):
            if area_of(imported) not in CLI_MAY_IMPORT:
                problems.append(f"{module} (line {line}) imports {imported}; the CLI calls only slmkit.api")
    return problems


def test_no_module_imports_from_a_higher_layer():
    problems = layering_violations(package_sources())
    assert not problems, "layering violations:\n" + "\n".join(problems)


def test_the_cli_reaches_the_stages_only_through_the_api():
    problems = cli_violations(package_sources())
    assert not problems, "\n".join(problems)


def test_every_module_is_checked():
    sources = package_sources()
    assert {"slmkit", "slmkit.api", "slmkit.cli", "slmkit.model.transformer", "slmkit.train.trainer"} <= set(sources)
    assert all(area_of(module) for module in sources)


def test_upward_and_forbidden_imports_are_reported_wherever_they_hide():
    """Negative control: fake modules importing upward (at top level, inside a function, relatively,
    through `from package import module` and importlib) are each reported; allowed ones are not."""
    fake = {
        "slmkit.api": ("", False),
        "slmkit.train": ("", True),
        "slmkit.report": ("", True),
        "slmkit.generate": ("", True),
        "slmkit.generate.engine": ("", False),
        "slmkit.model": ("", True),
        "slmkit.model.transformer": ("import torch\nfrom slmkit.generate.engine import sample\n", False),
        "slmkit.model.layers": ("def f():\n    from ..generate import engine\n", False),
        "slmkit.model.kv_cache": ("from slmkit.model import layers\nfrom slmkit.errors import SlmError\n", False),
        "slmkit.train.trainer": ("import slmkit.report\n", False),
        "slmkit.train.loss": ("from slmkit.model import transformer\nfrom slmkit import api\n", False),
        "slmkit.generate.api": ("import importlib\nimportlib.import_module('slmkit.cli.model')\n", False),
        "slmkit": ("def load():\n    from slmkit.api import load\n", True),
        "slmkit.utils": ("from slmkit import rundir\n", False),
        "slmkit.rundir": ("", False),
        "slmkit.cli": ("", True),
        "slmkit.cli.model": ("from slmkit.model.stats import describe\nfrom slmkit.api import load\n", False),
        "slmkit.extra": ("", False),
    }
    problems = layering_violations(fake)
    expected = [
        ("slmkit.extra:", "in no layer"),
        ("slmkit.generate.api (line 2, layer 3 stages)", "slmkit.cli.model (layer 5 cli) from a higher layer"),
        ("slmkit.model.layers (line 2, layer 2", "slmkit.generate.engine (layer 3 stages) from a higher"),
        ("slmkit.model.transformer (line 2, layer 2", "slmkit.generate.engine (layer 3 stages) from a higher"),
        ("slmkit.train.loss (line 2, layer 3 stages)", "slmkit.api (layer 4 api) from a higher layer"),
        ("slmkit.train.trainer (line 1, layer 3 stages)", "slmkit.report (layer 3 stages): forbidden"),
        ("slmkit.utils (line 1, layer 1", "slmkit.rundir (layer 2 model/data/tokenizer) from a higher layer"),
    ]
    assert len(problems) == len(expected), "\n".join(problems)
    for problem, (where, what) in zip(problems, expected):
        assert problem.startswith(where) and what in problem, problem
    assert cli_violations(fake) == [
        "slmkit.cli.model (line 1) imports slmkit.model.stats; the CLI calls only slmkit.api"]
