"""Cost models: the events of a workload on a mapped architecture times device-table entries = joules
and seconds on the device.

A run counts its workload (forward passes, programmings, the heaters' held load; hwsim.arch.mapping.Workload);
the mapping of the network onto the backend's architecture turns it into events (MACs by width, buffer
bits, conversions, symbols, cycles); this module, above the Backend seam, turns events into energy and
latency. Every figure is a :class:`Term`: count x energy per action = joules, with the table entries
(and so the sources) it used.
The equations, their assumptions and limits are in docs/energy.md.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from hwsim.arch.mapping import EngineMap, PhotonicMap, Workload, fmt_bytes
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


def engine_model(mapping: EngineMap, counters: dict, table: Table) -> Estimate:
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


def photonic_model(mapping: PhotonicMap, counters: dict, table: Table) -> Estimate:
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
    lasers = mapping.blocks * arch.wdm
    est.terms.append(Term("laser", f"lasers on for the device time (s): {lasers:,} block inputs ({mapping.blocks:,} "
                                   f"blocks x {arch.wdm} wavelength(s)) x {block:.4g} W ({2 * n + 1} MZIs deep, "
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
    return est


def estimate(mapping: EngineMap | PhotonicMap, counters: dict, table: Table) -> Estimate:
    """The energy and latency of a workload (``counters`` of a run or of part of it) on ``mapping``."""
    model = photonic_model if isinstance(mapping, PhotonicMap) else engine_model
    return model(mapping, counters, table)
