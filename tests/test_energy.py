"""Energy, latency and memory: the arithmetic against hand-computed cases, the mapping of a small model onto
each architecture against hand counts, workload counters that do not depend on how the simulator grouped
its work, device-table validation, and a run's figures end to end."""
import json
import math

import pytest
import torch

from hwsim.backends import create_backend
from hwsim.cli import main
from hwsim.config import ConfigError, load_config
from hwsim.energy.memory import device_memory
from hwsim.arch.engine import DIGITAL
from hwsim.arch.spec import map_network, resolve
from hwsim.arch.workload import Workload
from hwsim.backends.photonic.architecture import PHOTONIC, PhotonicMap, adc_energy, dac_energy, laser_power
from hwsim.energy.table import load_table, parse_table
from hwsim.energy.terms import add_energy, memory_per_bit, mult_energy
from hwsim.model import Activation, Linear, Network, TTLinear
from hwsim.train import train
from hwsim.tt import TTShape

TABLE = load_table(kind=PHOTONIC)        # the shipped table and the photonic chip's entries


def estimate(mapping, counters, table):
    """The cost model of the mapping's architecture kind (the engine's cost model charges both fabrics)."""
    return (PHOTONIC if isinstance(mapping, PhotonicMap) else DIGITAL).cost(mapping, counters, table)


@pytest.mark.parametrize("n, loss, bits, watts", [
    (8, 0.99, 4, 0.1286), (8, 0.99, 6, 0.5144), (8, 0.99, 8, 2.058),   # one 8x8 block: 17 MZIs, 8 outputs
    (16, 0.99, 4, 9.87),                                                # 16x16: 33 MZIs, 16 outputs
    (8, 0.5, 4, 0.01891),
])
def test_laser_link_budget_matches_the_worked_numbers(n, loss, bits, watts):
    """-25 dBm + 1.2 dB modulator + (2n + 1) MZIs + 10 log10(n outputs), wall-plug 0.2, x 2^bits."""
    table = load_table({"mzi_loss": loss}, kind=PHOTONIC)
    assert laser_power(table, 2 * n + 1, n, bits) == pytest.approx(watts, rel=2e-3)
    db = -25 + 1.2 + loss * (2 * n + 1) + 10 * math.log10(n)
    assert laser_power(table, 2 * n + 1, n, bits) == pytest.approx(10 ** (db / 10) * 1e-3 / 0.2 * 2 ** bits, rel=1e-12)


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
    assert load_table(files=[user], kind=PHOTONIC)["phase_shifter_p_pi"] == pytest.approx(95e-6)
    with pytest.raises(ConfigError, match=r"energy.bogus: unknown device-table entry"):
        train(load_config("mnist_tt_zo", ["train.steps=1", "energy.bogus=1"]), None, progress=False, log=lambda s: None)


def _small():
    """784 -> 16 (TT, 2 cores 28x28 -> 4x4, rank 2) -> relu -> 16 -> 10 dense."""
    tt = TTLinear(784, 16, False, TTShape.build(784, 16, 2, (28, 28), (4, 4)))
    return Network([tt, Activation("relu"), Linear(16, 10, True)]), tt


def _mapped(name: str, arch: dict | None = None, **options):
    net, tt = _small()
    b = create_backend(name, **options)
    b.bind(net)
    return net, tt, b, map_network(net, b, resolve(b, arch))


