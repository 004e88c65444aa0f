"""The photonic chip as an architecture kind: TT cores on MZI blocks, its mapping and its cost model.

Every TT core (a dense weight is one core) is tiled into ``block`` x ``block`` MZI blocks (backend.block),
each an SVD block U S V on Clements meshes with its own modulators at the inputs and detectors at the
outputs. A core is applied to the sub-vectors of each row (core k of a layer: prod(m_<k) x prod(n_>k)
sub-vectors of r_k n_k values), ``time_multiplexed`` (one physical copy, one sub-vector per symbol and
wavelength) or ``replicated`` (a copy per sub-vector, a row in one symbol); with ``wdm`` wavelengths a
time-multiplexed core takes that many sub-vectors in one symbol, each on its own wavelength through the
same blocks (the multi-wavelength tensor cores of Xiao et al., APL Photonics 6, 126107, 2021; the
phases' wavelength dependence is not modelled). Between cores: detect, ADC,
SRAM, DAC, modulate. The device figures the cost model uses are in devices.yaml beside this file.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from hwsim.arch.engine import Auto, at_least, positive
from hwsim.arch.kind import ArchitectureKind
from hwsim.arch.workload import Workload, core_shapes, fmt_bytes, pow2_bytes, tensor_names
from hwsim.energy.table import Table
from hwsim.energy.terms import Estimate, Term, add_energy, memory_per_bit
from hwsim.errors import ConfigError
from hwsim.model import Linear
from hwsim.text import excerpt
from hwsim.tt import Step, tt_steps


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

    def check(self, p: str) -> None:
        at_least(f"{p}.wdm", self.wdm, 1)
        positive(f"{p}.symbol_rate_hz", self.symbol_rate_hz)
        if not 2 <= self.converter_bits <= 24:
            raise ConfigError(f"{p}.converter_bits: {excerpt(self.converter_bits)} is not allowed; use a width in 2..24 bits")
        if self.buffer_bytes != "auto":
            at_least(f"{p}.buffer_bytes", self.buffer_bytes, 1)


@dataclass(frozen=True)
class CoreMap:
    """One weight tensor (region) of a layer on the chip: its (m_k r_k+1) x (r_k n_k) matrix on a
    ``grid`` (rows, columns) of n x n blocks, ``copies`` physical copies of them, ``symbols`` per row,
    ``wavelengths`` lit in every block (the sub-vectors a copy takes in one symbol, at most ``wdm``).
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
    wavelengths: int = 1

    @property
    def blocks(self) -> int:
        return self.grid[0] * self.grid[1] * self.copies

    @property
    def lit_inputs(self) -> int:
        """Block inputs that need laser power: every wavelength lit in every block."""
        return self.blocks * self.wavelengths

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

    @property
    def lit_inputs(self) -> int:
        """Block inputs x wavelengths the lasers feed (hwsim charges them for the whole device time)."""
        return sum(c.lit_inputs for layer in self.layers for c in layer.cores)

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
                 f"{sum(l.shifters for l in self.layers):,} phase shifters, {self.lit_inputs:,} lit block inputs; modulator DACs {self.input_bits} bits, "
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
            per_copy = -(-step.subvectors // copies)             # sub-vectors a copy takes per row
            symbols, wavelengths = -(-per_copy // arch.wdm), min(arch.wdm, per_copy)
            cores.append(CoreMap(f"{i}.{name}", step, grid, copies, symbols, n, arch.partial_sums == "digital",
                                 wavelengths))
            need = max(need, step.values * adc)
        need = max(need, layer.in_features * adc, layer.out_features * adc)    # the layer's input and output too
        layers.append(PhotonicLayer(i, layer.in_features, layer.out_features, tuple(cores)))
    buffer = pow2_bytes(2 * need) if arch.buffer_bytes == "auto" else arch.buffer_bytes
    return PhotonicMap(arch, tuple(layers), buffer, adc, dac_bits or arch.converter_bits, input_bits or arch.converter_bits)


def dac_energy(table: Table, bits: int) -> float:
    """DAC energy per sample at ``bits``: the 8-bit part scaled by (2^bits / bits) (current-steering DAC
    power ~ 2^bits / bits x rate; the Lightening-Transformer hardware model's rule)."""
    return table["dac_8b_sample"] * (2 ** bits / bits) / (2 ** 8 / 8)


def adc_energy(table: Table, bits: int) -> float:
    """SAR ADC energy per sample at ``bits``: the 8-bit part scaled by bits / 8 (SAR power ~ bits x rate)."""
    return table["adc_8b_sample"] * bits / 8


def laser_power(table: Table, path_mzis: int, outputs: int, bits: int) -> float:
    """Wall-plug laser power (W) so that every one of ``outputs`` detectors still receives its sensitivity
    after the modulator and ``path_mzis`` MZIs in series, times 2^bits for the read-out precision (the SNR
    rule of SimPhony and Lightening-Transformer: an assumption): 10^((S + IL_mod + IL_mzi depth +
    10 log10 N_out) / 10) mW / eta x 2^bits."""
    db = (table["detector_sensitivity"] + table["modulator_loss"] + table["mzi_loss"] * path_mzis
          + 10 * math.log10(outputs))
    return 10 ** (db / 10) * 1e-3 / table["laser_wall_plug"] * 2 ** bits


LASER_ENTRIES = ("detector_sensitivity", "modulator_loss", "mzi_loss", "laser_wall_plug")


def photonic_cost(mapping: PhotonicMap, counters: dict, table: Table) -> Estimate:
    """The photonic chip of ``mapping``: lasers and held heaters powered for the whole device time,
    phase DACs per shifter programmed, per sub-vector the modulators' DACs and modulators, detectors'
    ADCs and TIAs, digital partial sums and the SRAM between cores; latency = every layer programming's
    settling, one after another, + the symbols, core after core."""
    est, arch = Estimate(), mapping.arch
    ev = mapping.events(Workload.from_counters(counters))
    settle, rate, n = table["phase_shifter_settle"], arch.symbol_rate_hz, arch.block
    programming, optical = ev.get("programs", 0) * settle, ev.get("symbols", 0) / rate
    seconds = programming + optical
    est.latency.append(("layer programmings x phase_shifter_settle (one after another)", programming))
    est.latency.append((f"symbols / {rate:g} per s (architecture.symbol_rate_hz; cores one after another)", optical))
    block = laser_power(table, 2 * n + 1, n, mapping.adc_bits)
    lasers = mapping.lit_inputs
    est.terms.append(Term("laser", f"lasers on for the device time (s): {lasers:,} lit block inputs ({mapping.blocks:,} "
                                   f"blocks, {arch.wdm} wavelength(s) at most) x {block:.4g} W ({2 * n + 1} MZIs deep, "
                                   f"{n} outputs, {mapping.adc_bits} bits)", seconds, lasers * block, LASER_ENTRIES))
    held = ev.get("held_pi", 0.0)
    est.terms.append(Term("heaters", f"held heater load (mean sum |phase|/pi = {held:.5g}) x device time (pi-s)",
                          held * seconds, table["phase_shifter_p_pi"], ("phase_shifter_p_pi",),
                          "a thermo-optic shifter dissipates P_pi |phase| / pi while it holds its phase"))
    est.terms.append(Term("converters", f"phase DAC writes ({mapping.dac_bits} bits)", ev.get("phase_writes", 0),
                          dac_energy(table, mapping.dac_bits), ("dac_8b_sample",)))
    mods, dets = ev.get("modulations", 0), ev.get("detections", 0)
    est.terms.append(Term("converters", f"modulator DAC samples ({mapping.input_bits} bits)", mods,
                          dac_energy(table, mapping.input_bits), ("dac_8b_sample",)))
    est.terms.append(Term("converters", "modulator symbols", mods, table["modulator_symbol"], ("modulator_symbol",)))
    est.terms.append(Term("converters", f"ADC samples ({mapping.adc_bits} bits)", dets,
                          adc_energy(table, mapping.adc_bits), ("adc_8b_sample",)))
    est.terms.append(Term("converters", "TIA on for one symbol per detection (s)", dets / rate, table["tia_power"],
                          ("tia_power",)))
    add32, add_name = add_energy(table, 32)
    est.terms.append(Term("compute", "digital partial sums of block columns (32-bit adds)",
                          ev.get("partial_sum_adds", 0), add32, (add_name,)))
    per, tier = memory_per_bit(table, mapping.buffer_bytes)
    est.terms.append(Term("memory", f"SRAM between cores ({fmt_bytes(mapping.buffer_bytes)}) bits",
                          ev.get("buffer_bits", 0), per, (tier,), "a write charged as a read"))
    calibration_cost(est, mapping, counters, table, lasers * block)
    return est


def calibration_cost(est: Estimate, mapping: PhotonicMap, counters: dict, table: Table, laser_w: float) -> None:
    """The terms of the chip's calibrations (backend counters ``calibration_*``, backends/photonic/
    calibration.py), added to ``est``: every phase setting settles (``phase_shifter_settle``) and every
    probe takes a symbol, one after another; the lasers (``laser_w``, all blocks) are on for that time, the
    heaters hold each setting's load while it settles; every setting writes its shifters' DACs; every
    probe value is converted and modulated, every detector output read (ADC, TIA)."""
    settings = counters.get("calibration_settings", 0)
    if not settings:
        return
    rate, settle = mapping.arch.symbol_rate_hz, table["phase_shifter_settle"]
    settling, probing = settings * settle, counters.get("calibration_symbols", 0) / rate
    est.latency.append(("calibration: phase settings x phase_shifter_settle", settling))
    est.latency.append((f"calibration: probe symbols / {rate:g} per s", probing))
    mods, dets = counters.get("calibration_modulations", 0), counters.get("calibration_detections", 0)
    est.terms += [
        Term("laser", "calibration: lasers on for the calibration time (s)", settling + probing, laser_w,
             LASER_ENTRIES),
        Term("heaters", "calibration: heater load of every setting (sum |phase|/pi) x its settling (pi-s)",
             counters.get("calibration_held_pi", 0.0) * settle, table["phase_shifter_p_pi"],
             ("phase_shifter_p_pi", "phase_shifter_settle")),
        Term("converters", f"calibration: phase DAC writes ({mapping.dac_bits} bits)",
             counters.get("calibration_phase_writes", 0), dac_energy(table, mapping.dac_bits), ("dac_8b_sample",)),
        Term("converters", f"calibration: probe modulator DAC samples ({mapping.input_bits} bits)", mods,
             dac_energy(table, mapping.input_bits), ("dac_8b_sample",)),
        Term("converters", "calibration: probe modulator symbols", mods, table["modulator_symbol"], ("modulator_symbol",)),
        Term("converters", f"calibration: detector ADC samples ({mapping.adc_bits} bits)", dets,
             adc_energy(table, mapping.adc_bits), ("adc_8b_sample",)),
        Term("converters", "calibration: TIA on for one symbol per detection (s)", dets / rate, table["tia_power"],
             ("tia_power",)),
    ]



PHOTONIC = ArchitectureKind(
    "photonic", PhotonicChip,
    lambda network, backend, arch: map_photonic(network, arch, *backend.converter_widths()),
    photonic_cost, devices=(resources.files("hwsim.backends.photonic") / "devices.yaml",),
    assumptions=resources.files("hwsim.backends.photonic") / "assumptions", assumable=("backend.noise.",),
    summary="MZI-block cores with modulators, detectors, converters and SRAM between cores")
