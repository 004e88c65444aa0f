"""The Cortex-M architecture kind: keys, mapping and the cost model's arithmetic by hand."""
from __future__ import annotations

import pytest

from hwsim.errors import ConfigError
from hwsim.model import Activation, Linear, Network, TTLinear
from hwsim.tt import TTShape
from hwsim_mcu.arch import CortexM, cost, load_devices, map_mcu
from hwsim_mcu.backend import McuBackend


def test_device_table_loads_and_the_defaults_are_its_figures():
    t = load_devices()
    for e in t.entries.values():
        assert e.source and e.kind in ("measured", "survey", "derived", "assumption")
    a = CortexM()
    assert a.clock_mhz * 1e6 == t["mcu_clock"] and a.sram_bytes == t["mcu_sram"] and a.flash_bytes == t["mcu_flash"]
    assert t.entry("mcu_run_current_per_mhz").kind == "assumption"


def test_keys_are_checked_with_their_path():
    CortexM().check("architecture")
    for bad, msg in ((CortexM(clock_mhz=0), r"^architecture\.clock_mhz: expected a number of MHz > 0"),
                     (CortexM(sram_bytes=0), r"^architecture\.sram_bytes: expected a number of bytes >= 1"),
                     (CortexM(flash_bytes=1.5), r"^architecture\.flash_bytes: "),
                     (CortexM(part=""), r"^architecture\.part: ")):
        with pytest.raises(ConfigError, match=msg):
            bad.check("architecture")


def test_cost_is_counts_times_table_entries_by_hand():
    # layer 0: TT 4 -> 4 with cores (1, 2, 2, 2), (2, 2, 2, 1); ReLU; layer 2: dense 4 -> 3 with bias
    net = Network([TTLinear(4, 4, False, TTShape.build(4, 4, 2, [2, 2], [2, 2], None)), Activation("relu"),
                   Linear(4, 3, True)])
    m = map_mcu(net, McuBackend(), CortexM())
    l0, l2 = m.layers
    # step 0: T = 1*2 = 2 terms, values = done 1 x m r' 4 x rest 2 = 8; step 1: T = 2*2 = 4, values = 2*2*1 = 4
    assert (l0.macs_per_row, l0.requants_per_row, l0.relu) == (8 * 2 + 4 * 4, 8 + 4, 4)
    assert (l2.macs_per_row, l2.requants_per_row, l2.relu) == (12, 3, 0)
    assert (l0.param_bytes, l2.param_bytes) == (8 + 8, 12 + 4 * 3)
    counters = {"passes_rows5": 2, "passes_rows1": 3, "programs_layer0": 4, "programs_layer2": 4, "rows": 999}
    rows = 5 * 2 + 3
    t = load_devices()
    est = cost(m, counters, t)
    e_cycle = 3.3 * 0.47e-3 / 1e6                               # V x (mA/MHz -> A/Hz): J per cycle
    counts = {"mac": rows * (32 + 12), "requant": rows * (12 + 3), "relu": rows * 4, "update": 4 * 16 + 4 * 15}
    cycles = {"mac": 1.75, "requant": 12, "relu": 1.5, "update": 4}
    assert [term.count for term in est.terms] == [counts[k] for k in ("mac", "requant", "relu", "update")]
    for term, k in zip(est.terms, ("mac", "requant", "relu", "update")):
        assert term.per == pytest.approx(cycles[k] * e_cycle, rel=1e-12)
        assert "mcu_supply_voltage" in term.entries and "mcu_run_current_per_mhz" in term.entries
    total_cycles = sum(counts[k] * cycles[k] for k in counts)
    assert est.joules == pytest.approx(total_cycles * e_cycle, rel=1e-12)
    assert est.latency_s == pytest.approx(total_cycles / 216e6, rel=1e-12)
    scalar = cost(map_mcu(net, None, CortexM(simd=False, clock_mhz=100)), counters, t)
    assert scalar.terms[0].per == pytest.approx(3 * e_cycle) and scalar.terms[0].entries[0] == "mcu_cycles_per_mac_scalar"
    assert scalar.latency_s == pytest.approx((total_cycles + counts["mac"] * (3 - 1.75)) / 100e6)
    ev = m.events(__import__("hwsim_mcu.arch", fromlist=["Workload"]).Workload.from_counters(counters))
    assert ev["sram_read_bytes"] == rows * (2 * 32 + 4 + 2 * 12 + 4 * 3)


def test_report_is_a_table_of_the_layers():
    net = Network([TTLinear(4, 4, False, TTShape.build(4, 4, 2, [2, 2], [2, 2], None)), Activation("relu"),
                   Linear(4, 3, True)])
    text = map_mcu(net, None, CortexM()).report()
    assert text.splitlines()[0].startswith("STM32F746 (Cortex-M, 216 MHz, SIMD SMLAD)")
    assert "MACs/row" in text and len(text.splitlines()) == 4
    # cycles per row of layer 0 at the shipped figures: 32 x 1.75 + 12 x 12 + 4 x 1.5 = 206
    assert "206" in text.splitlines()[2]


def test_the_kind_record():
    kind = McuBackend.architecture
    assert kind.spec is CortexM and kind.map is map_mcu and kind.cost is cost
    assert [p.name for p in kind.devices] == ["devices.yaml"] and kind.devices[0].is_file()
