"""Recipes: the runs users came from, one TOML file each, run end to end by `slm run RECIPE`.

A recipe names its data (sources with weights, a tokenizer, other `prepare` options), a model preset
(with field overrides), training settings for one GPU, a [smoke] table that shrinks everything for a
CPU run of seconds, and the steps after training: [eval] (always), [compare], [code], [export].

    from slmkit.recipe import run_recipe
    result = run_recipe("recipes/tinystories-gemma3.toml")                  # on the real data, a GPU
    run_recipe("recipes/tinystories-gemma3.toml", smoke=True, sample="samples/")   # CPU, no network

`run_recipe` chains the stages as `slmkit.pipeline` does: prepare -> train (its samples and report)
-> evaluate the validation split -> compare / code suite / export, everything under one output
directory (see `run_recipe`). The recipe files live in the checkout's recipes/ folder (docs/recipes.md).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from slmkit.config import load_preset
from slmkit.data import PrepareOptions, prepare
from slmkit.data.hub import hub_reachable, offline_mode
from slmkit.data.readers import TABLE_EXTENSIONS
from slmkit.data.sources import parse_weight, resolve_source
from slmkit.errors import SlmError
from slmkit.eval.code import run_code_suite
from slmkit.eval.compare import CompareReport, compare_models
from slmkit.eval.perplexity import EvalReport, evaluate_models
from slmkit.generate import model_tokenizer
from slmkit.interop.hf import export_hf
from slmkit.model.checkpoint import load_model
from slmkit.pipeline import train
from slmkit.rundir import resolve_checkpoint_dir
from slmkit.train import TrainResult, free_run_dir
from slmkit.utils import option, write_json_atomic, write_text_atomic

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"  # a checkout's recipes/ folder
# The keys each table of a recipe may hold; [model] and [train] take any model/train field (checked
# when the run is resolved, with the nearest name).
DATA_KEYS = ("sources", "tokenizer") + tuple(f.name for f in dataclasses.fields(PrepareOptions)
                                             if f.name not in ("tokenizer", "force", "progress"))
SOURCE_KEYS = ("spec", "weight", "sample")
STEP_KEYS = {
    "eval": ("context", "stride", "batch_size", "max_tokens", "precision", "device"),
    "compare": ("models", "prompts", "text", "max_new_tokens", "seed", "temperature", "top_k", "device"),
    "code": ("n", "k", "max_new_tokens", "seed"),
    "export": ("enabled",),
}
SMOKE_KEYS = ("data", "model", "train", *STEP_KEYS)  # the tables [smoke] may change
TOP_KEYS = ("name", "description", "smoke", *SMOKE_KEYS)


@dataclass(frozen=True)
class RecipeSource:
    """One data source of a recipe: a source spec as `slm prepare` takes it (a built-in, hf:NAME, a path),
    its weight (documents repeated `weight` times; 0.5 keeps a deterministic half), and `sample`: the
    file under --sample DIR that stands in for it, in the source's own format (parquet or jsonl)."""

    spec: str
    weight: float = 1.0
    sample: str | None = None

    def weighted(self, spec: str | None = None) -> str:
        """The spec with its weight as `prepare` reads it: SPEC@WEIGHT (plain SPEC at weight 1)."""
        spec = self.spec if spec is None else spec
        return spec if self.weight == 1 else f"{spec}@{self.weight:g}"


@dataclass(frozen=True)
class Recipe:
    """A recipe file, read and checked (with its [smoke] table merged in when `smoke`)."""

    name: str
    description: str
    path: Path
    sources: tuple[RecipeSource, ...]
    tokenizer: str
    prepare_options: dict  # the other PrepareOptions fields of [data]
    preset: str
    model: dict  # model fields over the preset's
    train: dict
    eval: dict
    compare: dict | None
    code: dict | None
    export: dict | None
    smoke: bool = False

    def overrides(self, vocab_size: int | None = None) -> list[str]:
        """The [model] and [train] fields as `--set` overrides; `vocab_size` (the dataset's) first, so
        the model follows the recipe's tokenizer unless [model] names a size itself."""
        settings = [] if vocab_size is None else [f"model.vocab_size={vocab_size}"]
        settings += [f"model.{key}={_toml_value(value)}" for key, value in self.model.items()]
        return settings + [f"train.{key}={_toml_value(value)}" for key, value in self.train.items()]


