"""Cost models: a backend's counters times device-table entries = joules and seconds on the device.

Backends only count events (MACs by precision, bits moved, phases programmed, detections, simulated
cycles); this module, above the Backend seam, turns counts into energy and latency. Every figure is a
:class:`Term`: count x energy per action = joules, with the table entries (and so the sources) it used.
The equations, their assumptions and limits are in docs/energy.md.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch

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


def sram_per_bit(table: Table) -> tuple[float, str]:
    """Energy per bit of an SRAM access, from the 64-bit read of the smallest tabulated SRAM that holds
    ``digital_sram_bytes`` (8 KB, 32 KB, 1 MB; larger SRAMs are charged as 1 MB)."""
    size = table["digital_sram_bytes"]
    name = next((n for n, cap in (("sram_read_64b_8kb", 8 << 10), ("sram_read_64b_32kb", 32 << 10))
                 if size <= cap), "sram_read_64b_1mb")
    return table[name] / 64, name


def _digital_memory(est: Estimate, table: Table, c: dict, weight_bytes: float) -> None:
    """Weight and activation traffic: SRAM per bit; weights from DRAM when the model's weights do not fit
    the on-chip SRAM (``digital_sram_bytes``)."""
    per_bit, tier = sram_per_bit(table)
    if weight_bytes > table["digital_sram_bytes"]:
        est.terms.append(Term("memory", "weight reads from DRAM (bits)", c.get("weight_read_bits", 0),
                              table["dram_64b"] / 64, ("dram_64b", "digital_sram_bytes")))
    else:
        est.terms.append(Term("memory", "weight reads from SRAM (bits)", c.get("weight_read_bits", 0), per_bit,
                              (tier, "digital_sram_bytes")))
    traffic = c.get("act_read_bits", 0) + c.get("act_write_bits", 0)
    est.terms.append(Term("memory", "activation reads + writes, SRAM (bits)", traffic, per_bit, (tier,),
                          "a write charged as a read"))


def _digital_time(est: Estimate, table: Table, macs: float) -> None:
    seconds = macs / (table["digital_mac_units"] * table["digital_clock"])
    est.latency.append(("MACs / (digital_mac_units x digital_clock)", seconds))
    est.terms.append(Term("static", "static power x device time (s)", seconds, table["digital_static_power"],
                          ("digital_static_power", "digital_mac_units", "digital_clock")))


def ideal_model(backend, counters: dict, table: Table, weight_count: int) -> Estimate:
    """A digital float accelerator: a MAC = multiply + add at the simulation's precision (float32 or
    float64), weights and activations through SRAM (DRAM beyond it), MAC-array latency, static power."""
    est, macs = Estimate(), 0
    for key, n in sorted(counters.items()):
        if key.startswith("macs_float"):
            fp = "fp" + key[len("macs_float"):]
            est.terms.append(Term("compute", f"{fp} MACs", n, table[f"{fp}_mult"] + table[f"{fp}_add"],
                                  (f"{fp}_mult", f"{fp}_add")))
            macs += n
    bits = torch.finfo(backend.dtype).bits
    _digital_memory(est, table, counters, weight_count * bits / 8)
    _digital_time(est, table, macs)
    return est


def fixed_model(backend, counters: dict, table: Table, weight_count: int) -> Estimate:
    """The integer spec on a digital accelerator: a MAC = a x w-bit multiply + 32-bit accumulate, a
    requantization = one 32-bit add (shift, round, saturate), traffic in the spec's widths."""
    est, macs = Estimate(), 0
    add32, add_name = add_energy(table, 32)
    for key, n in sorted(counters.items()):
        if key.startswith("macs_int"):
            a, w = (int(v) for v in key[len("macs_int"):].split("xint"))
            mult, mult_name = mult_energy(table, a, w)
            est.terms.append(Term("compute", f"int{a} x int{w} MACs (+ 32-bit accumulate)", n, mult + add32,
                                  (mult_name, add_name)))
            macs += n
    requant = sum(n for k, n in counters.items() if k.startswith("requantizations_layer"))
    est.terms.append(Term("compute", "requantizations (one 32-bit add each)", requant, add32, (add_name,)))
    _digital_memory(est, table, counters, weight_count * backend.formats["weight"].bits / 8)
    _digital_time(est, table, macs)
    return est


