"""The TT-contraction engine (docs/rtl.md) as an architecture kind: ``digital`` (an ASIC) and ``fpga``
(the same engine on an FPGA). Backends name the one their work is charged on.

``lanes`` rows side by side, one MAC per lane and cycle, weights broadcast from a weight RAM, states in
two ping-pong banks of wide words (one value per lane). The mapping (:class:`EngineMap`) counts, per
layer and core step, MAC issues, wide-word reads and writes and cycles exactly as rtl/tt_core.v runs
them; the cost model (:func:`engine_cost`) charges MACs at their operand widths, every buffer's traffic
at the SRAM tier its size selects, static power for the device time.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Literal, Union

from hwsim.arch.kind import ArchitectureKind
from hwsim.arch.workload import Widths, Workload, core_shapes, fmt_bytes, pow2_bytes
from hwsim.energy.table import Table
from hwsim.energy.terms import Estimate, Term, add_energy, float_mac, memory_per_bit, mult_energy
from hwsim.errors import ConfigError
from hwsim.model import Linear
from hwsim.text import excerpt
from hwsim.tt import Step, tt_steps

Auto = Union[int, Literal["auto"]]


@dataclass(frozen=True)
class Engine:
    """The TT-contraction engine (docs/rtl.md): ``lanes`` rows side by side, one MAC per lane and cycle,
    weights broadcast from a weight RAM, states in two ping-pong banks of wide words (one value per
    lane). ``fabric``: asic or fpga (the kind's preset)."""

    fabric: Literal["asic", "fpga"] = "asic"
    lanes: int = 16
    clock_mhz: float = 500.0
    weight_buffer_bytes: Auto = "auto"
    state_buffer_bytes: Auto = "auto"

    def check(self, p: str) -> None:
        at_least(f"{p}.lanes", self.lanes, 1)
        positive(f"{p}.clock_mhz", self.clock_mhz)
        for key in ("weight_buffer_bytes", "state_buffer_bytes"):
            if getattr(self, key) != "auto":
                at_least(f"{p}.{key}", getattr(self, key), 1)


@dataclass(frozen=True)
class EngineLayer:
    """Layer ``index`` on the engine: per group of ``lanes`` rows, step k issues V_k T_k MAC cycles (one
    weight word read, broadcast, and one state wide word read each) and writes V_k wide words; a group
    takes 1 + sum_k (V_k T_k + 4) cycles (setup, drain), a pass adds in + out + 3 streaming cycles."""

    index: int
    in_features: int
    out_features: int
    bias: bool
    steps: tuple[Step, ...]
    widths: Widths
    weights: int

    @property
    def macs_per_row(self) -> int:
        return sum(s.values * s.terms for s in self.steps)

    @property
    def writes_per_group(self) -> int:
        return sum(s.values for s in self.steps)

    @property
    def cycles_per_group(self) -> int:
        return 1 + sum(s.values * s.terms + 4 for s in self.steps)

    @property
    def stream_cycles(self) -> int:
        return self.in_features + self.out_features + 3

    def read_widths(self) -> list[int]:
        """Bits of the state value each step reads (the layer input, then the previous step's result)."""
        return [self.widths.input, *self.widths.results[:-1]]


@dataclass(frozen=True)
class EngineMap:
    """A network on the TT engine ``arch``, with its buffer sizes resolved (bytes)."""

    arch: Engine
    layers: tuple[EngineLayer, ...]
    weight_buffer_bytes: int
    state_buffer_bytes: int
    io_buffer_bytes: int

    def events(self, w: Workload) -> dict:
        """Counts of a workload: ``macs`` {(float, a bits, w bits): n}, ``requantizations``, memory
        ``bits`` {buffer: bits} (weight reads, state reads + writes, streams in and out, bias reads, weight
        programming), ``cycles``. Wide words are charged at lanes x width."""
        lanes = self.arch.lanes
        groups = w.groups(lanes)
        macs: Counter = Counter()
        bits: Counter = Counter()
        requant = cycles = 0
        for layer in self.layers:
            wid = layer.widths
            for step, read in zip(layer.steps, layer.read_widths()):
                macs[(wid.float, read, wid.weight)] += w.rows * step.values * step.terms
            if not wid.float:
                requant += w.rows * layer.writes_per_group
            issues = sum(s.values * s.terms for s in layer.steps)
            bits["weight RAM"] += groups * issues * wid.weight
            bits["state RAM"] += groups * lanes * sum(s.values * (s.terms * r + o) for s, r, o in
                                                      zip(layer.steps, layer.read_widths(), wid.results))
            bits["I/O buffers"] += groups * lanes * (layer.in_features * wid.input + layer.out_features * wid.results[-1])
            if layer.bias:
                bits["bias RAM"] += groups * layer.out_features * wid.bias
            bits["weight RAM"] += w.programs.get(layer.index, 0) * layer.weights * wid.weight
            cycles += sum(n * (layer.stream_cycles + -(-b // lanes) * layer.cycles_per_group) for b, n in w.passes.items())
        return {"macs": dict(macs), "requantizations": requant, "bits": dict(bits), "cycles": cycles}

    def buffer_bytes(self) -> dict[str, int]:
        return {"weight RAM": self.weight_buffer_bytes, "state RAM": self.state_buffer_bytes,
                "I/O buffers": self.io_buffer_bytes, "bias RAM": self.io_buffer_bytes}

    def report(self) -> str:
        a = self.arch
        lines = [f"TT-contraction engine ({a.fabric}): {a.lanes} lanes at {a.clock_mhz:g} MHz; weight RAM "
                 f"{fmt_bytes(self.weight_buffer_bytes)}, state RAM 2 banks x {fmt_bytes(self.state_buffer_bytes)}, "
                 f"I/O buffers {fmt_bytes(self.io_buffer_bytes)} each"]
        for layer in self.layers:
            wid = layer.widths
            kind = "float" if wid.float else "int"
            lines.append(f"  layer {layer.index} ({layer.in_features} -> {layer.out_features}, {len(layer.steps)} "
                         f"core step(s), {kind}{wid.input} x {kind}{wid.weight}): {layer.macs_per_row:,} MACs per row; "
                         f"per group of {a.lanes} rows {layer.cycles_per_group:,} cycles, "
                         f"{layer.macs_per_row:,} weight-word reads, {layer.macs_per_row:,} + "
                         f"{layer.writes_per_group:,} state wide-word reads + writes; per pass + "
                         f"{layer.stream_cycles:,} streaming cycles")
            lines.append("    step  terms T  values V  sub-vectors S  result bits")
            for k, (s, bits) in enumerate(zip(layer.steps, wid.results)):
                lines.append(f"    {k:4d}  {s.terms:7d}  {s.values:8,d}  {s.subvectors:13,d}  {bits:11d}")
        return "\n".join(lines)


def map_engine(network, arch: Engine, widths) -> EngineMap:
    """``widths(index, layer) -> Widths`` of every linear layer."""
    layers = []
    for i, layer in enumerate(network.layers):
        if isinstance(layer, Linear):
            shapes = core_shapes(layer)
            layers.append(EngineLayer(i, layer.in_features, layer.out_features, layer.bias, tuple(tt_steps(shapes)),
                                      widths(i, layer), sum(math.prod(s) for s in shapes)))
    wbits = sum(l.weights * l.widths.weight for l in layers)
    sbits = max(max(s.values for s in l.steps) * max(l.widths.results) for l in layers) * arch.lanes
    iobits = max(max(l.in_features * l.widths.input, l.out_features * l.widths.results[-1]) for l in layers) * arch.lanes
    auto = lambda value, need: pow2_bytes(need) if value == "auto" else value      # noqa: E731
    return EngineMap(arch, tuple(layers), auto(arch.weight_buffer_bytes, wbits), auto(arch.state_buffer_bytes, sbits),
                     pow2_bytes(iobits))


def engine_cost(mapping: EngineMap, counters: dict, table: Table) -> Estimate:
    """The TT-contraction engine (ASIC, or FPGA at ``fpga_factor`` x the ASIC's dynamic energies): MACs at
    their operand widths, requantizations, every buffer's traffic at the tier its size selects, latency =
    cycles / clock, static power x that time (FPGA: the device's; ASIC: the buffers' SRAM leakage)."""
    est, arch = Estimate(), mapping.arch
    ev = mapping.events(Workload.from_counters(counters))
    fpga = arch.fabric == "fpga"
    scale, extra = (table["fpga_factor"], ("fpga_factor",)) if fpga else (1.0, ())
    where = "FPGA" if fpga else "ASIC"
    add32, add_name = add_energy(table, 32)
    for (is_float, a, w), n in sorted(ev["macs"].items()):
        if is_float:
            per, names = float_mac(table, w)
            label = f"fp{w} MACs"
        else:
            mult, mult_name = mult_energy(table, a, w)
            per, names, label = mult + add32, (mult_name, add_name), f"int{a} x int{w} MACs (+ 32-bit accumulate)"
        est.terms.append(Term("compute", f"{label}, {where}", n, per * scale, names + extra))
    est.terms.append(Term("compute", f"requantizations (one 32-bit add each), {where}", ev["requantizations"],
                          add32 * scale, (add_name,) + extra))
    sizes = mapping.buffer_bytes()
    for buffer, bits in sorted(ev["bits"].items()):
        per, tier = memory_per_bit(table, sizes[buffer])
        est.terms.append(Term("memory", f"{buffer} ({fmt_bytes(sizes[buffer])}) bits, {where}", bits, per * scale,
                              (tier,) + extra, "wide words charged at lanes x width; a write as a read"))
    seconds = ev["cycles"] / (arch.clock_mhz * 1e6)
    est.latency.append((f"engine cycles / {arch.clock_mhz:g} MHz (architecture.clock_mhz)", seconds))
    if fpga:
        est.terms.append(Term("static", "FPGA static power x device time (s)", seconds, table["fpga_static_power"],
                              ("fpga_static_power",)))
    else:
        held = sizes["weight RAM"] + 2 * sizes["state RAM"] + 3 * sizes["I/O buffers"]
        est.terms.append(Term("static", f"SRAM leakage of {fmt_bytes(held)} of buffers x device time (s)", seconds,
                              table["sram_leakage_485b"] * held / 485, ("sram_leakage_485b",),
                              "weight RAM, 2 state banks, input, output and bias buffers; logic leakage not counted"))
    return est



def positive(path: str, value: float) -> None:
    """Refuse ``value`` at config key ``path`` unless it is > 0."""
    if not value > 0:
        raise ConfigError(f"{path}: expected a number > 0, got {excerpt(value)}")


def at_least(path: str, value: int, low: int) -> None:
    """Refuse ``value`` at config key ``path`` unless it is >= ``low``."""
    if value < low:
        raise ConfigError(f"{path}: expected an integer >= {low}, got {excerpt(value)}")


DIGITAL = ArchitectureKind("digital", Engine, lambda network, backend, arch: map_engine(network, arch, backend.layer_widths),
                           engine_cost, preset={"fabric": "asic"},
                           summary="the TT-contraction engine of rtl/tt_core.v as an ASIC")
FPGA = ArchitectureKind("fpga", Engine, lambda network, backend, arch: map_engine(network, arch, backend.layer_widths),
                        engine_cost, preset={"fabric": "fpga"}, summary="the TT-contraction engine on an FPGA")
