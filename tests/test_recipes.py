"""Recipes (recipes/*.toml) and `slm run`: every shipped recipe parses, names existing presets and
resolves to valid configs, and runs end to end in its CPU smoke mode on local samples written here in
the real sources' file formats (parquet, or jsonl without pyarrow), so a recipe cannot rot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import make_text
from train_support import one_thread

from slmkit.cli import main
from slmkit.config import load_model_config, preset_names
from slmkit.errors import SlmError
from slmkit.eval.code import load_tasks
from slmkit.recipe import (
    RECIPE_DIR,
    RecipeResult,
    RecipeSource,
    compare_with_references,
    load_recipe,
    recipe_names,
    reference_model,
    source_specs,
)
from slmkit.train import TrainResult
from slmkit.train.config import TrainConfig

pytestmark = pytest.mark.usefixtures(one_thread.__name__)

RECIPES = sorted(RECIPE_DIR.glob("*.toml"))
# The columns of each real source's rows besides "text" (what `datasets` streams from the Hub), so
# the sample is read exactly as the real files would be.
EXTRA_COLUMNS = {
    "slimpajama-6b": lambda i: {"meta": {"redpajama_set_name": "RedPajamaC4"}},
    "project_gutenberg": lambda i: {"id": str(1000 + i)},
    "fineweb-edu-dedup": lambda i: {"id": f"<urn:uuid:{i:08d}>", "metadata": {"score": 3.5}},
    "cosmopedia-v2": lambda i: {"prompt": f"Write a story {i}", "audience": "general", "format": "story"},
}


def sample_rows(name: str, seed: int, documents: int = 24) -> list[dict]:
    """Rows like the real source's: WikiText-103's are lines (articles opened by ' = Title = '), the
    others a document each."""
    texts = [make_text(seed * 1000 + i, words=250) for i in range(documents)]
    if name == "wikitext-103":
        rows = []
        for i, text in enumerate(texts):
            rows += [f" = Article {seed} {i} = \n", " \n"]
            rows += [line for sentence in text.split(".\n") for line in (f" {sentence.strip()} .\n", " \n")]
        return [{"text": row} for row in rows]
    extra = EXTRA_COLUMNS.get(name, lambda i: {})
    return [{"text": text, **extra(i)} for i, text in enumerate(texts)]


def write_sample(folder: Path, source: RecipeSource, seed: int) -> Path:
    """The source's sample file: parquet where pyarrow is installed (the real sources' format), else
    the same rows as JSON lines."""
    path = folder / source.sample
    rows = sample_rows(path.stem, seed)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path = path.with_suffix(".jsonl")
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        return path
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    """One folder holding a sample for every remote source of every recipe."""
    folder = tmp_path_factory.mktemp("samples")
    for path in RECIPES:
        for seed, source in enumerate(load_recipe(path).sources):
            if source.sample and not (folder / source.sample).exists():
                write_sample(folder, source, seed)
    return folder


@pytest.fixture(scope="module")
def empty_hf_cache(tmp_path_factory):
    """A Hugging Face cache with nothing in it, so that no reference model is found by chance."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))
        yield


@pytest.fixture(scope="module")
def smoke_run(samples, empty_hf_cache, tmp_path_factory):
    """`slm run RECIPE --smoke --sample DIR --out OUT` once per recipe; returns OUT."""
    done: dict[str, Path] = {}

    def run(path: Path) -> Path:
        if path.stem not in done:
            out = tmp_path_factory.mktemp(path.stem) / "out"
            code = main(["run", str(path), "--smoke", "--sample", str(samples), "--out", str(out), "--quiet"])
            assert code == 0
            done[path.stem] = out
        return done[path.stem]

    return run