@dataclass
class RecipeOptions:
    """The inputs of `run_recipe` that `slm run` takes as flags."""

    smoke: bool = option(False, "the recipe's CPU smoke mode: its [smoke] table over the rest (a tiny model, "
                                "a few steps, a small sample of each source)")
    sample: str | None = option(None, "a folder of local files standing in for the remote sources (each "
                                      "source's `sample` file, in the real source's format), so nothing is "
                                      "downloaded", metavar="DIR")
    out: str | None = option(None, "the output directory (default runs/<recipe name>, -smoke in smoke mode; "
                                   "a free runs/<name>-N when taken)", metavar="DIR")
    quiet: bool = option(False, "print only errors and the final summary")


@dataclass
class RecipeResult:
    """What `run_recipe` did: the directories, each stage's result, notes (steps skipped, and why) and
    the seconds each stage took."""

    recipe: Recipe
    out_dir: Path
    data_dir: Path
    run_dir: Path
    train: TrainResult
    eval: EvalReport | None = None
    compare: CompareReport | None = None
    code: dict | None = None
    export_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def summary_path(self) -> Path:
        return self.out_dir / "recipe.md"

    def to_dict(self) -> dict:
        figures = self.eval.results[0] if self.eval and self.eval.results else None
        return {
            "recipe": self.recipe.name, "file": str(self.recipe.path), "smoke": self.recipe.smoke,
            "out": str(self.out_dir), "data": str(self.data_dir), "run": str(self.run_dir),
            "train": {"step": self.train.step, "tokens": self.train.tokens, "stop_reason": self.train.stop_reason,
                      "interrupted": self.train.interrupted, "final_eval": self.train.final_eval},
            "eval": {"val_loss": figures.loss, "val_bpb": figures.bits_per_byte, "tokens": figures.tokens}
            if figures else None,
            "compare": {"markdown": str(self.compare.markdown_path),
                        "bits_per_byte": {f.model: f.bits_per_byte for f in self.compare.figures}}
            if self.compare else None,
            "code": {"results": str(self.out_dir / "code_suite.json"), "pass_at_k": self.code["pass_at_k"]}
            if self.code else None,
            "export": str(self.export_dir) if self.export_dir else None,
            "notes": self.notes, "seconds": {key: round(value, 2) for key, value in self.seconds.items()},
        }

    def markdown(self) -> str:
        record = self.to_dict()
        lines = [f"# Recipe {self.recipe.name}" + (" (smoke mode)" if self.recipe.smoke else ""), "",
                 self.recipe.description, "",
                 f"- recipe file: `{self.recipe.path}`", f"- data: `{self.data_dir}`",
                 f"- run: `{self.run_dir}` (report: `{self.run_dir / 'report.md'}`)",
                 f"- trained: {self.train.step:,} steps, {self.train.tokens:,} tokens ({self.train.stop_reason})"]
        if record["eval"]:
            bpb = record["eval"]["val_bpb"]
            lines.append(f"- validation: loss {record['eval']['val_loss']:.4f} nats per token"
                         + (f", {bpb:.4f} bits per byte" if bpb is not None else "") + " (`eval.md`)")
        if self.compare:
            lines.append(f"- compared: `{self.compare.markdown_path}`")
        if self.code:
            scores = ", ".join(f"{key} {value:.3f}" for key, value in self.code["pass_at_k"].items())
            lines.append(f"- code suite: {scores} (`code_suite.json`)")
        if self.export_dir:
            lines.append(f"- Hugging Face export: `{self.export_dir}`")
        lines += [f"- note: {note}" for note in self.notes]
        lines += ["", "| stage | seconds |", "|---|---:|"]
        lines += [f"| {stage} | {seconds:,.1f} |" for stage, seconds in self.seconds.items()]
        return "\n".join(lines) + "\n"


# -- reading recipes --------------------------------------------------------------------------------
def recipe_names(directory: Path = RECIPE_DIR) -> list[str]:
    """The recipes shipped in the checkout's recipes/ folder, by name."""
    return sorted(path.stem for path in directory.glob("*.toml"))


