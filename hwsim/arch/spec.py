"""Architectures: the hardware a backend's work is charged for, explicit and validated.

Three kinds (hwsim/arch/defaults.yaml documents every key): ``digital`` (the TT-contraction engine of
rtl/tt_core.v as an ASIC: ideal and fixed backends), ``fpga`` (the same engine as the rtl backend builds
it) and ``photonic`` (MZI-block cores, time-multiplexed or replicated). A backend names its kind
(``Backend.architecture``) and supplies the keys its simulation itself uses (:meth:`Backend.architecture_keys`:
the rtl core's lanes and clock, the photonic block size, mesh and symbol rate); a config's
``architecture:`` section overrides the rest. Design choices live here; device physics (energies,
losses, powers, with sources) in hwsim/energy/devices.yaml.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from typing import Literal, Union

from hwsim import yaml12
from hwsim.config import ConfigError, from_dict
from hwsim.text import excerpt

Auto = Union[int, Literal["auto"]]


@dataclass(frozen=True)
class Engine:
    """The TT-contraction engine (docs/rtl.md): ``lanes`` rows side by side, one MAC per lane and cycle,
    weights broadcast from a weight RAM, states in two ping-pong banks of wide words (one value per
    lane). ``fabric``: asic (digital) or fpga (rtl)."""

    fabric: Literal["asic", "fpga"] = "asic"
    lanes: int = 16
    clock_mhz: float = 500.0
    weight_buffer_bytes: Auto = "auto"
    state_buffer_bytes: Auto = "auto"

    @property
    def kind(self) -> str:
        return "digital" if self.fabric == "asic" else "fpga"

    def check(self, p: str) -> None:
        _at_least(f"{p}.lanes", self.lanes, 1)
        _positive(f"{p}.clock_mhz", self.clock_mhz)
        for key in ("weight_buffer_bytes", "state_buffer_bytes"):
            if getattr(self, key) != "auto":
                _at_least(f"{p}.{key}", getattr(self, key), 1)


@dataclass(frozen=True)
class PhotonicChip:
    """The photonic chip: TT cores on ``block`` x ``block`` MZI blocks (``mesh`` layout), each core
    ``time_multiplexed`` (one physical copy, one sub-vector per symbol and wavelength) or ``replicated``
    (a copy per sub-vector of a row); the partial sums of a core's block columns added as ``photocurrent``
    (the detectors of one output wired to one TIA and ADC) or ``digital`` (every block's outputs digitised,
    then added); ``wdm`` wavelengths; converters charged at ``converter_bits`` where the
    noise model simulates none; ``buffer_bytes`` of SRAM between cores."""

    block: int = 8
    mesh: str = "clements"
    symbol_rate_hz: float = 1e10
    cores: Literal["time_multiplexed", "replicated"] = "time_multiplexed"
    partial_sums: Literal["photocurrent", "digital"] = "photocurrent"
    wdm: int = 1
    converter_bits: int = 8
    buffer_bytes: Auto = "auto"

    kind = "photonic"

    def check(self, p: str) -> None:
        _at_least(f"{p}.wdm", self.wdm, 1)
        _positive(f"{p}.symbol_rate_hz", self.symbol_rate_hz)
        if not 2 <= self.converter_bits <= 24:
            raise ConfigError(f"{p}.converter_bits: {excerpt(self.converter_bits)} is not allowed; use a width in 2..24 bits")
        if self.buffer_bytes != "auto":
            _at_least(f"{p}.buffer_bytes", self.buffer_bytes, 1)


KINDS = {"digital": Engine, "fpga": Engine, "photonic": PhotonicChip}
Architecture = Union[Engine, PhotonicChip]


def _positive(path: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{path}: expected a number > 0, got {excerpt(value)}")


def _at_least(path: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{path}: expected an integer >= {low}, got {excerpt(value)}")


def defaults() -> dict[str, dict]:
    """The shipped sections of hwsim/arch/defaults.yaml, by kind."""
    return yaml12.load((resources.files("hwsim.arch") / "defaults.yaml").read_text())


def resolve(backend, overrides: dict | None = None) -> Architecture:
    """The architecture of ``backend``: its kind's shipped section, then the config's ``architecture:``
    ``overrides``, then the keys the backend's own simulation sets (overriding one of those is an error
    naming the backend option to use instead)."""
    kind = backend.architecture
    overrides = overrides or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"architecture: expected a mapping of architecture keys, got {excerpt(overrides)}")
    owned = backend.architecture_keys()
    for key in overrides:
        if key in owned:
            raise ConfigError(f"architecture.{key}: set by the {backend.name} backend's simulation; "
                              f"use backend.{owned[key][1]}")
    raw = {**defaults()[kind], **overrides, **{k: v for k, (v, _) in owned.items()}}
    if kind in ("digital", "fpga"):
        raw["fabric"] = "asic" if kind == "digital" else "fpga"
    allowed = {f.name for f in dataclasses.fields(KINDS[kind])} - set(owned) - {"fabric"}
    for key in overrides:
        if key not in allowed:
            raise ConfigError(f"architecture.{key}: not a key of the {kind} architecture (backend "
                              f"{backend.name}); allowed: {', '.join(sorted(allowed))}")
    arch = from_dict(KINDS[kind], raw, "architecture")
    arch.check("architecture")
    return arch


def describe(arch: Architecture) -> dict:
    """The resolved architecture as a plain mapping (RUN/architecture.json)."""
    return {"kind": arch.kind, **dataclasses.asdict(arch)}