def test_five_recipes_ship_one_per_run_users_came_from():
    assert recipe_names() == ["pycode-gpt27m", "slimpajama-gpt93m", "smollm-corpus-smollm2", "tinystories-gemma3",
                              "wikitext103-slm25m"]
    presets = {path.stem: load_recipe(path).preset for path in RECIPES}
    assert presets == {"pycode-gpt27m": "gpt-tiny-27m", "slimpajama-gpt93m": "gpt-93m",
                       "smollm-corpus-smollm2": "smollm2-135m", "tinystories-gemma3": "gemma3-tinystories",
                       "wikitext103-slm25m": "slm-25m"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
@pytest.mark.parametrize("smoke", [False, True], ids=["gpu", "smoke"])
def test_every_recipe_parses_names_an_existing_preset_and_resolves_to_valid_configs(path, smoke):
    recipe = load_recipe(path, smoke=smoke)
    assert recipe.preset in preset_names()
    overrides = recipe.overrides()
    model = load_model_config(recipe.preset, None, [o.removeprefix("model.") for o in overrides
                                                    if o.startswith("model.")])
    train = TrainConfig.from_dict(recipe.train).validate()
    assert (train.seq_len or model.context_length) <= model.context_length
    for source in recipe.sources:
        assert source.weight > 0
        if source.spec.startswith("hf:") or source.spec in ("wikitext-103", "slimpajama-6b", "tinystories"):
            assert source.sample and Path(source.sample).suffix == ".parquet", source
    if smoke:
        assert train.device == "cpu" and train.max_steps <= 50 and not train.compile
        assert model.n_layers <= 2 and model.d_model <= 64
    else:
        assert train.precision == "bf16" and train.compile and train.max_steps >= 1000


def test_smollm2_recipe_trains_with_amp_and_exports_and_the_code_recipe_runs_the_suite():
    smollm2, code = load_recipe(RECIPE_DIR / "smollm-corpus-smollm2.toml"), load_recipe(RECIPE_DIR / "pycode-gpt27m.toml")
    assert smollm2.train["precision"] == "bf16" and smollm2.export == {"enabled": True}
    assert code.code["k"] == [1] and code.tokenizer == "bpe:8000"
    assert load_recipe(RECIPE_DIR / "slimpajama-gpt93m.toml").compare["models"] == ["gpt2"]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_smoke_mode_runs_end_to_end_on_local_samples(path, smoke_run, samples):
    recipe = load_recipe(path, smoke=True)
    out = smoke_run(path)
    run = out / "run"
    assert (run / "report.md").read_text().startswith("#")
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "end" and events[-1]["step"] == recipe.train["max_steps"]
    # The remote sources were read from the samples, with the recipe's weights.
    meta = json.loads((out / "data" / "meta.json").read_text())
    assert [source["spec"] for source in meta["sources"]] == source_specs(recipe, samples)
    assert [source["weight"] for source in meta["sources"]] == [source.weight for source in recipe.sources]
    assert all(str(samples) in spec for spec, source in zip(source_specs(recipe, samples), recipe.sources)
               if source.sample)
    # The model follows the dataset's tokenizer.
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["vocab_size"] == meta["vocab_size"]
    evaluated = json.loads((out / "eval.json").read_text())["results"][0]
    assert evaluated["tokens"] > 0 and 0 < evaluated["bits_per_byte"] < 20 and math.isfinite(evaluated["loss"])
    summary = json.loads((out / "recipe.json").read_text())
    assert summary["eval"]["val_bpb"] == evaluated["bits_per_byte"] and summary["smoke"] is True
    assert (out / "recipe.md").is_file()
    assert (summary["code"] is not None) == (recipe.code is not None)
    assert (summary["export"] is not None) == (recipe.export is not None)


def test_the_code_recipe_writes_the_code_suite_results(smoke_run):
    out = smoke_run(RECIPE_DIR / "pycode-gpt27m.toml")
    results = json.loads((out / "code_suite.json").read_text())
    assert len(results["tasks"]) == len(load_tasks()) and results["n"] == 1
    assert 0 <= results["pass_at_k"]["pass@1"] <= 1
    assert results["summary"]["completions"] == len(load_tasks())


def test_the_smollm2_export_loads_with_transformers_and_gives_the_same_logits(smoke_run):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from slmkit.model.checkpoint import load_model
    from slmkit.rundir import resolve_checkpoint_dir
    from slmkit.tokenizer import load_tokenizer

    out = smoke_run(RECIPE_DIR / "smollm-corpus-smollm2.toml")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    assert type(hf_model).__name__ == "LlamaForCausalLM"
    ours = load_model(resolve_checkpoint_dir(out / "run"))
    text = "the king and the queen"
    ids = load_tokenizer(out / "hf").encode(text)
    assert transformers.AutoTokenizer.from_pretrained(out / "hf").encode(text) == ids
    with torch.no_grad():
        expected = ours(torch.tensor([ids]))
        got = hf_model(torch.tensor([ids])).logits
    assert torch.allclose(got, expected, atol=1e-4)


def test_the_comparison_is_skipped_with_a_note_when_gpt2_is_not_cached(smoke_run):
    out = smoke_run(RECIPE_DIR / "slimpajama-gpt93m.toml")
    summary = json.loads((out / "recipe.json").read_text())
    assert summary["compare"] is None and not (out / "compare").exists()
    assert any("gpt2" in note and "local Hugging Face cache" in note for note in summary["notes"])


def test_the_comparison_runs_with_a_reference_found_in_the_local_hf_cache(smoke_run, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from slmkit.interop.hf import export_hf

    out = smoke_run(RECIPE_DIR / "slimpajama-gpt93m.toml")
    cache = tmp_path / "hub"
    snapshot = cache / "models--gpt2" / "snapshots" / "0123abc"
    export_hf(out / "run", snapshot)  # a stand-in for GPT-2 in the cache's layout
    (cache / "models--gpt2" / "refs").mkdir()
    (cache / "models--gpt2" / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert reference_model("gpt2") == str(snapshot) and reference_model("nobody/no-such-model") is None
    notes: list[str] = []
    recipe = load_recipe(RECIPE_DIR / "slimpajama-gpt93m.toml", smoke=True)
    report = compare_with_references(recipe, out / "run", tmp_path / "compare", notes, say=lambda text: None)
    assert notes == [] and len(report.figures) == 2
    assert report.figures[0].bits_per_byte == pytest.approx(report.figures[1].bits_per_byte)  # the same weights
    assert (tmp_path / "compare" / "compare.md").is_file()
    summary = RecipeResult(recipe, out, out / "data", out / "run", TrainResult(out / "run", step=20),
                           compare=report)
    assert summary.to_dict()["compare"]["bits_per_byte"][str(snapshot)] == report.figures[1].bits_per_byte
    assert f"compared: `{tmp_path / 'compare' / 'compare.md'}`" in summary.markdown()


def test_offline_without_sample_fails_fast_naming_the_source_and_sample(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("slmkit.recipe.hub_reachable", lambda timeout=3.0: "huggingface.co:443: timed out")
    assert main(["run", "tinystories-gemma3", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "source 'tinystories'" in error and "--sample" in error and "tinystories.parquet" in error
    assert not (tmp_path / "out").exists()


def test_a_missing_sample_file_is_named_before_anything_is_written(tmp_path, capsys):
    (tmp_path / "samples").mkdir()
    assert main(["run", "wikitext103-slm25m", "--smoke", "--sample", str(tmp_path / "samples"),
                 "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert str(tmp_path / "samples" / "wikitext-103.parquet") in error and not (tmp_path / "out").exists()


def test_a_jsonl_sample_stands_in_for_a_parquet_one(tmp_path):
    recipe = load_recipe("tinystories-gemma3", smoke=True)
    (tmp_path / "tinystories.jsonl").write_text('{"text": "Once upon a time"}\n')
    assert source_specs(recipe, tmp_path) == [str(tmp_path / "tinystories.jsonl")]


def test_local_sources_are_kept_and_weights_carried_with_a_sample(tmp_path):
    recipe = load_recipe("pycode-gpt27m")
    (tmp_path / "project_gutenberg.parquet").write_bytes(b"")
    assert source_specs(recipe, tmp_path) == ["python-stdlib@6", str(tmp_path / "project_gutenberg.parquet")]


def test_an_unknown_recipe_key_is_refused_with_the_nearest_name(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[data]\nsources = ["tinystories"]\ntokeniser = "gpt2"\n[model]\npreset = "nano"\n')
    with pytest.raises(SlmError, match="unknown key 'tokeniser'.*did you mean 'tokenizer'"):
        load_recipe(path)
    path.write_text('[data]\nsources = ["tinystories"]\n[model]\npreset = "nano-x"\n')
    with pytest.raises(SlmError, match="unknown preset 'nano-x'"):
        load_recipe(path)
    path.write_text('[data]\nsources = []\n[model]\npreset = "nano"\n')
    with pytest.raises(SlmError, match="sources is empty"):
        load_recipe(path)
    with pytest.raises(SlmError, match="recipe 'no-such-recipe' not found"):
        load_recipe("no-such-recipe")


def test_an_out_directory_holding_a_run_is_refused(tmp_path, samples, capsys):
    (tmp_path / "out" / "run").mkdir(parents=True)
    (tmp_path / "out" / "run" / "config.json").write_text("{}")
    assert main(["run", "tinystories-gemma3", "--smoke", "--sample", str(samples),
                 "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "already holds a run" in error and "slm train --resume" in error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["run"]


def test_an_interrupted_training_skips_the_later_steps_and_says_how_to_continue(tmp_path, samples, monkeypatch):
    def interrupted(data, out, **settings):
        Path(out).mkdir(parents=True)
        return TrainResult(Path(out), step=3, tokens=768, interrupted=True, stop_reason="interrupted")

    monkeypatch.setattr("slmkit.recipe.train", interrupted)
    assert main(["run", "smollm-corpus-smollm2", "--smoke", "--sample", str(samples), "--out", str(tmp_path / "out"),
                 "--quiet"]) == 130
    summary = json.loads((tmp_path / "out" / "recipe.json").read_text())
    assert summary["eval"] is None and summary["export"] is None and not (tmp_path / "out" / "hf").exists()
    assert summary["notes"] == [f"training was interrupted at step 3; the later steps were not run (continue with "
                                f"`slm train --resume {tmp_path / 'out' / 'run'}`)"]