def find_recipe(name_or_path: str | os.PathLike) -> Path:
    """A recipe file: the path given, else recipes/NAME.toml here or in the checkout. Raises SlmError
    naming the shipped recipes when there is none."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    for folder in (Path("recipes"), RECIPE_DIR):
        candidate = folder / f"{path.name.removesuffix('.toml')}.toml"
        if candidate.is_file():
            return candidate
    names = recipe_names()
    close = difflib.get_close_matches(path.stem, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise SlmError(f"recipe {str(name_or_path)!r} not found{hint}: give a recipe file, or one of "
                   f"{', '.join(names) or 'the recipes in recipes/'}")


def load_recipe(name_or_path: str | os.PathLike, smoke: bool = False) -> Recipe:
    """Read and check a recipe file; with `smoke`, its [smoke] table merged over the rest (tables merge
    key by key, values replace). Raises SlmError for a file that is not valid TOML, an unknown table or
    key (with the nearest name), no sources, or an unknown preset."""
    path = find_recipe(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise SlmError(f"recipe {path} is not valid TOML: {error}") from None
    except UnicodeDecodeError:
        raise SlmError(f"recipe {path} is not UTF-8 text") from None
    _check_keys(raw, TOP_KEYS, str(path))
    smoke_table = raw.pop("smoke", {})
    if not isinstance(smoke_table, dict):
        raise SlmError(f"recipe {path}: [smoke] must be a table of tables ([smoke.train] and so on)")
    _check_keys(smoke_table, SMOKE_KEYS, f"recipe {path} [smoke]")
    data = _merged(raw, smoke_table, smoke)
    where = f"recipe {path}" + (" (smoke mode)" if smoke else "")
    data_table = _table(data, "data", where)
    _check_keys(data_table, DATA_KEYS, f"{where} [data]")
    sources = tuple(_source(entry, where) for entry in data_table.get("sources") or ())
    if not sources:
        raise SlmError(f"{where}: [data] sources is empty; list sources as {{spec = \"tinystories\", weight = 1}}")
    model = dict(_table(data, "model", where))
    preset = model.pop("preset", None)
    if not isinstance(preset, str):
        raise SlmError(f"{where}: [model] needs preset = \"NAME\" (see `slm presets`)")
    load_preset(preset)  # SlmError naming the presets when unknown
    steps = {}
    for step, keys in STEP_KEYS.items():
        table = data.get(step)
        if table is not None:
            table = _table(data, step, where)
            _check_keys(table, keys, f"{where} [{step}]")
        steps[step] = table
    if steps["export"] is not None and steps["export"].get("enabled") is False:
        steps["export"] = None
    if steps["compare"] is not None and not isinstance(steps["compare"].get("models"), list):
        raise SlmError(f"{where}: [compare] needs models = [\"gpt2\", ...] (Hugging Face names or model folders)")
    return Recipe(
        name=str(data.get("name") or path.stem), description=str(data.get("description", "")), path=path,
        sources=sources, tokenizer=str(data_table.get("tokenizer", PrepareOptions.tokenizer)),
        prepare_options={k: v for k, v in data_table.items() if k not in ("sources", "tokenizer")},
        preset=preset, model=model, train=dict(_table(data, "train", where)), eval=steps["eval"] or {},
        compare=steps["compare"], code=steps["code"], export=steps["export"], smoke=smoke)


def _merged(base: dict, over: dict, apply: bool) -> dict:
    if not apply:
        return base
    merged = dict(base)
    for key, value in over.items():
        merged[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return merged


def _table(data: dict, key: str, where: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise SlmError(f"{where}: [{key}] must be a table of settings, not {value!r}")
    return value


def _check_keys(table: dict, known: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SlmError(f"unknown key {key!r} in {where}{hint}; known: {', '.join(known)}")


def _source(entry, where: str) -> RecipeSource:
    if isinstance(entry, str):
        spec, weight = parse_weight(entry)
        return RecipeSource(spec, weight)
    if not isinstance(entry, dict) or not isinstance(entry.get("spec"), str):
        raise SlmError(f"{where}: each source is a spec string or {{spec = \"...\", weight = 1, sample = \"...\"}}, "
                       f"not {entry!r}")
    _check_keys(entry, SOURCE_KEYS, f"{where} source {entry['spec']!r}")
    weight = entry.get("weight", 1.0)
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
        raise SlmError(f"{where}: source {entry['spec']!r} weight {weight!r} must be a number >= 0")
    return RecipeSource(entry["spec"], float(weight), entry.get("sample"))


def _toml_value(value) -> str:
    """A recipe value written back as the TOML an override reads."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return repr(value)


# -- the sources a run reads ------------------------------------------------------------------------
def source_specs(recipe: Recipe, sample: str | os.PathLike | None = None) -> list[str]:
    """The weighted source specs `prepare` reads: each remote source (the Hugging Face Hub) replaced by
    its sample file under `sample` when given. Without `sample`, SlmError at once when a remote source
    cannot be reached, naming it and --sample."""
    specs, probed, reason = [], False, None
    for source in recipe.sources:
        remote = _is_remote(source.spec, recipe)
        if remote and sample is not None:
            specs.append(source.weighted(str(_sample_file(source, Path(sample), recipe))))
            continue
        if remote and not offline_mode():
            if not probed:  # one probe (up to 3 s) for all the sources
                probed, reason = True, hub_reachable()
            if reason is not None:
                raise SlmError(f"recipe {recipe.name}: source {source.spec!r} is on the Hugging Face Hub, which is "
                               f"unreachable ({reason}); run with --sample DIR (local files standing in for the "
                               f"remote sources: {_sample_names(recipe)})")
        specs.append(source.weighted())
    return specs