def test_the_engine_mapping_counts_by_hand():
    """The TT engine (ideal: fp32, fixed: the spec's widths) on the small model, 3 passes of 20 rows
    (16 lanes: 2 groups per pass): MACs, wide words, cycles, each by hand."""
    for name, opts, bits in (("ideal", {}, 32), ("fixed", {"bits": 8}, 8)):
        net, tt, b, m = _mapped(name, **opts)
        (r0, n0, m0, s0), (r1, n1, m1, s1) = tt.tt.core_shapes
        v0, v1 = m0 * s0 * n1, m0 * m1 * s1                      # values per row of the two core steps
        t0, t1 = r0 * n0, r1 * n1                                # terms per value
        layer0, layer2 = m.layers
        assert layer0.macs_per_row == v0 * t0 + v1 * t1 and layer2.macs_per_row == 160
        assert layer0.cycles_per_group == 1 + (v0 * t0 + 4) + (v1 * t1 + 4) and layer2.cycles_per_group == 1 + 160 + 4
        ev = m.events(Workload(passes={20: 3}, programs={0: 5, 2: 1}))
        groups = 3 * 2
        assert sum(ev["macs"].values()) == 60 * (layer0.macs_per_row + 160)
        issues = layer0.macs_per_row + 160
        assert ev["bits"]["weight RAM"] == groups * issues * bits + (5 * layer0.weights + 160) * bits
        reads = (v0 * t0 + v1 * t1) * bits + 160 * bits          # every issue reads one state wide word
        writes = (v0 + v1) * bits + 10 * bits
        assert ev["bits"]["state RAM"] == groups * 16 * (reads + writes)
        assert ev["cycles"] == 3 * (784 + 16 + 3 + 2 * layer0.cycles_per_group) + 3 * (16 + 10 + 3 + 2 * layer2.cycles_per_group)
        assert ev["requantizations"] == (0 if name == "ideal" else 60 * (v0 + v1 + 10))
        assert ev["bits"]["bias RAM"] == groups * 10 * (32 if name == "ideal" else b.options.bias_bits)


def test_the_photonic_mapping_of_the_mnist_layer():
    """The paper's 784 -> 256 layer (cores 16x4, 16x28, 16x28, 4x16 matrices) on 8x8 blocks: 2 + 8 + 8 + 2
    blocks applied to 196, 112, 64 and 64 sub-vectors of every row; replicated, a copy per sub-vector."""
    cfg = load_config("mnist_tt_zo", ["backend.name=photonic"])
    from hwsim.build import build_backend, build_network
    net = build_network(cfg.model)
    b = build_backend(cfg.backend, net)
    tm = map_network(net, b, resolve(b))
    cores = tm.layers[0].cores
    assert [c.blocks for c in cores] == [2, 8, 8, 2] and [c.step.subvectors for c in cores] == [196, 112, 64, 64]
    assert [c.symbols for c in cores] == [196, 112, 64, 64] and tm.layers[0].shifters == 20 * 64
    wdm = map_network(net, b, resolve(b, {"wdm": 4}))
    assert [c.symbols for c in wdm.layers[0].cores] == [49, 28, 16, 16] and wdm.blocks == tm.blocks
    assert tm.lit_inputs == tm.blocks and wdm.lit_inputs == 4 * wdm.blocks       # every block lights 4 wavelengths
    few = map_network(net, b, resolve(b, {"wdm": 100}))          # a core lights no more than its sub-vectors
    assert [c.wavelengths for c in few.layers[0].cores] == [100, 100, 64, 64]
    assert [c.symbols for c in few.layers[0].cores] == [2, 2, 1, 1]
    rep = map_network(net, b, resolve(b, {"cores": "replicated"}))
    assert [c.blocks for c in rep.layers[0].cores] == [2 * 196, 8 * 112, 8 * 64, 2 * 64]
    assert [c.symbols for c in rep.layers[0].cores] == [1, 1, 1, 1] and rep.lit_inputs == rep.blocks
    c1 = cores[1].per_row()                  # 16x28 on a 2x4 grid: 4 block columns of 8 inputs, 2 block rows
    assert c1 == {"modulations": 112 * 28, "detections": 112 * 16, "partial_sum_adds": 0,   # photocurrents add
                  "buffer_writes": 112 * 16, "buffer_reads": 112 * 28}
    digital = map_network(net, b, resolve(b, {"partial_sums": "digital"})).layers[0].cores[1].per_row()
    assert digital["detections"] == 112 * 64 and digital["partial_sum_adds"] == 112 * 3 * 16
    text = tm.report()
    assert "cores time-multiplexed" in text and "core0    16x4" in text and "20 physical" not in text


