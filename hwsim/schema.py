"""Typed dataclasses from raw YAML values, with errors that name the key path (a leaf module: the
config sections, the backends' options and the architecture specs are all checked by this converter).

A field's annotation says what is allowed (int, float, str, bool, None, dict, list[...], Literal[...],
Union[...], a nested dataclass); after the fields, the class's ``check(path)`` (if it has one) checks
what types cannot say. A class with a ``prepare(raw)`` classmethod reshapes its raw mapping first.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Literal, Union

from hwsim.errors import ConfigError
from hwsim.text import excerpt

MAX_INT = 2 ** 63      # integers (seeds, sizes) must fit int64; floats must be finite and below it


def describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is Union:
        return " or ".join(describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {describe(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null", dict: "a mapping"}.get(tp, str(tp))


def convert(tp, value, path: str):
    if tp is Any:                      # the class's own checks interpret it
        return value
    origin = typing.get_origin(tp)
    if origin is Union:
        for arg in typing.get_args(tp):
            try:
                return convert(arg, value, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {describe(tp)}, got {excerpt(value)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: {excerpt(value)} is not allowed; expected {describe(tp)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected {describe(tp)}, got {excerpt(value)}")
        return [convert(typing.get_args(tp)[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    ok = {type(None): value is None, bool: isinstance(value, bool), str: isinstance(value, str),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          dict: isinstance(value, dict)}[tp]
    if not ok:
        raise ConfigError(f"{path}: expected {describe(tp)}, got {excerpt(value)}")
    if tp is int and not -MAX_INT <= value < MAX_INT:
        raise ConfigError(f"{path}: {excerpt(value)} is not allowed; use an integer of magnitude below 2^63")
    if tp is float and not (math.isfinite(value) and abs(value) < MAX_INT):
        raise ConfigError(f"{path}: {excerpt(value)} is not allowed; use a finite number")
    return float(value) if tp is float else value


def from_dict(cls, raw: Any, path: str = ""):
    """Build dataclass ``cls`` from a mapping, checking keys, types and each class's ``check``."""
    where = path or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {excerpt(raw)}")
    if hasattr(cls, "prepare"):
        raw = cls.prepare(raw)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise ConfigError(f"{path + '.' if path else ''}{key}: unknown key; allowed: {', '.join(names)}")
    values = {k: convert(hints[k], v, f"{path + '.' if path else ''}{k}") for k, v in raw.items()}
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{path + '.' if path else ''}{missing[0]}: required")
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check(where)
    return obj