def rtl_model(backend, counters: dict, table: Table, weight_count: int) -> Estimate:
    """The Verilog TT core on an FPGA: its own MAC and RAM counters (ASIC energies x ``fpga_factor``), the
    emulated layers (dense ones) as on the fixed accelerator, latency = simulated cycles / the core's
    clock (``backend.clock_mhz``), static power x that time."""
    est = Estimate()
    fpga = table["fpga_factor"]
    f = backend.formats
    mult, mult_name = mult_energy(table, f["input"].bits, f["weight"].bits)
    add32, add_name = add_energy(table, 32)
    core_macs = counters.get("rtl_macs", 0)
    est.terms.append(Term("compute", "core MACs (FPGA)", core_macs, (mult + add32) * fpga,
                          (mult_name, add_name, "fpga_factor")))
    other = sum(n for k, n in counters.items() if k.startswith("macs_int")) - core_macs
    if other > 0:
        est.terms.append(Term("compute", "MACs of layers emulated off the core", other, mult + add32,
                              (mult_name, add_name)))
    per_bit, tier = sram_per_bit(table)
    mid = f["intermediate"]
    mid_bits = mid.bits if hasattr(mid, "bits") else max(m.bits for m in mid)
    for key, bits, what in (("rtl_weight_reads", f["weight"].bits, "weight RAM reads"),
                            ("rtl_state_reads", mid_bits, "state RAM reads"),
                            ("rtl_state_writes", mid_bits, "state RAM writes"), ("rtl_bias_reads", 32, "bias reads")):
        est.terms.append(Term("memory", f"{what} (bits, FPGA)", counters.get(key, 0) * bits, per_bit * fpga,
                              (tier, "fpga_factor")))
    clock = backend.options.clock_mhz
    seconds = counters.get("rtl_cycles", 0) / (clock * 1e6)
    est.latency.append((f"simulated core cycles / {clock:g} MHz (backend.clock_mhz)", seconds))
    est.terms.append(Term("static", "FPGA static power x core time (s)", seconds, table["rtl_static_power"],
                          ("rtl_static_power",), f"clock {clock:g} MHz (backend.clock_mhz)"))
    return est


def dac_energy(table: Table, bits: int) -> float:
    """DAC energy per sample at ``bits``: the 8-bit part scaled by (2^bits / bits) (current-steering DAC
    power ~ 2^bits / bits x rate; the Lightening-Transformer hardware model's rule)."""
    return table["dac_8b_sample"] * (2 ** bits / bits) / (2 ** 8 / 8)


def adc_energy(table: Table, bits: int) -> float:
    """SAR ADC energy per sample at ``bits``: the 8-bit part scaled by bits / 8 (SAR power ~ bits x rate)."""
    return table["adc_8b_sample"] * bits / 8


def laser_power(table: Table, path_mzis: int, outputs: int, bits: int, mzi_loss_db: float | None = None) -> float:
    """Wall-plug laser power (W) so that every one of ``outputs`` detectors still receives its sensitivity
    after the modulator and ``path_mzis`` MZIs in series, times 2^bits for the read-out precision (the SNR
    rule of SimPhony and Lightening-Transformer: an assumption): 10^((S + IL_mod + IL_mzi depth +
    10 log10 N_out) / 10) mW / eta. ``mzi_loss_db``: the chip's own loss per MZI (else the table's)."""
    loss = table["mzi_loss"] if mzi_loss_db is None else mzi_loss_db
    db = table["detector_sensitivity"] + table["modulator_loss"] + loss * path_mzis + 10 * math.log10(outputs)
    return 10 ** (db / 10) * 1e-3 / table["laser_wall_plug"] * 2 ** bits


