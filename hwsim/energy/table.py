"""Device tables: one entry per primitive action or device figure, each with its unit and source.

The shipped table is ``hwsim/energy/devices.yaml``. Values are converted to SI units on loading (J, W, s,
Hz, B; dB and dBm stay as they are). An entry without a source, or with an unknown unit or kind, does not
load. Overrides (a config's ``energy:`` section, or a user YAML file) replace entries by name; an override
is recorded with ``source: user`` so every report shows it was not a cited figure.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import yaml

from hwsim import yaml12
from hwsim.errors import ConfigError
from hwsim.text import excerpt

KINDS = ("measured", "survey", "derived", "assumption")
UNITS = {"fJ": 1e-15, "pJ": 1e-12, "nJ": 1e-9, "J": 1.0, "uW": 1e-6, "mW": 1e-3, "W": 1.0, "ns": 1e-9,
         "us": 1e-6, "ms": 1e-3, "s": 1.0, "MHz": 1e6, "GHz": 1e9, "Hz": 1.0, "B": 1.0, "bit": 1.0, "1": 1.0,
         "dB": 1.0, "dBm": 1.0}
SI = {"fJ": "J", "pJ": "J", "nJ": "J", "J": "J", "uW": "W", "mW": "W", "W": "W", "ns": "s", "us": "s",
      "ms": "s", "s": "s", "MHz": "Hz", "GHz": "Hz", "Hz": "Hz", "B": "B", "bit": "bit", "1": "1", "dB": "dB",
      "dBm": "dBm"}


@dataclass(frozen=True)
class Entry:
    """One figure: ``value`` (and ``low`` / ``high``) in SI units ``unit``; ``given`` is the value as written
    in ``given_unit``."""

    name: str
    value: float
    unit: str
    kind: str
    source: str
    locator: str = ""
    low: float | None = None
    high: float | None = None
    given: float | None = None
    given_unit: str = ""

    def cite(self) -> str:
        return self.source + (f" ({self.locator})" if self.locator else "")


class Table:
    """Entries by name; ``table["int8_mult"]`` is the SI value, ``table.entry(name)`` the whole entry."""

    def __init__(self, entries: dict[str, Entry]):
        self.entries = entries

    def __getitem__(self, name: str) -> float:
        return self.entry(name).value

    def entry(self, name: str) -> Entry:
        try:
            return self.entries[name]
        except KeyError:
            raise KeyError(f"device table has no entry {name!r}") from None

    def overridden(self, overrides: dict | None, where: str = "energy") -> "Table":
        """A copy with entries replaced: ``{name: value}`` (in the entry's own unit) or ``{name: {value,
        unit, ...}}``; recorded as ``source: user``. Unknown names are a ConfigError naming them."""
        if not overrides:
            return self
        if not isinstance(overrides, dict):
            raise ConfigError(f"{where}: expected a mapping of device-table entries, got {excerpt(overrides)}")
        out = dict(self.entries)
        for name, spec in overrides.items():
            if name not in out:
                raise ConfigError(f"{where}.{name}: unknown device-table entry; known: {', '.join(sorted(out))}")
            old = out[name]
            if isinstance(spec, str):
                spec = _with_unit(spec, old, f"{where}.{name}")
            elif not isinstance(spec, dict):
                spec = {"value": spec}
            unit = spec.get("unit", old.given_unit)
            if unit in SI and SI[unit] != old.unit:
                raise ConfigError(f"{where}.{name}.unit: {unit} does not measure {name} ({old.unit})")
            spec = {"unit": old.given_unit, "kind": "assumption", "locator": f"replaces {old.cite()}",
                    **spec, "source": "user"}
            out[name] = _entry(name, spec, f"{where}.{name}")
        return Table(out)

    def to_dict(self) -> dict:
        return {name: asdict(e) for name, e in self.entries.items()}


def _number(value, where: str, unit: str) -> float:
    """A finite number in ``unit``: > 0 (energies, powers, times, rates, sizes, factors), >= 0 for a loss
    in dB; any finite level in dBm."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a number (in {unit}), got {excerpt(value)}")
    if unit == "dB" and value < 0:
        raise ConfigError(f"{where}: {value:g} dB is not allowed; a loss is >= 0 dB")
    if unit not in ("dB", "dBm") and value <= 0:
        raise ConfigError(f"{where}: {value:g} {unit} is not allowed; use a number > 0 (in {unit})")
    return float(value)


