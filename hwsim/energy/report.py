"""A run's energy, latency and memory figures (metrics.json fields) and the ``--explain`` listing."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from hwsim import yaml12
from hwsim.arch.workload import Workload
from hwsim.energy.table import Table
from hwsim.energy.terms import COMPONENTS, Estimate
from hwsim.errors import ConfigError
from hwsim.text import excerpt


ASSUMABLE = ("energy.", "architecture.")     # what changes the charging, not the run (+ the kind's own keys)


@dataclass(frozen=True)
class Assumptions:
    """A named set of charging assumptions: ``items`` (``--set`` overrides of device-table, architecture
    and the kind's assumable keys) and ``charge``, the components its accounting charges (None: all)."""

    name: str
    items: list[str]
    charge: tuple[str, ...] | None = None


def assumptions(name: str, kind) -> Assumptions:
    """The set ``name`` of architecture ``kind`` (its ``assumptions`` folder: NAME.yaml) or a YAML file
    {description, set: [key=value, ...], charge: [component, ...] (optional)}; ``set`` may change only
    device-table and architecture keys (``ASSUMABLE``) and those the kind names (``assumable``)."""
    folder = kind.assumptions
    shipped = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")) if folder else []
    path = Path(name)
    if name in shipped:
        text = (folder / f"{name}.yaml").read_text()
    elif path.suffix in (".yaml", ".yml") and path.is_file():
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--assume {name}: cannot be read ({type(e).__name__})") from None
    else:
        raise ConfigError(f"--assume {name}: not a shipped assumption set of the {kind.name} architecture "
                          f"({', '.join(shipped) or 'it has none'}) or a YAML file")
    try:
        raw = yaml12.load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"--assume {name}: not valid YAML ({str(e).splitlines()[0][:120]})") from None
    items = raw.get("set") if isinstance(raw, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, str) and "=" in i for i in items):
        raise ConfigError(f"--assume {name}: expected a mapping with set: [key=value, ...]")
    for item in items:
        allowed = ASSUMABLE + kind.assumable
        if not item.startswith(allowed):
            raise ConfigError(f"--assume {name}: {item.split('=')[0]} changes the run, not its charging; "
                              f"allowed: {', '.join(k + '*' for k in allowed)}")
    charge = raw.get("charge")
    if charge is not None and (not isinstance(charge, list) or not charge
                               or not all(isinstance(c, str) and c in COMPONENTS for c in charge)):
        raise ConfigError(f"--assume {name}: charge: {excerpt(charge)} is not allowed; use a non-empty list of "
                          f"{', '.join(COMPONENTS)}")
    return Assumptions(Path(name).stem if name not in shipped else name, items,
                       tuple(charge) if charge is not None else None)


ONE_OFF = "calibration_"       # counters of work done once per run (a chip's calibration), not per step


def split_one_off(counters: dict) -> tuple[dict, dict]:
    """(the training steps' counters, the one-off counters: ``ONE_OFF`` keys)."""
    return ({k: v for k, v in counters.items() if not k.startswith(ONE_OFF)},
            {k: v for k, v in counters.items() if k.startswith(ONE_OFF)})


def subtract(total: dict, part: dict) -> dict:
    """Counters of ``total`` minus ``part`` (keys of numbers)."""
    return {k: v - part.get(k, 0) for k, v in total.items() if isinstance(v, (int, float))}


def run_figures(kind, mapping, table: Table, training: dict, inference: dict, steps: int) -> dict:
    """metrics.json fields from the counters of the training steps and of one evaluation (its inputs are
    the inferences) on ``mapping`` (by architecture ``kind``, hwsim.arch.kind), charged by its cost model."""
    train, infer = kind.cost(mapping, training, table), kind.cost(mapping, inference, table)
    per = max(1, Workload.from_counters(inference).rows)
    overrides = sorted(name for name, e in table.entries.items() if e.source == "user")
    return {"energy_j_training": train.joules, "latency_s_training": train.latency_s,
            "energy_j_per_step": train.joules / max(1, steps), "latency_s_per_step": train.latency_s / max(1, steps),
            "energy_j_per_inference": infer.joules / per, "latency_s_per_inference": infer.latency_s / per,
            "energy_breakdown_training": train.by_component(),
            "energy_breakdown_per_inference": {k: v / per for k, v in infer.by_component().items()},
            "energy_table_overrides": overrides}


def explain(est: Estimate, table: Table, title: str, scale: float = 1.0, charged: Assumptions | None = None) -> str:
    """Every term: count x energy per action = joules, and the sources of the entries it used; then the
    latency terms. ``scale`` divides counts (e.g. per inference); an accounting that ``charged`` only some
    components marks the others and gives both totals."""
    total = f"{est.joules / scale:.4g} J"
    if charged and charged.charge:
        total = f"{est.only(charged.charge).joules / scale:.4g} J charged by {charged.name} (the full accounting: {total})"
    lines = [f"{title}: {total}, {est.latency_s / scale:.4g} s on the device"]
    used: list[str] = []
    for t in est.terms:
        if not t.count:
            continue
        skip = "[not charged] " if charged and charged.charge and t.component not in charged.charge else ""
        lines.append(f"  {t.component:10s} {skip}{t.action}: {t.count / scale:.6g} x {t.per:.4g} = {t.joules / scale:.4g} J"
                     f"  [{', '.join(t.entries)}]" + (f" ({t.note})" if t.note else ""))
        used += [n for n in t.entries if n not in used]
    for what, seconds in est.latency:
        lines.append(f"  latency    {what}: {seconds / scale:.4g} s")
    lines.append("  entries:")
    for name in used:
        e = table.entry(name)
        band = f" [{e.low:g}..{e.high:g} {e.unit}]" if e.low is not None and e.high is not None else ""
        lines.append(f"    {name} = {e.given:g} {e.given_unit}{band} ({e.kind}): {e.cite()}")
    return "\n".join(lines)
