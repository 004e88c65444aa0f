"""Every layer of a network mapped onto an architecture, and the events a workload causes on it.

A mapping is computed once per run from the network's shapes, the backend's operand widths and the
resolved architecture (hwsim.arch); it is reported like Timeloop's mapping report (:meth:`report`, in
RUN/mapping.txt and ``hwsim energy RUN --explain``). The events of a :class:`Workload` (forward passes,
programmings, the heaters' held load: what the run counted) are mapping x workload, so they do not
depend on how the simulator grouped its work: not on chunks, ranks or evaluation batching (one
exception: with ``estimator.cache_prefix`` the host keeps the front layers' outputs, and the heaters'
load is counted for the rows the chip ran).

Shapes of a TT layer's core step k (hwsim.tt.Step): T_k = r_k n_k terms per value, V_k values and
S_k = D_k R_k sub-vectors per row; a dense layer is a one-core TT layer (1, in, out, 1).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hwsim.model import Linear, TTLinear
from hwsim.tt import Step, tt_steps

if TYPE_CHECKING:
    from hwsim.arch.spec import Engine, PhotonicChip


@dataclass(frozen=True)
class Widths:
    """A linear layer's operands on the device, in bits: ``float`` MACs (at ``weight`` bits) or integer;
    ``results``: each core step's result (the last is the layer output); ``bias``: bias words."""

    float: bool
    input: int
    weight: int
    results: tuple[int, ...]
    bias: int = 32


