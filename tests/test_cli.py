"""The `slm` command is a thin layer over `slmkit.api`: its flags come from the API's option dataclasses.

Every GenerationConfig field is a flag of `slm generate` and `slm chat`; a flag given reaches the
config, and every flag not given keeps the sampling preset's value.
"""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from slmkit import api
from slmkit.cli import build_parser, main
from slmkit.cli.generate import generation_config
from slmkit.cli.options import add_options, given_options, options_from_args
from slmkit.errors import SlmError

COMMANDS = ("presets", "info", "prepare", "data", "tokenizer", "import-hf", "export-hf", "push", "export-onnx",
            "train", "report", "quickstart", "run", "finetune", "merge-lora", "generate", "chat", "eval", "status",
            "code-eval", "lm-eval-task", "audit", "compare", "average", "quantize", "serve")

# One value per GenerationConfig field, unlike its default and every preset's: (flags, value in the config).
GENERATION_VALUES = {
    "max_new_tokens": (["--max-new-tokens", "7"], 7),
    "temperature": (["--temperature", "0.3"], 0.3),
    "top_k": (["--top-k", "5"], 5),
    "top_p": (["--top-p", "0.8"], 0.8),
    "min_p": (["--min-p", "0.1"], 0.1),
    "repetition_penalty": (["--repetition-penalty", "1.3"], 1.3),
    "presence_penalty": (["--presence-penalty", "0.5"], 0.5),
    "frequency_penalty": (["--frequency-penalty", "0.25"], 0.25),
    "no_repeat_ngram_size": (["--no-repeat-ngram-size", "3"], 3),
    "temperature_decay": (["--temperature-decay", "0.9"], 0.9),
    "min_temperature": (["--min-temperature", "0.2"], 0.2),
    "seed": (["--seed", "11"], 11),
    "num_beams": (["--num-beams", "3"], 3),
    "length_penalty": (["--length-penalty", "0.6"], 0.6),
    "early_stopping": (["--early-stopping", "never"], "never"),
    "num_return_sequences": (["--num-return-sequences", "2"], 2),
    "stop_strings": (["--stop", "THE END", "--stop", "\n\n"], ["THE END", "\n\n"]),
    "stop_token_ids": (["--stop-token-id", "4", "--stop-token-id", "9"], [4, 9]),
    "ignore_eot": (["--ignore-eot"], True),
    "overflow": (["--overflow", "refuse"], "refuse"),
}
GENERATION_FIELDS = [field.name for field in dataclasses.fields(api.GenerationConfig)]


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_every_command_module_registers_its_commands(capsys):
    for command in COMMANDS:
        with pytest.raises(SystemExit) as done:
            parse(command, "--help")
        assert done.value.code == 0, command
    with pytest.raises(SystemExit) as done:
        parse("no-such-command")
    assert done.value.code == 2
    registered = {name for action in build_parser()._subparsers._group_actions for name in action.choices}
    assert registered == set(COMMANDS), "list a new command in COMMANDS so its --help is checked"


def test_the_test_values_cover_every_generation_config_field():
    missing = sorted(set(GENERATION_FIELDS) - set(GENERATION_VALUES))
    assert not missing, f"add a flag and value for the new GenerationConfig field(s) {missing} to GENERATION_VALUES"
    assert sorted(GENERATION_VALUES) == sorted(GENERATION_FIELDS)


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_every_generation_config_field_is_a_flag_left_unset_by_default(command):
    args = parse(command, "runs/x")
    assert {name: getattr(args, name) for name in GENERATION_FIELDS} == dict.fromkeys(GENERATION_FIELDS)
    assert generation_config(args) == api.GenerationConfig.from_preset("coherent")


@pytest.mark.parametrize("command", ["generate", "chat"])
@pytest.mark.parametrize("name", list(GENERATION_VALUES))
def test_a_generation_flag_given_reaches_the_config_and_the_rest_keep_the_preset(command, name):
    flags, value = GENERATION_VALUES[name]
    args = parse(command, "runs/x", *flags)
    preset = "greedy" if name == "num_beams" else "coherent"  # beams default to the greedy preset
    expected = dataclasses.replace(api.GenerationConfig.from_preset(preset), **{name: value})
    assert given_options(api.GenerationConfig, args) == {name: value}
    assert generation_config(args) == expected


def test_a_named_preset_is_the_base_that_flags_override():
    config = generation_config(parse("generate", "runs/x", "--preset", "creative", "--top-k", "3"))
    creative = api.GenerationConfig.from_preset("creative")
    assert config == dataclasses.replace(creative, top_k=3) and config.temperature == creative.temperature == 0.9


@pytest.mark.parametrize("text,value", [("true", True), ("False", False), ("never", "never")])
def test_early_stopping_reads_true_false_and_never(text, value):
    assert parse("generate", "runs/x", "--early-stopping", text).early_stopping == value


@pytest.mark.parametrize("flags", [["--early-stopping", "sometimes"], ["--overflow", "wrap"], ["--top-k", "many"],
                                   ["--preset", "wild"], ["--dtype", "int8"]])
def test_a_bad_flag_value_is_refused_by_the_parser(flags, capsys):
    with pytest.raises(SystemExit) as done:
        parse("generate", "runs/x", *flags)
    assert done.value.code == 2 and flags[0] in capsys.readouterr().err


def test_an_invalid_combination_is_refused_by_the_config_before_any_model_loads():
    with pytest.raises(SlmError, match="num_beams = 2"):
        generation_config(parse("generate", "runs/x", "--num-beams", "2", "--temperature", "0.8"))


def test_presets_and_info_print_what_the_api_returns(capsys):
    assert main(["presets"]) == 0
    assert capsys.readouterr().out == api.presets() + "\n"
    assert main(["info", "--preset", "nano", "--set", "n_layers=3"]) == 0
    assert capsys.readouterr().out == api.describe_model("nano", None, ["n_layers=3"]) + "\n"


@dataclasses.dataclass
class _Options:
    count: int = 3
    ratio: float | None = None
    names: list[str] = dataclasses.field(default_factory=list)
    fast: bool = False
    check: bool = True
    mode: str = "a"


def test_add_options_follows_the_dataclass_and_the_metadata_given():
    parser = argparse.ArgumentParser()
    add_options(parser, _Options, skip=("ratio",),
                metadata={"mode": {"flag": "--kind", "choices": ("a", "b")}, "count": {"type": lambda t: int(t) * 2}})
    assert options_from_args(_Options, parser.parse_args([])) == _Options()
    args = parser.parse_args(["--count", "4", "--names", "x", "--names", "y", "--fast", "--no-check", "--kind", "b"])
    assert options_from_args(_Options, args) == _Options(count=8, names=["x", "y"], fast=True, check=False, mode="b")
    with pytest.raises(SystemExit):
        parser.parse_args(["--kind", "c"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--ratio", "0.5"])


def test_add_options_unset_leaves_every_flag_none_until_given():
    parser = argparse.ArgumentParser()
    add_options(parser, _Options, unset=True)
    assert given_options(_Options, parser.parse_args([])) == {}
    assert given_options(_Options, parser.parse_args(["--no-check", "--mode", "b"])) == {"check": False, "mode": "b"}
