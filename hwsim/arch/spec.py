"""A backend's architecture resolved from its record and a config, and the network mapped onto it.

A backend's record names its architecture kind (``Backend.architecture``, hwsim.arch.kind); the kind's
spec dataclass holds every key with its shipped default; a config's ``architecture:`` section overrides
them, and the keys the backend's simulation itself sets (:meth:`Backend.architecture_keys`: e.g. an FPGA
core's lanes and clock, an MZI block size) come last: overriding one of those is an error naming the
backend option to use instead. docs/energy.md explains every shipped kind's keys.
"""
from __future__ import annotations

import dataclasses

from hwsim.config import from_dict
from hwsim.errors import ConfigError
from hwsim.text import excerpt


def resolve(backend, overrides: dict | None = None):
    """The architecture (an instance of the kind's spec) of ``backend`` with the config's ``architecture:``
    ``overrides``; a key that is not the kind's, or that the backend sets, is a ConfigError naming it."""
    kind = backend.architecture
    overrides = overrides or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"architecture: expected a mapping of architecture keys, got {excerpt(overrides)}")
    owned = backend.architecture_keys()
    for key in overrides:
        if key in owned:
            raise ConfigError(f"architecture.{key}: set by the {backend.name} backend's simulation; "
                              f"use backend.{owned[key][1]}")
    allowed = {f.name for f in dataclasses.fields(kind.spec)} - set(owned) - set(kind.preset)
    for key in overrides:
        if key not in allowed:
            raise ConfigError(f"architecture.{key}: not a key of the {kind.name} architecture (backend "
                              f"{backend.name}); allowed: {', '.join(sorted(allowed))}")
    raw = {**overrides, **{k: v for k, (v, _) in owned.items()}, **kind.preset}
    return from_dict(kind.spec, raw, "architecture")


def describe(backend, arch) -> dict:
    """The resolved architecture as a plain mapping (RUN/architecture.json)."""
    return {"kind": backend.architecture.name, **dataclasses.asdict(arch)}


def map_network(network, backend, arch):
    """``network`` mapped onto ``arch`` by ``backend``'s architecture kind (its mapping object)."""
    return backend.architecture.map(network, backend, arch)
