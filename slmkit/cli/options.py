"""Command-line flags derived from the API's option dataclasses, so the two cannot drift.

Each field of an options dataclass becomes `--field-name` with the field's type, default and help
(from the field's metadata: `help`, and optionally `flag`, `short`, `choices`, `metavar`, `type`; or
from a `metadata` mapping given to `add_options`); a bool field defaulting to False becomes a switch,
one defaulting to True a `--x/--no-x` pair, a list field a repeatable flag. `options_from_args`
builds the dataclass back from the parsed flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from slmkit.utils import option  # noqa: F401  (re-exported; declared in utils so layers below the CLI can use it)


def flag_name(field: dataclasses.Field) -> str:
    """The long flag of a field: its metadata's `flag`, else --field-name."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _base_type(annotation):
    """(type, is_list) of an annotation such as `int | None` or `list[str]`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else (str, False)
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return (args[0] if args else str), True
    return annotation, False


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def add_options(parser: argparse.ArgumentParser, cls, *, skip: tuple[str, ...] = (), unset: bool = False,
                help: dict[str, str] | None = None, metadata: dict[str, dict] | None = None) -> None:
    """Add one flag per field of the dataclass `cls` (except `skip`).

    unset=True makes every default None, so that only flags the user gave override a base config
    (a preset, say). `help` gives help texts for fields whose metadata has none. `metadata` gives, per
    field, entries that replace the field's own (help, flag, short, choices, metavar, and `type`: a
    function parsing the flag's text), for a dataclass whose module should not hold command-line details.
    """
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        meta = {**field.metadata, **(metadata or {}).get(field.name, {})}
        kind, is_list = _base_type(hints[field.name])
        default = _default(field)
        text = meta.get("help") or (help or {}).get(field.name, "")
        names = [meta.get("flag") or flag_name(field)] + ([meta["short"]] if meta.get("short") else [])
        kwargs: dict = {"dest": field.name, "help": text}
        if kind is bool and not meta.get("type"):
            kwargs["action"] = argparse.BooleanOptionalAction if default else "store_true"
            kwargs["default"] = None if unset else default
        elif is_list:
            kwargs.update(action="append", type=meta.get("type") or kind, default=None, metavar=meta.get("metavar"))
        else:
            parse = meta.get("type") or (kind if kind in (int, float, str) else str)
            kwargs.update(type=parse, default=None if unset else default, metavar=meta.get("metavar"))
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
        if default not in (None, False, [], ()) and not unset and kind is not bool and "%(default)" not in text:
            kwargs["help"] = f"{text} (default {default})" if text else f"default {default}"
        parser.add_argument(*names, **kwargs)


def options_from_args(cls, args: argparse.Namespace, **values):
    """`cls(...)` from the parsed flags of `add_options` (fields left None keep their defaults),
    plus `values` given directly."""
    for field in dataclasses.fields(cls):
        if field.name in values or not hasattr(args, field.name):
            continue
        value = getattr(args, field.name)
        if value is not None:
            values[field.name] = value
    return cls(**values)


def given_options(cls, args: argparse.Namespace) -> dict:
    """The fields of `cls` that were given on the command line (not None), as a dict."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if getattr(args, f.name, None) is not None}