def _with_unit(text: str, old: Entry, where: str) -> dict:
    """``"95uW"`` -> {value: 95, unit: uW}; the unit must measure what the entry measures."""
    match = re.fullmatch(r"\s*([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z1]+)\s*", text)
    if not match or match[2] not in UNITS:
        raise ConfigError(f"{where}: {excerpt(text)} is not a number with a unit; give e.g. {old.given:g}{old.given_unit} "
                          f"(a bare number is in {old.given_unit}; units: {', '.join(UNITS)})")
    if SI[match[2]] != old.unit:
        same = ", ".join(u for u in UNITS if SI[u] == old.unit)
        raise ConfigError(f"{where}: {match[2]} does not measure {old.name} ({old.unit}); use one of {same}")
    return {"value": float(match[1]), "unit": match[2]}


def _entry(name: str, spec, where: str) -> Entry:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping with value, unit, kind and source, got {excerpt(spec)}")
    unknown = sorted(set(spec) - {"value", "unit", "kind", "source", "locator", "low", "high"})
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; allowed: value, unit, kind, source, locator, low, high")
    if not isinstance(spec.get("source"), str) or not spec["source"].strip():
        raise ConfigError(f"{where}: has no source; every figure needs one (a citation, or 'user')")
    unit = spec.get("unit")
    if unit not in UNITS:
        raise ConfigError(f"{where}.unit: {excerpt(unit)} is not allowed; use one of {', '.join(UNITS)}")
    if spec.get("kind") not in KINDS:
        raise ConfigError(f"{where}.kind: {excerpt(spec.get('kind'))} is not allowed; use one of {', '.join(KINDS)}")
    scale = UNITS[unit]
    value = _number(spec.get("value"), f"{where}.value", unit)
    band = {k: _number(spec[k], f"{where}.{k}", unit) * scale for k in ("low", "high") if spec.get(k) is not None}
    if len(band) == 2 and band["low"] > band["high"]:
        raise ConfigError(f"{where}: low {spec['low']:g} is above high {spec['high']:g} ({unit})")
    return Entry(name, value * scale, SI[unit], spec["kind"], spec["source"], spec.get("locator", ""),
                 band.get("low"), band.get("high"), value, unit)


def _read(text: str, where: str) -> dict:
    try:
        raw = yaml12.load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"device table {where}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"device table {where}: expected a mapping of entries")
    return raw


def parse_table(text: str, where: str) -> Table:
    """A table from YAML text (every entry complete, with its source)."""
    return Table({name: _entry(name, spec, f"{where}: {name}") for name, spec in _read(text, where).items()})


def load_table(overrides: dict | None = None, files: list[str | Path] = (), kind=None) -> Table:
    """The shipped device table plus the entries of architecture ``kind`` (hwsim.arch.kind: its
    ``devices`` files, complete entries with sources), with the entries of user table ``files`` (YAML
    mappings name -> value or {value, unit, ...}), then ``overrides`` (a config's ``energy:`` section)
    put in place."""
    table = parse_table((resources.files("hwsim.energy") / "devices.yaml").read_text(), "devices.yaml")
    for source in (kind.devices if kind is not None else ()):
        extra = parse_table(source.read_text(), source.name)
        clash = sorted(set(extra.entries) & set(table.entries))
        if clash:
            raise ConfigError(f"device table {source.name}: entry {clash[0]!r} is already in the shipped table")
        table = Table({**table.entries, **extra.entries})
    for path in files:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"device table {path}: cannot be read ({e.strerror or e})") from None
        table = table.overridden(_read(text, str(path)), str(path))
    return table.overridden(overrides)