def test_the_photonic_energy_holds_lasers_and_heaters_for_the_device_time():
    net, tt, b, m = _mapped("photonic", block=4)
    counters = {"passes_rows5": 2, "programs_layer0": 3, "programs_layer2": 1, "held_pi_rows:0.core0": 40.0,
                "held_pi_rows:0.core1": 20.0, "held_pi_rows:2.weight": 10.0}
    est = estimate(m, counters, TABLE)
    ev = m.events(Workload.from_counters(counters))
    seconds = 4 * 10e-6 + 10 * sum(layer.symbols_per_row for layer in m.layers) / 1e10
    assert est.latency_s == pytest.approx(seconds, rel=1e-12) and ev["held_pi"] == pytest.approx(7.0)
    terms = {t.component: t for t in est.terms if t.component in ("laser", "heaters")}
    assert terms["laser"].joules == pytest.approx(seconds * m.blocks * laser_power(TABLE, 9, 4, 8), rel=1e-12)
    assert terms["heaters"].joules == pytest.approx(seconds * 7.0 * TABLE["phase_shifter_p_pi"], rel=1e-12)
    assert ev["phase_writes"] == 3 * m.layers[0].shifters + m.layers[1].shifters
    _, _, _, wdm = _mapped("photonic", {"wdm": 2}, block=4)           # the same blocks, each lighting 2 wavelengths
    laser = next(t for t in estimate(wdm, counters, TABLE).terms if t.component == "laser")
    lit = sum(c.blocks * min(2, c.step.subvectors) for layer in m.layers for c in layer.cores)   # 1 for a dense layer
    assert wdm.blocks == m.blocks < lit < 2 * m.blocks
    assert laser.per == pytest.approx(lit * laser_power(TABLE, 9, 4, 8), rel=1e-12)


def test_estimates_scale_linearly_and_an_accounting_may_charge_part():
    net, tt, b, m = _mapped("photonic", block=4)
    counters = {"passes_rows5": 2, "programs_layer0": 3, "programs_layer2": 1, "held_pi_rows:0.core0": 40.0}
    once, twice = estimate(m, counters, TABLE), estimate(m, {k: 2 * v for k, v in counters.items()}, TABLE)
    assert once.scaled(2).joules == pytest.approx(twice.joules, rel=1e-12)
    assert once.scaled(2).latency_s == pytest.approx(twice.latency_s, rel=1e-12)
    lasers = once.only(("laser",))
    assert lasers.joules == sum(t.joules for t in once.terms if t.component == "laser") < once.joules
    assert lasers.latency_s == once.latency_s and once.plus(once).joules == pytest.approx(2 * once.joules)
    from hwsim.energy.report import split_one_off
    assert split_one_off({"passes_rows5": 2, "calibration_settings": 7}) == ({"passes_rows5": 2}, {"calibration_settings": 7})


def test_the_ideal_row_is_charged_for_the_engine_whatever_the_simulation_method():
    """Regression: the ideal backend was charged for the contraction the CPU simulation picked (the dense
    rebuild: ~2x the MACs, the rebuilt weight never charged). Now the same workload costs the same."""
    figures = []
    for method in ("dense", "direct"):
        net, _, b, m = _mapped("ideal", tt_method=method)
        b.count_passes(7)
        b.count_programs(net.linear_indices)
        net.forward(b, net.space.unflatten(net.init_params(torch.Generator().manual_seed(0)).float()), torch.rand(7, 784))
        est = estimate(m, b.counters(), TABLE)
        figures.append((est.joules, est.latency_s))
    assert figures[0] == figures[1]


