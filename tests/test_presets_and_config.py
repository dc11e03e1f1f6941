"""Presets have the exact parameter counts DESIGN.md gives; configs merge and refuse bad values."""

import textwrap

import pytest
import torch

from slmkit.config import load_config_sections, load_model_config, parse_override, preset_names
from slmkit.errors import SlmError
from slmkit.model import ModelConfig, Transformer
from slmkit.model.stats import model_stats

EXACT_COUNTS = {
    "slm-25m": 25_269_120,
    "gpt-tiny-27m": 27_073_024,
    "gpt-93m": 92_837_376,
    "gpt2-124m": 124_439_808,
    "gemma3-270m": 268_098_176,
    "gemma3-tinystories": 132_490_496,
    "smollm2-135m": 134_515_008,
}


@pytest.mark.parametrize("name,count", sorted(EXACT_COUNTS.items()))
def test_preset_parameter_count_is_exact(name, count):
    config = load_model_config(preset=name)
    assert model_stats(config).total == count
    with torch.device("meta"):
        model = Transformer(config)
    assert model.num_parameters() == count


def test_every_design_preset_exists_and_builds():
    names = set(preset_names())
    assert {"gpt2-124m", "gpt-tiny-27m", "gpt-small-46m", "slm-25m", "smollm2-135m", "gpt-93m",
            "gemma3-270m", "gemma3-tinystories", "llama2c-15m", "nano"} <= names
    for name in names:
        config = load_model_config(preset=name)
        with torch.device("meta"):
            assert Transformer(config).num_parameters() == model_stats(config).total


def test_size_presets_are_near_their_names():
    assert 44e6 < model_stats(load_model_config("gpt-small-46m")).total < 48e6
    assert 0.8e6 < model_stats(load_model_config("nano")).total < 1.5e6
    assert 14e6 < model_stats(load_model_config("llama2c-15m")).total < 16e6


def test_gemma3_layer_pattern_puts_full_attention_at_layers_5_11_17():
    config = load_model_config("gemma3-270m")
    assert [i for i, kind in enumerate(config.layer_types()) if kind == "full"] == [5, 11, 17]
    assert config.layer_rope_theta(0) == 10_000.0 and config.layer_rope_theta(5) == 1_000_000.0


def test_file_overrides_preset_and_command_line_overrides_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(textwrap.dedent("""
        preset = "slm-25m"
        [model]
        n_layers = 8
        [train]
        lr = 0.001
    """))
    sections = load_config_sections(file=path, overrides=["n_layers=10", "train.lr=3e-4", "qk_norm=true"])
    assert sections["model"]["n_layers"] == 10
    assert sections["model"]["d_model"] == 384  # from the preset
    assert sections["model"]["qk_norm"] is True
    assert sections["train"]["lr"] == pytest.approx(3e-4)
    config = load_model_config(file=path)
    assert config.n_layers == 8 and config.name == "slm-25m"


def test_yaml_config_file_is_read(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text("model:\n  vocab_size: 100\n  n_layers: 2\n  d_model: 32\n  n_heads: 4\n  d_mlp: 64\n")
    config = load_model_config(file=path)
    assert (config.vocab_size, config.n_layers, config.head_dim) == (100, 2, 8)


def test_override_values_are_typed():
    assert parse_override("d_model=512") == ("model", "d_model", 512)
    assert parse_override("train.lr=3e-4") == ("train", "lr", 3e-4)
    assert parse_override("sliding_window=none") == ("model", "sliding_window", None)
    assert parse_override("mlp=geglu") == ("model", "mlp", "geglu")


@pytest.mark.parametrize("overrides,fragment", [
    (["n_heads=5"], "d_model = 384 is not divisible by model.n_heads = 5"),
    (["n_kv_heads=4"], "n_kv_heads = 4 does not divide model.n_heads = 6"),
    (["position=learned", "sliding_window=64"], "needs rotary positions"),
    (["n_layers=-2"], "model.n_layers = -2"),
    (["d_mlp=0"], "model.d_mlp = 0"),
    (["nlayers=3"], "did you mean 'n_layers'"),
    (["mlp=relu"], "model.mlp = 'relu'"),
    (["qk_norm=yes"], "model.qk_norm = 'yes'"),
    (["model_typo.x=1"], "unknown section"),
])
def test_invalid_config_is_refused_naming_field_and_value(overrides, fragment):
    with pytest.raises(SlmError, match=None) as error:
        load_model_config(preset="slm-25m", overrides=overrides)
    assert fragment in str(error.value)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(SlmError) as error:
        load_model_config(preset="slm-25")
    assert "did you mean 'slm-25m'" in str(error.value) and "gpt2-124m" in str(error.value)


def test_malformed_and_missing_config_files_are_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nn_layers = 2\n")
    with pytest.raises(SlmError, match="not valid TOML"):
        load_model_config(file=bad)
    with pytest.raises(SlmError, match="config file not found"):
        load_model_config(file=tmp_path / "absent.toml")
    odd = tmp_path / "cfg.json"
    odd.write_text("{}")
    with pytest.raises(SlmError, match="unknown format"):
        load_model_config(file=odd)
    section = tmp_path / "section.toml"
    section.write_text("[modle]\nn_layers = 2\n")
    with pytest.raises(SlmError, match="did you mean 'model'"):
        load_model_config(file=section)


def test_flops_per_token_follow_6n_plus_attention():
    config = ModelConfig(vocab_size=1000, context_length=128, n_layers=2, d_model=64, n_heads=4, d_mlp=128)
    stats = model_stats(config)
    matrices = 2 * (64 * 3 * 64 + 64 * 64 + 3 * 64 * 128) + 1000 * 64
    attention = 2 * 4 * 64 * 128
    assert stats.forward_flops_per_token == 2 * matrices + attention
    assert stats.training_flops_per_token == 6 * matrices + 3 * attention


def test_kv_cache_bytes_of_sliding_layers_stop_growing_at_the_window():
    stats = model_stats(load_model_config("gemma3-270m"))
    per_layer_token = 2 * 1 * 256 * 2  # K and V, one KV head of 256, bf16
    assert stats.kv_cache_bytes_per_token_full == 3 * per_layer_token
    assert stats.kv_cache_bytes(32768) == 32768 * 3 * per_layer_token + 15 * 512 * per_layer_token
