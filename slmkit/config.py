"""Configs from presets, TOML/YAML files and command-line overrides.

A config source is a mapping of sections ("model", "train", ...) to fields. Precedence, lowest first:
a named preset, then a file (which may itself name a preset with `preset = "..."`), then
`section.field=value` overrides (a bare `field=value` means `model.field`). Unknown sections and
fields are refused, naming them.
"""

from __future__ import annotations

import copy
import difflib
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from slmkit.errors import SlmError
from slmkit.model.config import ModelConfig
from slmkit.model.stats import model_stats

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESET_DIR = Path(__file__).parent / "presets"
SECTIONS = ("model", "train")  # the sections a config file or preset may hold
TOP_LEVEL = ("preset", "description")


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    sections: dict


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESET_DIR.glob("*.toml"))


def load_preset(name: str) -> Preset:
    """The named preset; SlmError listing the available names when unknown."""
    path = PRESET_DIR / f"{name}.toml"
    if not path.is_file():
        names = preset_names()
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SlmError(f"unknown preset {name!r}{hint}; available: {', '.join(names)} (see `slm presets`)")
    data = _check_sections(tomllib.loads(path.read_text()), f"preset {name}")
    return Preset(name, data.get("description", ""), {k: data.get(k, {}) for k in SECTIONS})


def read_config_file(path: str | Path) -> dict:
    """Parse a TOML (.toml) or YAML (.yaml/.yml) config file into a mapping of sections."""
    path = Path(path)
    if not path.is_file():
        raise SlmError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SlmError(f"config file {path} is not UTF-8 text") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise SlmError(f"config file {path}: unknown format {suffix!r}; use .toml, .yaml or .yml")
    except tomllib.TOMLDecodeError as error:
        raise SlmError(f"config file {path} is not valid TOML: {error}") from None
    except Exception as error:
        if isinstance(error, SlmError):
            raise
        raise SlmError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise SlmError(f"config file {path} must hold a mapping of sections (model, train), not {type(data).__name__}")
    return _check_sections(data, str(path))


def _check_sections(data: dict, where: str) -> dict:
    for key, value in data.items():
        if key in TOP_LEVEL:
            continue
        if key not in SECTIONS:
            close = difflib.get_close_matches(key, SECTIONS + TOP_LEVEL, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SlmError(f"unknown section {key!r} in {where}{hint}; sections are {', '.join(SECTIONS)}")
        if not isinstance(value, dict):
            raise SlmError(f"section {key!r} in {where} must be a table of fields")
    return data


def parse_override(text: str) -> tuple[str, str, object]:
    """`section.field=value` (or `field=value` for the model) -> (section, field, value).

    The value is read as a TOML value when it parses as one (numbers, true/false, lists, quoted
    strings); `none`/`null` mean None; anything else is a plain string.
    """
    if "=" not in text:
        raise SlmError(f"override {text!r} must look like field=value or section.field=value")
    key, raw = (part.strip() for part in text.split("=", 1))
    section, _, field = key.rpartition(".")
    section = section or "model"
    if section not in SECTIONS:
        raise SlmError(f"override {text!r}: unknown section {section!r}; sections are {', '.join(SECTIONS)}")
    if raw.lower() in ("none", "null"):
        return section, field, None
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, field, value


def load_config_sections(preset: str | None = None, file: str | Path | None = None,
                         overrides: list[str] | tuple[str, ...] = ()) -> dict[str, dict]:
    """Merge preset < file < overrides into {section: {field: value}} (not yet validated)."""
    file_data = read_config_file(file) if file else {}
    preset = preset or file_data.get("preset")
    sections: dict[str, dict] = {name: {} for name in SECTIONS}
    if preset:
        for name, values in load_preset(preset).sections.items():
            sections[name].update(copy.deepcopy(values))
        sections["model"].setdefault("name", preset)
    for name in SECTIONS:
        sections[name].update(file_data.get(name, {}))
    for text in overrides:
        section, field, value = parse_override(text)
        sections[section][field] = value
    return sections


def model_config_from_sections(sections: dict[str, dict], where: str = "model config") -> ModelConfig:
    model = sections.get("model", {})
    if not model:
        raise SlmError("no model given: name a preset (--preset, see `slm presets`) or a config file (--config)")
    return ModelConfig.from_dict(model, where=where).validate()


def load_model_config(preset: str | None = None, file: str | Path | None = None,
                      overrides: list[str] | tuple[str, ...] = ()) -> ModelConfig:
    """A validated ModelConfig from a preset, a file and overrides (any may be omitted, not all)."""
    sections = load_config_sections(preset, file, overrides)
    return model_config_from_sections(sections)


def presets_table() -> str:
    """One line per preset: name, family, parameters, context and description."""
    rows = [f"{'preset':<20} {'family':<8} {'parameters':>13} {'context':>8}  description"]
    for name in preset_names():
        preset = load_preset(name)
        config = ModelConfig.from_dict(preset.sections["model"], where=f"preset {name}").validate()
        rows.append(f"{name:<20} {config.family:<8} {model_stats(config).total:>13,} "
                    f"{config.context_length:>8,}  {preset.description}")
    return "\n".join(rows)