def _is_remote(spec: str, recipe: Recipe) -> bool:
    options = {k: v for k, v in recipe.prepare_options.items() if k in PrepareOptions.SOURCE_FIELDS}
    return resolve_source(spec, PrepareOptions(**options)).kind == "hf"


def _sample_names(recipe: Recipe) -> str:
    return ", ".join(f"{s.sample} for {s.spec}" for s in recipe.sources if s.sample) or "none named in the recipe"


def _sample_file(source: RecipeSource, folder: Path, recipe: Recipe) -> Path:
    """The file under `folder` standing in for `source`: its `sample` name, or the same name with
    another table extension (.jsonl for .parquet, say, where pyarrow is missing)."""
    if not source.sample:
        raise SlmError(f"recipe {recipe.name}: source {source.spec!r} names no sample file, so --sample cannot "
                       f"stand in for it; add sample = \"NAME.parquet\" to it in {recipe.path}")
    wanted = folder / source.sample
    candidates = [wanted] + [wanted.with_suffix(ext) for ext in TABLE_EXTENSIONS if ext != wanted.suffix]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise SlmError(f"recipe {recipe.name}: no sample for source {source.spec!r} in {folder}: expected "
                   f"{wanted} (a {wanted.suffix or 'local'} file like the real source's rows, or the same name "
                   f"as {' / '.join(TABLE_EXTENSIONS)})")


# -- running ------------------------------------------------------------------------------------------
def run_recipe(recipe: str | os.PathLike | Recipe, *, smoke: bool = False, sample: str | os.PathLike | None = None,
               out: str | os.PathLike | None = None, quiet: bool = False) -> RecipeResult:
    """Run a recipe end to end: prepare its data, train its model (samples.md and report.md in the run
    directory), evaluate the best checkpoint on the validation split, then the recipe's own steps:
    [compare] (with reference models from local folders or the local Hugging Face cache; a reference
    that is not there is skipped with a note), [code] (the sandboxed code suite), [export] (a Hugging
    Face model folder).

    Everything goes under `out` (default runs/<recipe name>, -smoke in smoke mode; runs/<name>-2 and so
    on when taken): data/ (the dataset), run/ (the run directory), eval.md and eval.json, compare/,
    code_suite.json, hf/, and recipe.md and recipe.json (what was done, figures, notes, seconds per
    stage). `smoke`: the recipe's [smoke] table over the rest. `sample`: a folder whose files stand in
    for the remote sources. Raises SlmError before anything is written for a bad recipe, an unreachable
    source, a missing sample, or an `out` that already holds a run.
    """
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, smoke=smoke)
    say = (lambda text: None) if quiet else print
    specs = source_specs(recipe, sample)
    out_dir = _out_dir(recipe, out)
    data_dir, run_dir = out_dir / "data", out_dir / "run"
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    say(f"[1/4] preparing {', '.join(specs)} with {recipe.tokenizer} into {data_dir}")
    dataset = prepare(specs, data_dir, recipe.tokenizer, progress=not quiet, **recipe.prepare_options)
    say(dataset.summary())
    seconds["prepare"] = time.perf_counter() - started

    say(f"\n[2/4] training {recipe.preset} into {run_dir}")
    if dataset.vocab_size != load_preset(recipe.preset).sections["model"].get("vocab_size") \
            and "vocab_size" not in recipe.model:
        say(f"the model's vocabulary follows the dataset's tokenizer: {dataset.vocab_size:,} tokens")
    mark = time.perf_counter()
    trained = train(dataset.dir, run_dir, preset=recipe.preset, overrides=recipe.overrides(dataset.vocab_size),
                    quiet=quiet)
    seconds["train"] = time.perf_counter() - mark
    result = RecipeResult(recipe, out_dir, dataset.dir, trained.run_dir, trained, seconds=seconds)
    if trained.interrupted:
        result.notes.append(f"training was interrupted at step {trained.step:,}; the later steps were not run "
                            f"(continue with `slm train --resume {trained.run_dir}`)")
        return _finish(result, say, started)

    say("\n[3/4] evaluating the best checkpoint on the validation split")
    mark = time.perf_counter()
    result.eval = evaluate_models([str(trained.run_dir)], data=dataset.dir, split="val", progress=False,
                                  **recipe.eval)
    write_json_atomic(out_dir / "eval.json", result.eval.to_dict())
    write_text_atomic(out_dir / "eval.md", f"# {recipe.name}: validation split\n\n{result.eval.table()}\n")
    say(result.eval.table())
    seconds["eval"] = time.perf_counter() - mark

    steps = [name for name in ("compare", "code", "export") if getattr(recipe, name) is not None]
    say(f"\n[4/4] {', '.join(steps) or 'no further steps'}")
    if recipe.compare is not None:
        mark = time.perf_counter()
        result.compare = compare_with_references(recipe, trained.run_dir, out_dir / "compare", result.notes, say)
        seconds["compare"] = time.perf_counter() - mark
    if recipe.code is not None:
        mark = time.perf_counter()
        result.code = _code_suite(recipe, trained.run_dir, out_dir / "code_suite.json")
        say("code suite: " + ", ".join(f"{k} {v:.3f}" for k, v in result.code["pass_at_k"].items()))
        seconds["code"] = time.perf_counter() - mark
    if recipe.export is not None:
        mark = time.perf_counter()
        result.export_dir = export_hf(trained.run_dir, out_dir / "hf")
        say(f"exported to {result.export_dir} (transformers AutoModelForCausalLM.from_pretrained loads it)")
        seconds["export"] = time.perf_counter() - mark
    return _finish(result, say, started)


