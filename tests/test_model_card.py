"""The HF export's generation_config.json and model card (README.md), written from the run.

A tiny run is trained once; its export must carry a generation config that transformers loads with
the preset's sampling values, and a card whose YAML parses and whose figures are the run's own:
the validation loss, perplexity and bits per byte of the exported checkpoint's step in metrics.jsonl,
the parameter count, the dataset's Hub ids, the audit verdict. A bare checkpoint gets a card that says so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from train_support import one_thread, tiny_overrides, write_dataset

from slmkit import api
from slmkit.errors import SlmError
from slmkit.interop.hf import generation_config
from slmkit.interop.model_card import hub_datasets
from slmkit.model import ModelConfig, Transformer, save_model
from slmkit.rundir import read_metrics

pytestmark = pytest.mark.usefixtures(one_thread.__name__)

SOURCES = [{"spec": "tinystories", "kind": "hf", "description": "hf:roneneldan/TinyStories", "role": "train+val"},
           {"spec": "hf:someone/corpus:clean:train@0.5", "kind": "hf", "description": "Hugging Face someone/corpus"},
           {"spec": "notes/*.txt", "kind": "local", "description": "3 files"}]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    data = write_dataset(root / "data")
    run = root / "run"
    api.train(data, run, overrides=tiny_overrides(data, max_steps=6, eval_interval=3, checkpoint_interval=3),
              quiet=True, report=False)
    meta = json.loads((data / "meta.json").read_text())
    (data / "meta.json").write_text(json.dumps({**meta, "sources": SOURCES}))  # as `slm prepare` records them
    return run


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    block = text[4:text.index("\n---\n", 4)]
    return yaml.safe_load(block)


def test_export_writes_generation_config_that_transformers_loads_with_the_preset(run_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = api.export_hf(run_dir, tmp_path / "hf", audit=False)
    loaded = transformers.GenerationConfig.from_pretrained(out)
    eot = json.loads((run_dir / "config.json").read_text())["data"]["tokenizer"]["eot_id"]
    assert (loaded.do_sample, loaded.temperature, loaded.top_k, loaded.top_p) == (True, 0.7, 40, 1.0)
    assert (loaded.repetition_penalty, loaded.max_new_tokens) == (1.0, 128)
    assert (loaded.eos_token_id, loaded.bos_token_id, loaded.pad_token_id) == (eot, eot, eot)


def test_greedy_preset_writes_do_sample_false_without_sampling_fields(run_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = api.export_hf(run_dir, tmp_path / "hf", generation_preset="greedy", card=False)
    written = json.loads((out / "generation_config.json").read_text())
    assert written["do_sample"] is False and "temperature" not in written and "top_k" not in written
    assert transformers.GenerationConfig.from_pretrained(out).do_sample is False
    assert not (out / "README.md").exists()


def test_generation_config_adds_the_end_of_turn_id_and_defaults_pad_to_eos():
    fields = generation_config("deterministic", {"bos_token_id": 5, "eos_token_id": 5}, end_of_turn_id=9)
    assert fields["eos_token_id"] == [5, 9] and fields["pad_token_id"] == 5
    assert (fields["temperature"], fields["top_k"]) == (0.5, 20)
    assert generation_config("creative", {"eos_token_id": 3, "pad_token_id": 0})["pad_token_id"] == 0


def test_model_card_yaml_parses_and_its_figures_are_the_runs(run_dir, tmp_path):
    out = api.export_hf(run_dir, tmp_path / "hf", license="apache-2.0")
    text = (out / "README.md").read_text()
    meta = front_matter(text)
    assert meta["license"] == "apache-2.0"
    assert (meta["library_name"], meta["pipeline_tag"]) == ("transformers", "text-generation")
    assert "slmkit" in meta["tags"]
    assert meta["datasets"] == ["roneneldan/TinyStories", "someone/corpus"]  # local files have no Hub id
    checkpoint = json.loads((run_dir / "checkpoints" / "best" / "config.json").read_text())
    record = [e for e in read_metrics(run_dir) if e["event"] == "eval" and e["step"] == checkpoint["step"]][-1]
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"loss": record["val_loss"], "perplexity": record["val_ppl"], "bits_per_byte": record["val_bpb"]}
    run_config = json.loads((run_dir / "config.json").read_text())
    assert f"| parameters | {run_config['parameters']:,} |" in text
    assert f"| validation | {record['val_loss']:,.4f} | {record['val_ppl']:,.2f} | {record['val_bpb']:,.4f} |" in text
    assert f"step {checkpoint['step']:,} of 6 trained, {checkpoint['tokens']:,} tokens seen" in text
    assert "`notes/*.txt` (3 files)" in text and "Not for factual use" in text
    assert "Audit (`slm audit`" in text and "clean" in text
    assert "LlamaForCausalLM" in text and "char (char)" in text


def _copy_checkpoint(run: Path, name: str, **meta_changes) -> Path:
    target = run / "checkpoints" / name
    shutil.copytree(run / "checkpoints" / "best", target)
    meta = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**meta, **meta_changes}))
    return target


def test_ema_and_averaged_checkpoints_are_reported_with_their_own_figures(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    step = json.loads((run / "checkpoints" / "best" / "config.json").read_text())["step"]
    ema = {"ema_val_loss": 2.5, "ema_val_ppl": 12.18, "ema_val_bpb": 3.6, "ema_train_loss": 2.4}
    events = [e if not (e["event"] == "eval" and e["step"] == step) else {**e, **ema} for e in read_metrics(run)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    ema_dir = _copy_checkpoint(run, "ema", ema={"decay": 0.99, "updates": step})
    card = (api.export_hf(ema_dir, tmp_path / "hf-ema", audit=False) / "README.md").read_text()
    metrics = front_matter(card)["model-index"][0]["results"][0]["metrics"]
    assert [m["value"] for m in metrics] == [2.5, 12.18, 3.6]
    assert "exponential moving average of the trained ones (decay 0.99)" in card
    averaged = _copy_checkpoint(run, "average-3-6", averaged={"method": "uniform mean", "steps": [3, step]})
    card = (api.export_hf(averaged, tmp_path / "hf-avg", audit=False) / "README.md").read_text()
    assert "model-index" not in front_matter(card)
    assert "uniform mean of the run's checkpoints at steps [3, 6]; the run never evaluated them" in card


def test_model_card_without_audit_and_with_default_license(run_dir, tmp_path):
    out = api.export_hf(run_dir, tmp_path / "hf", audit=False, model_id="someone/tiny")
    text = (out / "README.md").read_text()
    assert front_matter(text)["license"] == "other"
    assert "Audit" not in text
    assert 'AutoModelForCausalLM.from_pretrained("someone/tiny")' in text


def test_bare_checkpoint_gets_a_shorter_card_that_says_so(tmp_path):
    config = ModelConfig(vocab_size=50, n_layers=1, d_model=16, n_heads=2, d_mlp=32)
    model = Transformer(config)
    save_model(model, tmp_path / "lonely")
    out = api.export_hf(tmp_path / "lonely", tmp_path / "hf")
    text = (out / "README.md").read_text()
    meta = front_matter(text)
    assert "model-index" not in meta and "datasets" not in meta
    assert "bare slmkit checkpoint" in text and "## Training" not in text
    assert f"| parameters | {model.num_parameters():,} |" in text
    assert json.loads((out / "generation_config.json").read_text())["do_sample"] is True


def test_hub_datasets_reads_hf_specs_and_builtins_only():
    assert hub_datasets(SOURCES) == ["roneneldan/TinyStories", "someone/corpus"]
    assert hub_datasets([{"spec": "wikitext-103:validation"}, {"spec": "shakespeare"}]) == ["Salesforce/wikitext"]


@pytest.mark.parametrize("options, message", [
    ({"license": "MIT"}, "license 'MIT' is not a Hugging Face license identifier"),
    ({"generation_preset": "wild"}, "unknown generation preset 'wild'"),
])
def test_export_refuses_a_bad_license_or_preset_and_writes_nothing(run_dir, tmp_path, options, message):
    with pytest.raises(SlmError, match=message):
        api.export_hf(run_dir, tmp_path / "hf", **options)
    assert not (tmp_path / "hf").exists()


def test_cli_export_hf_takes_license_preset_model_id_and_no_audit(run_dir, tmp_path, capsys):
    from slmkit.cli import main

    code = main(["export-hf", str(run_dir), str(tmp_path / "hf"), "--license", "mit", "--preset", "greedy",
                 "--no-audit", "--model-id", "someone/tiny"])
    assert code == 0
    card = (tmp_path / "hf" / "README.md").read_text()
    assert front_matter(card)["license"] == "mit" and "Audit" not in card
    assert 'AutoTokenizer.from_pretrained("someone/tiny")' in card
    assert json.loads((tmp_path / "hf" / "generation_config.json").read_text())["do_sample"] is False
    assert main(["export-hf", str(run_dir), str(tmp_path / "x"), "--license", "Not A License"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
