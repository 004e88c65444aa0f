"""Energy, latency and memory: the arithmetic against hand-computed cases, the backends' counters against
analytic counts of a small model, device-table validation, and a run's figures end to end."""
import json
import math

import pytest
import torch

from hwsim.backends import create_backend
from hwsim.cli import main
from hwsim.config import ConfigError, load_config
from hwsim.energy.memory import device_memory
from hwsim.energy.model import adc_energy, add_energy, dac_energy, estimate, laser_power, mult_energy
from hwsim.energy.table import load_table, parse_table
from hwsim.model import Activation, Linear, Network, TTLinear
from hwsim.train import train
from hwsim.tt import TTShape

TABLE = load_table()


@pytest.mark.parametrize("n, loss, bits, watts", [
    (8, 0.99, 4, 0.1286), (8, 0.99, 6, 0.5144), (8, 0.99, 8, 2.058),   # one 8x8 block: 17 MZIs, 8 outputs
    (16, 0.99, 4, 9.87),                                                # 16x16: 33 MZIs, 16 outputs
    (8, 0.5, 4, 0.01891),
])
def test_laser_link_budget_matches_the_worked_numbers(n, loss, bits, watts):
    """-25 dBm + 1.2 dB modulator + (2n + 1) MZIs + 10 log10(n outputs), wall-plug 0.2, x 2^bits."""
    assert laser_power(TABLE, 2 * n + 1, n, bits, loss) == pytest.approx(watts, rel=2e-3)
    db = -25 + 1.2 + loss * (2 * n + 1) + 10 * math.log10(n)
    assert laser_power(TABLE, 2 * n + 1, n, bits, loss) == pytest.approx(10 ** (db / 10) * 1e-3 / 0.2 * 2 ** bits, rel=1e-12)


def test_digital_and_converter_arithmetic_by_hand():
    assert mult_energy(TABLE, 8, 8) == (pytest.approx(0.2e-12), "int8_mult")
    assert mult_energy(TABLE, 16, 16)[0] == pytest.approx(0.8e-12)           # quadratic: 4 x 0.2 pJ
    assert mult_energy(TABLE, 32, 32)[0] == pytest.approx(3.1e-12)
    assert mult_energy(TABLE, 6, 8)[0] == pytest.approx(0.2e-12 * 48 / 64)
    assert add_energy(TABLE, 16)[0] == pytest.approx(0.06e-12) and add_energy(TABLE, 32)[0] == pytest.approx(0.1e-12)
    # 8 DAC + 8 ADC samples of an 8x8 block per input vector at 8 bits: ~40 pJ (0.63 pJ per MAC)
    assert 8 * dac_energy(TABLE, 8) + 8 * adc_energy(TABLE, 8) == pytest.approx(40.4e-12)
    assert dac_energy(TABLE, 6) == pytest.approx(3.57e-12 * (64 / 6) / 32)
    # heaters of one 8x8 block, 64 phases at |phi| = pi, P_pi 24.77 mW: 1.585 W
    assert 64 * TABLE["phase_shifter_p_pi"] == pytest.approx(1.585, rel=1e-3)


def test_an_entry_without_a_source_does_not_load_and_overrides_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"t.yaml: x: has no source"):
        parse_table("x: {value: 1, unit: pJ, kind: measured}", "t.yaml")
    with pytest.raises(ConfigError, match=r"x.unit: 'furlong' is not allowed"):
        parse_table("x: {value: 1, unit: furlong, kind: measured, source: s}", "t.yaml")
    with pytest.raises(ConfigError, match=r"x.kind: 'guess' is not allowed"):
        parse_table("x: {value: 1, unit: pJ, kind: guess, source: s}", "t.yaml")
    with pytest.raises(ConfigError, match=r"energy.int7_mult: unknown device-table entry"):
        load_table({"int7_mult": 1})
    table = load_table({"int8_mult": 0.4})
    assert table["int8_mult"] == pytest.approx(0.4e-12) and table.entry("int8_mult").source == "user"
    assert table.entry("int8_mult").given_unit == "pJ" and TABLE["int8_mult"] == pytest.approx(0.2e-12)
    user = tmp_path / "mine.yaml"
    user.write_text("phase_shifter_p_pi: {value: 95, unit: uW}\n")
    assert load_table(files=[user])["phase_shifter_p_pi"] == pytest.approx(95e-6)
    with pytest.raises(ConfigError, match=r"energy.bogus: unknown device-table entry"):
        train(load_config("mnist_tt_zo", ["train.steps=1", "energy.bogus=1"]), None, progress=False, log=lambda s: None)