@pytest.mark.parametrize("params", ["weights", "phases"])
def test_workload_counters_do_not_depend_on_how_rows_are_blocked(params):
    """Regression: the PINN objective streams the stencil points through in blocks of rows; each block
    used to count a new programming (writes, heater settling) of every layer. The workload (passes,
    programmings, held load) is the same whatever the block size; the losses too."""
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
    w1, w6 = Workload.from_counters(c1), Workload.from_counters(c6)
    assert w1.passes == w6.passes == {6 * stencil.size: 5} and w1.programs == w6.programs == {0: 5, 2: 5, 4: 5}
    assert w1.held_pi == pytest.approx(w6.held_pi, rel=1e-12) and len(w1.held_pi) == 3


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
    # the training workload: 4 steps x 81 queries of 64 rows (the base query and 40 move layer 0, 40 layer 2),
    # every layer programmed once more per step; the evaluations apart
    training = Workload.from_counters({k: v - metrics["counters_evaluation"].get(k, 0) for k, v in metrics["counters"].items()})
    assert training.passes == {64: 4 * 81} and training.programs == {0: 4 * 42, 2: 4 * 41}
    assert json.loads((tmp_path / "architecture.json").read_text())["lanes"] == 16
    assert "TT-contraction engine (asic): 16 lanes at 500 MHz" in (tmp_path / "mapping.txt").read_text()
    assert main(["energy", str(tmp_path), "--explain"]) == 0
    out = capsys.readouterr().out
    assert f"training, 4 steps on ideal: {metrics['energy_j_training']:.4g} J" in out
    assert "fp32_mult = 3.7 pJ (measured): M. Horowitz" in out and "layer 0 (784 -> 256, 4 core step(s)" in out
    assert main(["energy", str(tmp_path), "--set", "energy.sram_leakage_485b=0.1uW"]) == 0
    assert main(["energy", str(tmp_path), "--set", "architecture.lanes=32"]) == 0
    for bad, message in ((["energy.nope=1"], "energy.nope: unknown device-table entry"),
                         (["energy.int8_mult=-0.2"], "energy.int8_mult.value: -0.2 pJ is not allowed; use a number > 0 (in pJ)"),
                         (["energy.fp32_add=0"], "energy.fp32_add.value: 0 pJ is not allowed"),
                         (["energy.mzi_loss=1"], "energy.mzi_loss: unknown device-table entry"),   # the photonic chip's
                         (["energy.fpga_static_power=95pJ"], "energy.fpga_static_power: pJ does not measure fpga_static_power (W)"),
                         (["architecture.lanes=0"], "architecture.lanes: expected an integer >= 1, got 0"),
                         (["architecture.wdm=2"], "architecture.wdm: not a key of the digital architecture"),
                         (["backend.name=photonic"], "backend.name: " + str(tmp_path) + " ran on 'ideal'")):
        assert main(["energy", str(tmp_path), *[a for k in bad for a in ("--set", k)]]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_assumption_sets_change_the_charging_not_the_run(tmp_path, capsys):
    fast = ["data.train_limit=300", "data.val_size=50", "data.test_limit=50", "train.batch_size=32", "train.steps=1",
            "train.eval_every=1", "model.layers=[{type: linear, in_features: 784, out_features: 10}]"]
    train(load_config("mnist_tt_zo", fast), tmp_path / "run", progress=False, log=lambda s: None)
    mine = tmp_path / "mine.yaml"
    mine.write_text("description: fast adders\nset: [energy.fp32_add=0.1pJ, architecture.lanes=4]\n")
    assert main(["energy", str(tmp_path / "run"), "--assume", str(mine), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "fp32_add = 0.1 pJ [" not in out and "fp32_add = 0.1 pJ (assumption): user" in out and "4 lanes" in out
    mine.write_text("set: [train.steps=5]\n")
    assert main(["energy", str(tmp_path / "run"), "--assume", str(mine)]) == 2
    assert "train.steps changes the run, not its charging" in capsys.readouterr().err
    from hwsim.energy.report import assumptions
    shipped = assumptions("tonn_hjb_2024", PHOTONIC)
    assert "architecture.wdm=64" in shipped.items and shipped.charge == ("laser", "heaters")
    mine.write_text("set: [energy.fp32_add=0.1pJ]\ncharge: [compute]\n")
    assert main(["energy", str(tmp_path / "run"), "--assume", str(mine), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "J charged by mine (the full accounting: " in out and "memory     [not charged] " in out
    assert "compute    [not charged]" not in out
    assert main(["energy", str(tmp_path / "run"), "--assume", str(mine)]) == 0
    assert "mine charges compute only; the full accounting: training " in capsys.readouterr().out
    for charge in ("[lasers]", "[]", "laser"):
        mine.write_text(f"set: []\ncharge: {charge}\n")
        assert main(["energy", str(tmp_path / "run"), "--assume", str(mine)]) == 2
        err = capsys.readouterr().err
        assert "charge: " in err and "is not allowed; use a non-empty list of compute, memory" in err and err.count("\n") == 1


def test_energy_charges_n_steps_as_the_mean_step_and_the_calibration_once(tmp_path, capsys):
    fast = ["data.train_limit=300", "data.val_size=50", "data.test_limit=50", "train.batch_size=16", "train.steps=2",
            "train.eval_every=2", "backend.name=photonic", "backend.noise=typical", "backend.calibrate=gain",
            "model.layers=[{type: linear, in_features: 784, out_features: 10}]"]
    train(load_config("mnist_tt_zo", fast), tmp_path, progress=False, log=lambda s: None)
    figures = {}
    for steps in ("2", "6"):
        assert main(["energy", str(tmp_path), "--steps", steps]) == 0
        line = capsys.readouterr().out.splitlines()
        figures[steps] = [float(x) for x in (line[0].split("training ")[1].split(" J, ")[0],
                                             line[0].split(" J, ")[1].split(" s on")[0],
                                             line[-1].split("calibration: ")[1].split(" J")[0],
                                             line[-1].split(" J, ")[1].split(" s")[0])]
    (j2, s2, cal_j, cal_s), (j6, s6, cal_j6, cal_s6) = figures["2"], figures["6"]
    assert cal_j > 0 and (cal_j, cal_s) == (cal_j6, cal_s6)
    assert j6 - cal_j == pytest.approx(3 * (j2 - cal_j), rel=2e-3) and s6 - cal_s == pytest.approx(3 * (s2 - cal_s), rel=2e-3)
    assert main(["energy", str(tmp_path), "--steps", "0"]) == 2
    assert capsys.readouterr().err.strip() == "hwsim: error: --steps: 0 is not allowed; use a number > 0"


def test_the_published_optical_pinn_figures_under_the_stated_assumptions(tmp_path, capsys):
    """docs/energy.md: one finite-difference step of the paper-size HJB PINN on the photonic chip, charged for
    10,000 steps under tonn_hjb_2024, gives the published 1.36 J and 1.15 s (3 digits)."""
    assert main(["pinn", "hjb20_photonic_paper", "--set", "train.steps=1", "--set", "pde.test_points=200", "--set",
                 "train.smoothed_points=0", "--set", "pde.derivatives.method=fd", "--out", str(tmp_path / "run"),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["energy", str(tmp_path / "run"), "--steps", "10000", "--assume", "tonn_hjb_2024"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    joules, seconds = float(first.split("training ")[1].split(" J, ")[0]), float(first.split(" J, ")[1].split(" s on")[0])
    assert f"{joules:.3g} J, {seconds:.3g} s" == "1.36 J, 1.15 s", first


def test_unit_suffixes_and_the_buffer_tiers():
    assert load_table({"phase_shifter_p_pi": "95uW"}, kind=PHOTONIC)["phase_shifter_p_pi"] == pytest.approx(95e-6)
    assert load_table({"phase_shifter_settle": "1 us"}, kind=PHOTONIC)["phase_shifter_settle"] == pytest.approx(1e-6)
    with pytest.raises(ConfigError, match=r"energy.dac_8b_sample: 'fast' is not a number with a unit; give e.g. 3.57pJ"):
        load_table({"dac_8b_sample": "fast"}, kind=PHOTONIC)
    assert memory_per_bit(TABLE, 8 << 10) == (pytest.approx(10e-12 / 64), "sram_read_64b_8kb")
    assert memory_per_bit(TABLE, (8 << 10) + 1)[1] == "sram_read_64b_32kb"
    assert memory_per_bit(TABLE, 1 << 20)[1] == "sram_read_64b_1mb"
    assert memory_per_bit(TABLE, (1 << 20) + 1) == (pytest.approx(1.95e-9 / 64), "dram_64b")


def test_a_larger_buffer_is_charged_at_its_tier():
    net, _, b, small = _mapped("ideal")
    _, _, _, big = _mapped("ideal", {"state_buffer_bytes": 2 << 20})
    counters = {"passes_rows16": 1}
    state = lambda m: next(t for t in estimate(m, counters, TABLE).terms if t.action.startswith("state RAM"))  # noqa: E731
    assert state(small).entries[0] == "sram_read_64b_32kb" and state(big).entries[0] == "dram_64b"
    assert state(big).count == state(small).count


def test_fpga_latency_is_engine_cycles_over_the_cores_clock():
    """The rtl backend's clock (backend.clock_mhz) sets the FPGA architecture's; latency = cycles / clock and
    the static energy follows it; the key cannot be set under architecture:, a bad clock is refused."""
    net = Network([TTLinear(16, 4, False, TTShape.build(16, 4, 2, (4, 4), (2, 2)))])
    for mhz in (100.0, 400.0):
        b = create_backend("rtl", clock_mhz=mhz)
        b.bind(net)
        m = map_network(net, b, resolve(b))
        est = estimate(m, {"passes_rows16": 10}, TABLE)
        cycles = 10 * (16 + 4 + 3 + m.layers[0].cycles_per_group)
        assert est.latency_s == pytest.approx(cycles / (mhz * 1e6), rel=1e-12)
        static = next(t for t in est.terms if t.component == "static")
        assert static.joules == pytest.approx(cycles / (mhz * 1e6) * TABLE["fpga_static_power"], rel=1e-12)
    with pytest.raises(ConfigError, match=r"architecture.clock_mhz: set by the rtl backend's simulation; use backend.clock_mhz"):
        resolve(b, {"clock_mhz": 300})
    for bad in (0, -5):
        with pytest.raises(ConfigError, match=r"backend\.clock_mhz: .* is not allowed; use a clock in MHz > 0"):
            create_backend("rtl", clock_mhz=bad)
    for bad in ("fast", True):                     # the options' typed schema: the config converter's message
        with pytest.raises(ConfigError, match=r"backend\.clock_mhz: expected a number, got"):
            create_backend("rtl", clock_mhz=bad)


def test_the_independent_crosscheck_agrees_to_the_last_digit():
    """benchmarks/energy_crosscheck.py: the events walked one issue / one sub-vector at a time, times the
    published energies (Horowitz) and SimPhony's device formulas, equal hwsim's mapping x device table."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from energy_crosscheck import engine_crosscheck, photonic_crosscheck
    for part in (engine_crosscheck(), photonic_crosscheck()):
        for row in part["rows"]:
            assert row["hwsim_j"] == pytest.approx(row["independent_j"], rel=1e-12, abs=0), row
            assert row["hwsim_j"] > 0


@pytest.mark.parametrize("name, options", [("ideal", {}), ("fixed", {"bits": 8}), ("photonic", {"noise": "typical", "block": 4})])
def test_workload_counters_do_not_depend_on_the_query_chunks(name, options):
    """The same step's queries evaluated one per chunk or all in one chunk: the same workload, so the same
    joules (on an exact backend the simulator shares the prefix layers differently in the two cases)."""
    from hwsim.objective import BatchObjective
    net, _ = _small()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 784, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    directions = 0.01 * torch.randn(6, net.space.entries[1].numel, generator=gen, dtype=torch.float64)
    got = []
    for chunk in (1, 10 ** 9):
        b = create_backend(name, **options)
        b.bind(net)
        theta = b.encode(net.init_params(torch.Generator().manual_seed(1)).to(b.dtype))
        objective = BatchObjective(net, b, x.to(b.data_dtype), y, chunk_elements=chunk)
        objective.key_noise(0)
        deltas = directions.to(theta.dtype)
        objective.losses(theta, deltas, net.space.entries[1].offset)       # 6 queries moving layer 0's core 1
        objective.losses(theta, deltas[:2, :10], net.space.entries[-1].offset)   # 2 moving layer 2's bias only
        got.append((Workload.from_counters(b.counters()), b))
    (w1, b1), (w2, _) = got
    assert w1.passes == w2.passes == {8: 8} and w1.programs == w2.programs == {0: 6}    # a bias programs nothing
    assert w1.held_pi == pytest.approx(w2.held_pi, rel=1e-12)
    m = map_network(net, b1, resolve(b1))
    assert estimate(m, b1.counters(), TABLE).joules == pytest.approx(estimate(m, got[1][1].counters(), TABLE).joules, rel=1e-12)
