"""An architecture kind: how one family of hardware is described, mapped and charged.

A backend's record names its kind (``Backend.architecture``); everything the layers above need to turn
a run's workload into joules and seconds comes from it, never from the backend's name:

- ``spec``: a frozen dataclass of the architecture's keys with their defaults (the keys a config's
  ``architecture:`` section may set), with ``check(path)`` raising hwsim.errors.ConfigError;
- ``map(network, backend, spec) -> mapping``: every layer of the network on that hardware; a mapping has
  ``events(workload) -> dict`` (hwsim.arch.workload.Workload) and ``report() -> str`` (RUN/mapping.txt);
- ``cost(mapping, counters, table) -> hwsim.energy.terms.Estimate``: the events of a run's counters times
  device-table entries;
- ``devices``: YAML files (importlib resources) of the device-table entries the cost model uses beyond
  hwsim's shipped table, in its format (value, unit, kind, source, locator);
- ``preset``: keys this kind fixes (not settable under ``architecture:``);
- ``assumptions``: a folder (importlib resources) of named charging-assumption sets for ``hwsim energy
  --assume NAME`` (YAML: description, set: [key=value, ...]); ``assumable``: config key prefixes besides
  ``energy.`` and ``architecture.`` such a set may change because they change only what is charged
  (e.g. converter widths the cost model reads from a backend option).

Kinds shipped with hwsim: the TT-contraction engine as an ASIC or an FPGA (hwsim.arch.engine); a backend
package brings its own (an MZI-mesh chip in its backend's folder, a micro-controller in a plug-in).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class ArchitectureKind:
    name: str
    spec: type
    map: Callable[[Any, Any, Any], Any]
    cost: Callable[[Any, dict, Any], Any]
    devices: tuple[Any, ...] = ()
    preset: dict = field(default_factory=dict)
    assumptions: Any = None
    assumable: tuple[str, ...] = ()
    summary: str = ""