def _small():
    """784 -> 16 (TT, 2 cores 28x28 -> 4x4, rank 2) -> relu -> 16 -> 10 dense."""
    tt = TTLinear(784, 16, False, TTShape.build(784, 16, 2, (28, 28), (4, 4)))
    return Network([tt, Activation("relu"), Linear(16, 10, True)]), tt


def test_counters_of_each_backend_equal_analytic_counts():
    net, tt = _small()
    theta = net.init_params(torch.Generator().manual_seed(0))
    x = torch.rand(5, 784)
    (r0, n0, m0, s0), (r1, n1, m1, s1) = tt.tt.core_shapes
    tt_params, dense_params = r0 * n0 * m0 * s0 + r1 * n1 * m1 * s1, 16 * 10 + 10
    # core step k of the direct method: B x (outputs so far) x r' x (inputs left) values, each a sum of r n products
    tt_macs = 5 * (m0 * s0 * n1) * r0 * n0 + 5 * (m0 * m1 * s1) * r1 * n1
    for name, opts, weight_bits in (("ideal", {"tt_method": "direct"}, 32), ("fixed", {"bits": 8}, 8)):
        b = create_backend(name, **opts)
        b.bind(net)
        net.forward(b, b.param_space(net).unflatten(b.encode(theta.to(b.dtype))), x.to(b.data_dtype))
        c = b.counters()
        macs = c.get("macs_float32", 0) + c.get("macs_int8xint8", 0)
        assert macs == tt_macs + 5 * 16 * 10
        assert c["weight_read_bits"] == (tt_params + dense_params) * weight_bits
        act = 5 * (784 + 16) * 32 + 5 * (16 + 10) * 32 if name == "ideal" else None
        if act is not None:
            assert c["act_read_bits"] + c["act_write_bits"] == act
    p = create_backend("photonic", block=4)
    p.bind(net)
    net.forward(p, p.param_space(net).unflatten(theta.to(p.dtype)), x)
    c = p.counters()
    assert c["modulator_symbols"] == 5 * (784 + 16) and c["detections"] == 5 * (16 + 10)
    assert c["phase_programs"] == 2 and c["laser_on_ns_layer0"] == c["laser_on_ns_layer2"] == pytest.approx(0.5)
    assert c["phase_writes"] == p.mzi_counts()["total"]
    hw = p.hardware()
    assert [h["path_mzis"] for h in hw] == [2 * 9, 9] and sum(h["mzis"] for h in hw) == p.mzi_counts()["total"]
    est = estimate(p, c, TABLE, p.param_space(net).size)
    laser = [t for t in est.terms if t.component == "laser"]
    assert laser[0].per == pytest.approx(laser_power(TABLE, 18, 16, 8)) and laser[1].count == pytest.approx(5e-10)