def _out_dir(recipe: Recipe, out: str | os.PathLike | None) -> Path:
    """`out` when it holds no run yet (a dataset there is reused when its inputs are the same); by
    default runs/<name>[-smoke], or the next free runs/<name>[-smoke]-N."""
    if out is None:
        return free_run_dir(Path("runs") / (recipe.name + ("-smoke" if recipe.smoke else "")))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SlmError(f"--out {out} is a file; choose a directory")
    run = out / "run"
    if run.is_dir() and any(run.iterdir()):
        raise SlmError(f"{out} already holds a run of a recipe ({run}); choose another --out, or continue its "
                       f"training with `slm train --resume {run}`")
    return out


def compare_with_references(recipe: Recipe, run_dir: str | os.PathLike, out: str | os.PathLike,
                            notes: list[str], say=print) -> CompareReport | None:
    """The recipe's [compare] step: the run beside its reference models (see `reference_model`), written
    to `out`. A reference that is not here is skipped, with a note appended to `notes`; with none left,
    nothing is compared and None is returned."""
    options = {k: v for k, v in recipe.compare.items() if k != "models"}
    references, missing = [], []
    for name in map(str, recipe.compare["models"]):
        found = reference_model(name)
        if found is None:
            missing.append(name)
        else:
            references.append(found)
    if missing:
        names = ", ".join(missing)
        notes.append(f"compare: {names} is neither a model folder nor in the local Hugging Face cache (fetch it "
                     f"with `huggingface-cli download {missing[0]}`); "
                     + ("compared without it" if references else "the comparison was skipped"))
        say(notes[-1])
    if not references:
        return None
    report = compare_models([str(run_dir), *references], out=out, **options)
    say(report.table())
    return report


def reference_model(name: str) -> str | None:
    """A model to compare with: a local model folder as given, else the snapshot of the Hugging Face
    repository `name` in the local cache (nothing is downloaded); None when neither exists."""
    if Path(name).is_dir():
        return name
    try:
        from huggingface_hub import snapshot_download
        folder = snapshot_download(name, local_files_only=True)
    except Exception:  # not installed, not cached, or not a repository name: all mean "not here"
        return None
    return folder if (Path(folder) / "config.json").is_file() else None


def _code_suite(recipe: Recipe, run_dir: Path, results_path: Path) -> dict:
    options = dict(recipe.code)
    if "k" in options:
        options["k"] = tuple(options["k"]) if isinstance(options["k"], list) else (options["k"],)
    model = load_model(resolve_checkpoint_dir(run_dir))
    return run_code_suite(model, model_tokenizer(model, required=True), results_path=results_path, **options)


def _finish(result: RecipeResult, say, started: float) -> RecipeResult:
    result.seconds["total"] = time.perf_counter() - started
    write_json_atomic(result.out_dir / "recipe.json", result.to_dict())
    write_text_atomic(result.summary_path, result.markdown())
    for note in result.notes:
        say(f"note: {note}")
    say(f"\nrecipe {result.recipe.name} done in {result.seconds['total']:,.0f} s: {result.summary_path}")
    return result
