"""The terms of an energy estimate and the primitives cost models build them from.

Every figure is a :class:`Term`: count x energy per action = joules (or seconds x watts), with the
device-table entries (and so the sources) it used; an :class:`Estimate` adds the device time. Cost models
(hwsim.arch.kind.ArchitectureKind.cost) build estimates; the layers above (``hwsim energy``, reports) read
them. The equations, their assumptions and limits are in docs/energy.md.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace

from hwsim.energy.table import Table

COMPONENTS = ("compute", "memory", "converters", "laser", "heaters", "static")


@dataclass
class Term:
    """One line of an estimate: ``count`` actions of ``per`` joules each (or seconds x watts) = ``joules``."""

    component: str
    action: str
    count: float
    per: float
    entries: tuple[str, ...]
    note: str = ""

    @property
    def joules(self) -> float:
        return self.count * self.per


@dataclass
class Estimate:
    """The terms of an estimate and the device time (``latency_s``, from ``latency``: (what, seconds))."""

    terms: list[Term] = field(default_factory=list)
    latency: list[tuple[str, float]] = field(default_factory=list)

    @property
    def joules(self) -> float:
        return sum(t.joules for t in self.terms)

    @property
    def latency_s(self) -> float:
        return sum(s for _, s in self.latency)

    def scaled(self, factor: float) -> "Estimate":
        """Every count and latency term x ``factor`` (an estimate is linear in its counters)."""
        return Estimate([replace(t, count=t.count * factor) for t in self.terms],
                        [(what, s * factor) for what, s in self.latency])

    def plus(self, other: "Estimate") -> "Estimate":
        """This estimate and the nonzero terms and latency of ``other``."""
        return Estimate(self.terms + [t for t in other.terms if t.count],
                        self.latency + [(w, s) for w, s in other.latency if s])

    def only(self, components) -> "Estimate":
        """The terms of ``components`` (an accounting that charges only those); the latency unchanged."""
        return Estimate([t for t in self.terms if t.component in components], list(self.latency))

    def by_component(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for t in self.terms:
            out[t.component] += t.joules
        return {c: out[c] for c in COMPONENTS if c in out}


def mult_energy(table: Table, a: int, w: int) -> tuple[float, str]:
    """An a x w-bit integer multiply: the nearest tabulated width (8 or 32 bits) scaled by a w / width^2
    (multiplier energy grows with the partial products; Accelergy/hwcomponents' quadratic rule)."""
    base = 8 if max(a, w) <= 16 else 32
    name = f"int{base}_mult"
    return table[name] * a * w / base ** 2, name


def add_energy(table: Table, bits: int) -> tuple[float, str]:
    """A bits-wide integer add: the nearest tabulated width scaled linearly."""
    base = 8 if bits <= 16 else 32
    name = f"int{base}_add"
    return table[name] * bits / base, name




SRAM_TIERS = (("sram_read_64b_8kb", 8 << 10), ("sram_read_64b_32kb", 32 << 10), ("sram_read_64b_1mb", 1 << 20))


def memory_per_bit(table: Table, size_bytes: int) -> tuple[float, str]:
    """Energy per bit of an access to a buffer of ``size_bytes``: the 64-bit read of the smallest tabulated
    SRAM that holds it (8 KB, 32 KB, 1 MB; a write charged as a read), DRAM beyond 1 MB."""
    for name, capacity in SRAM_TIERS:
        if size_bytes <= capacity:
            return table[name] / 64, name
    return table["dram_64b"] / 64, "dram_64b"


def float_mac(table: Table, bits: int) -> tuple[float, tuple[str, str]]:
    """A floating-point multiply-add at ``bits`` (16, 32, 64)."""
    names = (f"fp{bits}_mult", f"fp{bits}_add")
    return table[names[0]] + table[names[1]], names