@pytest.mark.parametrize("params", ["weights", "phases"])
def test_photonic_programs_once_per_setting_however_the_rows_are_blocked(params):
    """Regression: the PINN objective streams the stencil points through in blocks of rows; each block
    used to count a new programming (writes, heater settling) of every layer, so a paper-size step
    counted 6,000 programmings instead of 63 (21 queries x 3 layers). A setting is programmed once per
    query and layer whatever the block size; the losses do not depend on it either."""
    from hwsim.pinn.derivatives import finite_differences
    from hwsim.pinn.objective import BLOCK_SHARE, stencil_objective
    from hwsim.pinn.problems import HJB
    problem = HJB(3)
    net = Network([Linear(problem.inputs, 8), Activation("sin"), Linear(8, 8), Activation("sin"), Linear(8, 1)],
                  init_gain=1.0)
    gen = torch.Generator().manual_seed(0)
    theta0, x = net.init_params(gen), problem.sample(6, gen)
    stencil = finite_differences(problem.inputs, 0.1)
    got = {}
    for block in (1, 6):
        b = create_backend("photonic", params=params, block=4, dtype="float64")
        b.bind(net)
        theta = b.encode(theta0)
        deltas = 0.01 * torch.randn(5, theta.numel(), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        objective = stencil_objective(net, b, problem, stencil, x, chunk_elements=BLOCK_SHARE * stencil.size * 8 * block)
        assert objective.block == block
        got[block] = (objective.losses(theta, deltas), b.counters())
    (blocked, c1), (whole, c6) = got[1], got[6]
    torch.testing.assert_close(blocked, whole, rtol=1e-12, atol=1e-15)
    assert c1["phase_programs"] == c6["phase_programs"] == 5 * 3
    assert c1["phase_writes"] == c6["phase_writes"] == 5 * b.mzi_counts()["total"]
    assert c1["phase_pi"] == pytest.approx(c6["phase_pi"], rel=1e-12)
    assert c1["detections"] == c6["detections"] and c1["laser_on_ns"] == pytest.approx(c6["laser_on_ns"])


def test_device_memory_by_hand():
    net = Network([Linear(6, 4, False), Activation("relu"), Linear(4, 3, False)])
    b = create_backend("fixed", bits=8)
    b.bind(net)
    m = device_memory(net, b, "adam", 0.0, rows=10)
    d = 6 * 4 + 4 * 3
    params, opt = d * 8 / 8, d * 2 * 4
    live = 10 * max(6 + 4, 4 + 3) * 8 / 8                               # a layer's input and output
    stored = 10 * (6 + 4 + 4 + 3) * 8 / 8                              # x, h, relu(h), y
    assert m["device_memory_bytes_zo"] == params + opt + 8 + 8 + live
    assert m["device_memory_bytes_bp"] == params + opt + 4 * d + stored
    assert m["device_memory_bytes_zo_perturbation_stored"] == m["device_memory_bytes_zo"] + params


def test_a_run_reports_energy_and_hwsim_energy_explains_it(tmp_path, capsys):
    fast = ["data.train_limit=600", "data.val_size=100", "data.test_limit=200", "train.batch_size=64", "train.steps=4",
            "train.eval_every=2"]
    metrics = train(load_config("mnist_tt_zo", fast), tmp_path, progress=False, log=lambda s: None)
    assert metrics["inferences"] == 300 and metrics["energy_j_per_inference"] > 0
    assert metrics["energy_j_training"] == pytest.approx(sum(metrics["energy_breakdown_training"].values()))
    assert metrics["device_memory_bytes_bp"] > metrics["device_memory_bytes_zo"] > 0
    assert (tmp_path / "energy.png").read_bytes()[:4] == b"\x89PNG"
    # evaluation counters are not training: the MACs of the steps alone are 4 x 81 queries x 64 rows x model MACs
    train_macs = metrics["counters"]["macs_float32"] - metrics["counters_evaluation"]["macs_float32"]
    assert train_macs > 0 and metrics["counters_inference"]["rows"] == 2 * 300
    assert main(["energy", str(tmp_path), "--explain"]) == 0
    out = capsys.readouterr().out
    assert f"training, 4 steps on ideal: {metrics['energy_j_training']:.4g} J" in out
    assert "fp32_mult = 3.7 pJ (measured): M. Horowitz" in out
    assert main(["energy", str(tmp_path), "--set", "energy.digital_static_power=0"]) == 0
    assert main(["energy", str(tmp_path), "--set", "energy.nope=1"]) == 2
    assert "energy.nope: unknown device-table entry" in capsys.readouterr().err


def test_weights_beyond_the_on_chip_sram_are_read_from_dram():
    net, _ = _small()
    b = create_backend("ideal", tt_method="direct")
    b.bind(net)
    net.forward(b, net.space.unflatten(net.init_params(torch.Generator().manual_seed(0)).float()), torch.rand(3, 784))
    d = net.space.size
    small = estimate(b, b.counters(), load_table({"digital_sram_bytes": 4 * d - 1}), d)   # float32 weights: 4 d bytes
    fits = estimate(b, b.counters(), load_table({"digital_sram_bytes": 4 * d}), d)
    dram = [t for t in small.terms if "DRAM" in t.action]
    assert len(dram) == 1 and dram[0].per == pytest.approx(1.95e-9 / 64)
    assert not any("DRAM" in t.action for t in fits.terms)
    assert dram[0].count == b.counters()["weight_read_bits"] > 0


def test_rtl_latency_is_simulated_cycles_over_the_configured_clock():
    """The rtl backend's clock is a config value (backend.clock_mhz), not a device-table entry; latency =
    rtl_cycles / clock and the static energy follows it; a clock that is not a positive number is refused."""
    net = Network([TTLinear(16, 4, False, TTShape.build(16, 4, 2, (4, 4), (2, 2)))])
    counters = {"rtl_cycles": 1_000_000, "rtl_macs": 0}
    for mhz in (100.0, 400.0):
        b = create_backend("rtl", clock_mhz=mhz)
        b.bind(net)
        est = estimate(b, counters, TABLE, net.space.size)
        assert sum(s for _, s in est.latency) == pytest.approx(1e6 / (mhz * 1e6), rel=1e-12)
        static = next(t for t in est.terms if t.component == "static")
        assert static.joules == pytest.approx(1e6 / (mhz * 1e6) * TABLE["rtl_static_power"], rel=1e-12)
    for bad in (0, -5, "fast", True):
        with pytest.raises(ValueError, match=r"backend\.clock_mhz: .* is not allowed; use a clock in MHz > 0"):
            create_backend("rtl", clock_mhz=bad)