def photonic_model(backend, counters: dict, table: Table, weight_count: int) -> Estimate:
    """The photonic chip: lasers (per layer, from the link budget of the mesh built), heaters (from the
    phases programmed, held while settling and while light passes), DACs per phase written and per input
    value, modulators per input value, ADCs and TIAs per detection; latency = settling per programming of
    a layer (sequential: an upper bound) + optical time."""
    est = Estimate()
    noise, default = backend.noise, int(table["converter_default_bits"])
    adc_bits, dac_bits = noise.adc_bits or default, noise.dac_bits or default
    rate = backend.options.symbol_rate_hz
    chip_loss = noise.insertion_loss_db or None          # the simulated chip's own MZI loss, when it has one
    loss_entries = ("detector_sensitivity", "modulator_loss", "laser_wall_plug") + (("mzi_loss",) if chip_loss is None else ())
    for layer in backend.hardware():
        i = layer["index"]
        power = laser_power(table, layer["path_mzis"], layer["outputs"], adc_bits, chip_loss)
        where = f"{chip_loss} dB/MZI of backend.noise" if chip_loss is not None else "mzi_loss"
        est.terms.append(Term("laser", f"layer {i} laser on (s): {layer['path_mzis']} MZIs deep ({where}), "
                                       f"{layer['outputs']} outputs, {adc_bits} bits -> {power:.4g} W",
                              counters.get(f"laser_on_ns_layer{i}", 0) * 1e-9, power, loss_entries))
    settle = table["phase_shifter_settle"]
    p_pi = table["phase_shifter_p_pi"]
    est.terms.append(Term("heaters", "heater load (sum |phase|/pi) x settling time (s)",
                          counters.get("phase_pi", 0) * settle, p_pi, ("phase_shifter_p_pi", "phase_shifter_settle")))
    est.terms.append(Term("heaters", "heater load x time light passes (s)", counters.get("phase_pi_ns", 0) * 1e-9,
                          p_pi, ("phase_shifter_p_pi",)))
    est.terms.append(Term("converters", f"phase DAC writes ({dac_bits} bits)", counters.get("phase_writes", 0),
                          dac_energy(table, dac_bits), ("dac_8b_sample", "converter_default_bits")))
    symbols = counters.get("modulator_symbols", 0)
    est.terms.append(Term("converters", f"input DAC samples ({default} bits)", symbols, dac_energy(table, default),
                          ("dac_8b_sample", "converter_default_bits")))
    est.terms.append(Term("converters", "input modulator symbols", symbols, table["modulator_symbol"],
                          ("modulator_symbol",)))
    detections = counters.get("detections", 0)
    est.terms.append(Term("converters", f"ADC samples ({adc_bits} bits)", detections, adc_energy(table, adc_bits),
                          ("adc_8b_sample", "converter_default_bits")))
    est.terms.append(Term("converters", "TIA on per detection (s)", detections / rate, table["tia_power"],
                          ("tia_power",), f"symbol rate {rate:g}/s (backend.symbol_rate_hz)"))
    est.latency.append(("layer programmings x phase_shifter_settle", counters.get("phase_programs", 0) * settle))
    est.latency.append(("light through the chip (symbols / rate)", counters.get("laser_on_ns", 0) * 1e-9))
    return est


MODELS = {"ideal": ideal_model, "fixed": fixed_model, "rtl": rtl_model, "photonic": photonic_model}


def estimate(backend, counters: dict, table: Table, weight_count: int) -> Estimate | None:
    """The estimate of ``counters`` on ``backend`` (bound to the run's network; ``weight_count`` trained
    parameters), or None for a backend without a cost model."""
    model = MODELS.get(backend.name)
    return None if model is None else model(backend, counters, table, weight_count)