@dataclass
class Workload:
    """What a run asked of the device, from its counters: ``passes`` {rows: forward passes of that many
    rows through the whole network}, ``programs`` {layer index: times its weights were (re)programmed},
    ``held_pi`` {region "<layer>.<tensor>": sum over the rows through it of the region's sum |phase| / pi
    while they passed}: divided by the rows, the mean load the region's heaters held."""

    passes: dict[int, int] = field(default_factory=dict)
    programs: dict[int, int] = field(default_factory=dict)
    held_pi: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_counters(cls, counters: dict) -> "Workload":
        w = cls()
        for key, n in counters.items():
            if not n:
                continue
            if m := re.fullmatch(r"passes_rows(\d+)", key):
                w.passes[int(m[1])] = w.passes.get(int(m[1]), 0) + int(n)
            elif m := re.fullmatch(r"programs_layer(\d+)", key):
                w.programs[int(m[1])] = int(n)
            elif key.startswith("held_pi_rows:"):
                w.held_pi[key[len("held_pi_rows:"):]] = float(n)
        return w

    @property
    def rows(self) -> int:
        """Input rows through the network, all passes."""
        return sum(b * n for b, n in self.passes.items())

    @property
    def pass_count(self) -> int:
        return sum(self.passes.values())

    def groups(self, lanes: int) -> int:
        """Groups of at most ``lanes`` rows: every pass fills its own (its rows share one weight setting)."""
        return sum(-(-b // lanes) * n for b, n in self.passes.items())


def core_shapes(layer) -> list[tuple[int, int, int, int]]:
    """(r, n, m, r') of every core of a linear layer; a dense weight is one core (1, in, out, 1)."""
    return list(layer.tt.core_shapes) if isinstance(layer, TTLinear) else [(1, layer.in_features, layer.out_features, 1)]


def tensor_names(layer) -> list[str]:
    return list(layer.core_names) if isinstance(layer, TTLinear) else ["weight"]


def pow2_bytes(bits: int) -> int:
    """The smallest power of two bytes holding ``bits``."""
    return 1 << max(0, math.ceil(math.log2(max(1, -(-bits // 8)))))


def fmt_bytes(n: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"


# --- the TT-contraction engine (digital ASIC, FPGA) --------------------------------------------------

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


# --- the photonic chip ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CoreMap:
    """One weight tensor (region) of a layer on the chip: its (m_k r_k+1) x (r_k n_k) matrix on a
    ``grid`` (rows, columns) of n x n blocks, ``copies`` physical copies of them, ``symbols`` per row.
    Per sub-vector: every input value is converted (DAC) and modulated once and split to the blocks of
    its block column; every output is read (TIA, ADC) once with the block columns' photocurrents summed,
    or (``digital``) every block's outputs are read and added digitally; the result is written to the
    buffer, the next core's input read. Zero padding of the last block row and column is neither
    modulated nor read."""

    region: str
    step: Step
    grid: tuple[int, int]
    copies: int
    symbols: int
    n: int
    digital: bool = False         # partial sums digitised block by block (else summed as photocurrents)

    @property
    def blocks(self) -> int:
        return self.grid[0] * self.grid[1] * self.copies

    @property
    def shifters(self) -> int:
        return self.blocks * self.n ** 2

    def per_row(self) -> dict[str, int]:
        """Conversions and digital work per input row; ``digital``: the block columns' partial sums are
        digitised one by one and added, else their photocurrents add before one TIA and ADC per output."""
        s, gc, mr, terms = self.step.subvectors, self.grid[1], self.step.mr, self.step.terms
        return {"modulations": s * terms, "detections": s * (gc * mr if self.digital else mr),
                "partial_sum_adds": s * (gc - 1) * mr if self.digital else 0,
                "buffer_writes": s * mr, "buffer_reads": s * terms}


@dataclass(frozen=True)
class PhotonicLayer:
    index: int
    in_features: int
    out_features: int
    cores: tuple[CoreMap, ...]

    @property
    def shifters(self) -> int:
        return sum(c.shifters for c in self.cores)

    @property
    def symbols_per_row(self) -> int:
        """Symbols a row takes through the layer, core after core (no overlap between cores)."""
        return sum(c.symbols for c in self.cores)


@dataclass(frozen=True)
class PhotonicMap:
    """A network on the photonic chip ``arch``: its layers' cores, the SRAM between cores (bytes) and the
    converter widths charged (ADC, phase DAC, modulator DAC; bits)."""

    arch: PhotonicChip
    layers: tuple[PhotonicLayer, ...]
    buffer_bytes: int
    adc_bits: int
    dac_bits: int
    input_bits: int

    @property
    def blocks(self) -> int:
        return sum(c.blocks for layer in self.layers for c in layer.cores)

    def layer(self, index: int) -> PhotonicLayer:
        return next(layer for layer in self.layers if layer.index == index)

    def events(self, w: Workload) -> dict:
        """Counts of a workload: per-row conversions (``modulations``, ``detections``, ``partial_sum_adds``,
        ``buffer_bits``), ``symbols`` (optical time slots, sequential), ``programs`` and ``phase_writes``,
        and ``held_pi``: the mean load sum |phase| / pi of all programmed shifters (every copy) while held."""
        out: Counter = Counter()
        for layer in self.layers:
            for core in layer.cores:
                for key, n in core.per_row().items():
                    out[key] += w.rows * n
            out["symbols"] += w.rows * layer.symbols_per_row
            out["programs"] += w.programs.get(layer.index, 0)
            out["phase_writes"] += w.programs.get(layer.index, 0) * layer.shifters
        copies = {c.region: c.copies for layer in self.layers for c in layer.cores}
        out["held_pi"] = sum(load * copies.get(region, 1) for region, load in w.held_pi.items()) / max(1, w.rows)
        bits = self.adc_bits
        out["buffer_bits"] = (out.pop("buffer_writes") + out.pop("buffer_reads")) * bits
        return dict(out)

    def report(self) -> str:
        a = self.arch
        lines = [f"photonic chip: {a.block}x{a.block} {a.mesh} MZI blocks, cores {a.cores.replace('_', '-')}, "
                 f"{a.wdm} wavelength(s), {a.symbol_rate_hz / 1e9:g} GS/s; {self.blocks:,} physical blocks, "
                 f"{sum(l.shifters for l in self.layers):,} phase shifters; modulator DACs {self.input_bits} bits, "
                 f"ADCs {self.adc_bits} bits, phase DACs {self.dac_bits} bits; partial sums {a.partial_sums}; between "
                 f"cores: detect, ADC, SRAM buffer {fmt_bytes(self.buffer_bytes)}, DAC, modulate"]
        for layer in self.layers:
            lines.append(f"  layer {layer.index} ({layer.in_features} -> {layer.out_features}): "
                         f"{layer.symbols_per_row:,} symbols per row, {layer.shifters:,} shifters")
            lines.append("    tensor   matrix     blocks (grid x copies)  sub-vectors/row  symbols/row  "
                         "DAC+mod/row  ADC reads/row  adds/row")
            for c in layer.cores:
                r = c.per_row()
                matrix = f"{c.step.mr}x{c.step.terms}"
                lines.append(f"    {c.region.split('.', 1)[1]:8s} {matrix:10s} {c.blocks:6,d} ({c.grid[0]}x{c.grid[1]} x "
                             f"{c.copies:,})".ljust(47) + f"{c.step.subvectors:15,d}  {c.symbols:11,d}  "
                             f"{r['modulations']:11,d}  {r['detections']:14,d}  {r['partial_sum_adds']:8,d}")
        return "\n".join(lines)


def map_photonic(network, arch: PhotonicChip, adc_bits: int | None, dac_bits: int | None,
                 input_bits: int | None) -> PhotonicMap:
    """The chip's blocks for every weight tensor; the converter widths of the noise model (ADC, phase
    DAC, modulator DAC; None: not simulated, charged at the architecture's ``converter_bits``)."""
    n, layers, need = arch.block, [], 0
    adc = adc_bits or arch.converter_bits
    for i, layer in enumerate(network.layers):
        if not isinstance(layer, Linear):
            continue
        cores = []
        for name, shape, step in zip(tensor_names(layer), core_shapes(layer), tt_steps(core_shapes(layer))):
            grid = (-(-step.mr // n), -(-step.terms // n))
            copies = 1 if arch.cores == "time_multiplexed" else step.subvectors
            symbols = -(-step.subvectors // (copies * arch.wdm))
            cores.append(CoreMap(f"{i}.{name}", step, grid, copies, symbols, n, arch.partial_sums == "digital"))
            need = max(need, step.values * adc)
        need = max(need, layer.in_features * adc, layer.out_features * adc)    # the layer's input and output too
        layers.append(PhotonicLayer(i, layer.in_features, layer.out_features, tuple(cores)))
    buffer = pow2_bytes(2 * need) if arch.buffer_bytes == "auto" else arch.buffer_bytes
    return PhotonicMap(arch, tuple(layers), buffer, adc, dac_bits or arch.converter_bits, input_bits or arch.converter_bits)


def map_network(network, backend, arch: "Engine | PhotonicChip") -> "EngineMap | PhotonicMap":
    """``network`` on ``arch`` with ``backend``'s widths (engine) or converter widths (photonic)."""
    if arch.kind == "photonic":
        return map_photonic(network, arch, *backend.converter_widths())
    return map_engine(network, arch, backend.layer_widths)
