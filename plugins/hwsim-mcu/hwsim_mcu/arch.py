"""The Cortex-M architecture kind: the part's keys, a network mapped onto the core, and its cost model.

A micro-controller runs the network as a sequence of CMSIS-NN style kernel calls on one in-order core
(hwsim_mcu.kernels): for every input row and core step, V_k T_k int8 MACs (one SMLAD retires two) and
V_k requantisations; every ReLU element is one int8 max; after every optimizer step the host-side rule
(round and clamp the integer codes) runs on the core once per parameter. The core's run-mode current
includes its SRAM and flash accesses, so the energy is cycles x energy per cycle (V x I per MHz / 1e6);
the bytes a row moves are reported (RUN/mapping.txt) but not charged separately. Latency = cycles / clock.
Every figure is an entry of hwsim_mcu/devices.yaml, with its source.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources

from hwsim.arch.kind import ArchitectureKind
from hwsim.arch.workload import Workload, core_shapes, fmt_bytes
from hwsim.energy.terms import Estimate, Term
from hwsim.errors import ConfigError
from hwsim.model import Activation, Linear
from hwsim.text import excerpt
from hwsim.tt import Step, tt_steps


DEVICES = resources.files("hwsim_mcu") / "devices.yaml"
KIB = 1024


@dataclass(frozen=True)
class CortexM:
    """A Cortex-M class micro-controller: ``part`` (a label for reports and messages), core clock, on-chip
    SRAM (the training state must fit: hwsim's memory report compares against it) and flash (the deployed
    int8 model must fit), and ``simd``: the DSP extension's dual 16-bit MAC (SMLAD; Cortex-M4/M7/M33),
    else one MAC per MLA; ``micro_batch``: input rows the kernels hold at once (a training step's batch
    streams through in micro-batches, the losses summed as they come: the live activations are those of
    one micro-batch). Defaults: the STM32F746 (Cortex-M7), the part of CMSIS-NN's and MCUNet's
    measurements (devices.yaml: mcu_clock, mcu_sram, mcu_flash)."""

    part: str = "STM32F746"
    clock_mhz: float = 216.0
    sram_bytes: int = 320 * KIB
    flash_bytes: int = 1024 * KIB
    simd: bool = True
    micro_batch: int = 1

    def check(self, path: str) -> None:
        if not isinstance(self.part, str) or not self.part.strip():
            raise ConfigError(f"{path}.part: expected the part's name, got {excerpt(self.part)}")
        if isinstance(self.clock_mhz, bool) or not isinstance(self.clock_mhz, (int, float)) \
                or not math.isfinite(self.clock_mhz) or not self.clock_mhz > 0:
            raise ConfigError(f"{path}.clock_mhz: expected a number of MHz > 0, got {excerpt(self.clock_mhz)}")
        if self.micro_batch < 1:
            raise ConfigError(f"{path}.micro_batch: expected a number of rows >= 1, got {excerpt(self.micro_batch)}")
        for key in ("sram_bytes", "flash_bytes"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{path}.{key}: expected a number of bytes >= 1, got {excerpt(value)}")


@dataclass(frozen=True)
class McuLayer:
    """Linear layer ``index`` on the core: its core steps (hwsim.tt.Step), parameters (int8 weights, int32
    biases) and the ReLU elements that follow it, all per input row where it says so."""

    index: int
    in_features: int
    out_features: int
    steps: tuple[Step, ...]
    weights: int
    biases: int
    relu: int

    @property
    def macs_per_row(self) -> int:
        return sum(s.values * s.terms for s in self.steps)

    @property
    def requants_per_row(self) -> int:
        return sum(s.values for s in self.steps)

    @property
    def param_bytes(self) -> int:
        return self.weights + 4 * self.biases

    @property
    def sram_read_per_row(self) -> int:
        """Bytes read per row: one int8 weight and one int8 state value per MAC (no register reuse counted:
        an upper bound), a 4-byte bias per output."""
        return 2 * self.macs_per_row + 4 * (self.out_features if self.biases else 0) + self.relu

    @property
    def sram_write_per_row(self) -> int:
        """Bytes written per row: every requantised int8 value, every ReLU result."""
        return self.requants_per_row + self.relu

    def cycles_per_row(self, c: dict) -> float:
        return self.macs_per_row * c["mac"] + self.requants_per_row * c["requant"] + self.relu * c["relu"]


@dataclass(frozen=True)
class McuMap:
    """A network on the Cortex-M ``arch``; ``figures``: the cycle figures of the plug-in's shipped table,
    used by :meth:`report` only (cost() reads the run's table)."""

    arch: CortexM
    layers: tuple[McuLayer, ...]
    figures: dict

    @property
    def param_bytes(self) -> int:
        return sum(layer.param_bytes for layer in self.layers)

    def events(self, w: Workload) -> dict:
        """Counts of a workload: ``macs`` (int8 x int8), ``requantizations``, ``relu`` elements, ``updates``
        (parameters rounded and clamped after optimizer steps), ``sram_read_bytes``, ``sram_write_bytes``
        (reported, not charged: the run-mode current includes them)."""
        out = dict.fromkeys(("macs", "requantizations", "relu", "updates", "sram_read_bytes", "sram_write_bytes"), 0)
        for layer in self.layers:
            out["macs"] += w.rows * layer.macs_per_row
            out["requantizations"] += w.rows * layer.requants_per_row
            out["relu"] += w.rows * layer.relu
            out["sram_read_bytes"] += w.rows * layer.sram_read_per_row
            out["sram_write_bytes"] += w.rows * layer.sram_write_per_row
            out["updates"] += w.programs.get(layer.index, 0) * (layer.weights + layer.biases)
        return out

    def report(self) -> str:
        a, c = self.arch, self.figures
        lines = [f"{a.part} (Cortex-M, {a.clock_mhz:g} MHz, {'SIMD SMLAD' if a.simd else 'scalar MLA'}): SRAM "
                 f"{fmt_bytes(a.sram_bytes)}, flash {fmt_bytes(a.flash_bytes)}; int8 weights + int32 biases "
                 f"{self.param_bytes:,} B; cycles at devices.yaml's figures ({c['mac']:g} per MAC, "
                 f"{c['requant']:g} per requantisation, {c['relu']:g} per ReLU element)"]
        lines.append("  layer  in -> out    steps  MACs/row  requants/row  ReLU/row  cycles/row  "
                     "SRAM read B/row  SRAM write B/row  params B")
        for layer in self.layers:
            lines.append(f"  {layer.index:5d}  {f'{layer.in_features} -> {layer.out_features}':11s}  "
                         f"{len(layer.steps):5d}  {layer.macs_per_row:8,d}  {layer.requants_per_row:12,d}  "
                         f"{layer.relu:8,d}  {layer.cycles_per_row(c):10,.0f}  {layer.sram_read_per_row:15,d}  "
                         f"{layer.sram_write_per_row:16,d}  {layer.param_bytes:8,d}")
        return "\n".join(lines)


def load_devices():
    """The plug-in's device table (hwsim_mcu/devices.yaml) alone."""
    from hwsim.energy.table import parse_table
    return parse_table(DEVICES.read_text(), "hwsim_mcu/devices.yaml")


def cycle_figures(table, arch: CortexM) -> dict:
    """Cycles per MAC (SIMD or scalar), per requantisation, per ReLU element and per parameter update,
    and the entries they come from."""
    mac = "mcu_cycles_per_mac_simd" if arch.simd else "mcu_cycles_per_mac_scalar"
    names = {"mac": mac, "requant": "mcu_cycles_per_requant", "relu": "mcu_cycles_per_relu",
             "update": "mcu_cycles_per_update"}
    return {key: table[name] for key, name in names.items()} | {"entries": names}


def map_mcu(network, backend, arch: CortexM) -> McuMap:
    """Every linear layer of ``network`` on the core (``backend`` is not needed: the kernels are int8)."""
    layers = []
    for i, layer in enumerate(network.layers):
        if not isinstance(layer, Linear):
            continue
        shapes = core_shapes(layer)
        nxt = network.layers[i + 1] if i + 1 < len(network.layers) else None
        relu = layer.out_features if isinstance(nxt, Activation) else 0
        layers.append(McuLayer(i, layer.in_features, layer.out_features, tuple(tt_steps(shapes)),
                               sum(math.prod(s) for s in shapes), layer.out_features if layer.bias else 0, relu))
    figures = cycle_figures(load_devices(), arch)
    figures.pop("entries")
    return McuMap(arch, tuple(layers), figures)


def energy_per_cycle(table) -> float:
    """J per core cycle: supply voltage (V) x run-mode current per MHz (mA/MHz) x 1e-3 / 1e6."""
    return table["mcu_supply_voltage"] * table["mcu_run_current_per_mhz"] * 1e-3 / 1e6


POWER_ENTRIES = ("mcu_supply_voltage", "mcu_run_current_per_mhz")


def cost(mapping: McuMap, counters: dict, table) -> Estimate:
    """The events of a run's counters on the core: each kind of work is count x cycles per action x energy
    per cycle (J); latency = all cycles / clock (one core, nothing overlaps)."""
    est, arch = Estimate(), mapping.arch
    ev = mapping.events(Workload.from_counters(counters))
    c = cycle_figures(table, arch)
    e = energy_per_cycle(table)
    note = "run-mode current x supply voltage per cycle: SRAM/flash accesses included, not charged apart"
    rows = (("mac", "macs", f"int8 x int8 MACs ({'SMLAD, CMSIS-NN kernel' if arch.simd else 'scalar MLA'})"),
            ("requant", "requantizations", "requantisations (arm_nn_requantize, saturate, store)"),
            ("relu", "relu", "int8 ReLU elements"),
            ("update", "updates", "parameter updates after optimizer steps (round, clamp, store)"))
    cycles = 0.0
    for key, event, label in rows:
        cycles += ev[event] * c[key]
        est.terms.append(Term("compute", f"{label}, {arch.part}", ev[event], c[key] * e,
                              (c["entries"][key],) + POWER_ENTRIES, note))
    est.latency.append((f"core cycles / {arch.clock_mhz:g} MHz (architecture.clock_mhz)", cycles / (arch.clock_mhz * 1e6)))
    return est


CORTEX_M = ArchitectureKind(name="cortex_m", spec=CortexM, map=map_mcu,
                            cost=cost, devices=(DEVICES,),
                            summary="one Cortex-M core running CMSIS-NN style int8 kernels: cycles x V x I/MHz")
