"""The fixed backend: wiring to the spec, options, both training modes, counters."""
import pytest
import torch

from hwsim.backends import create_backend
from hwsim.backends.fixed import Format, int_linear, quantize
from hwsim.config import load_config
from hwsim.model import Activation, Linear, Network, TTLinear
from hwsim.train import train
from hwsim.tt import TTShape

TT = TTShape.build(12, 6, 2, [2, 3, 2], [1, 3, 2])


def _net():
    return Network([TTLinear(12, 6, True, TT), Activation("relu"), Linear(6, 3, True)])


def _fixed(net, **options):
    backend = create_backend("fixed", **options)
    backend.bind(net)
    return backend


def test_options_are_validated_with_the_key_named():
    with pytest.raises(ValueError, match=r"backend\.master: 'half' is not allowed; expected one of 'float', 'integer'"):
        create_backend("fixed", master="half")
    with pytest.raises(ValueError, match=r"backend\.formats\.weights: role 'weights' is not allowed; use one of input"):
        create_backend("fixed", formats={"weights": [8, 6]})
    with pytest.raises(ValueError, match=r"backend\.formats\.weight: 8 is not allowed; use \[bits, frac_bits\]"):
        create_backend("fixed", formats={"weight": 8})
    with pytest.raises(ValueError, match=r"backend\.formats\.output: bits must be an integer in 2\.\.32, got 1"):
        create_backend("fixed", formats={"output": [1, 0]})
    with pytest.raises(ValueError, match=r"backend\.bits: 40 is not allowed; use an integer in 2\.\.32"):
        create_backend("fixed", bits=40)
    b = create_backend("fixed", bits=6, int_bits={"weight": 1}, formats={"output": [12, 4]})
    assert b.formats["weight"] == Format(6, 5) and b.formats["output"] == Format(12, 4)
    assert b.formats["input"] == Format(6, 5)                  # default: 1 integer bit


def test_one_layer_may_set_its_own_weight_and_per_step_intermediate_formats():
    net = _net()                                            # layer 0: 3 TT cores, layer 2: dense
    b = _fixed(net, bits=8, layers={0: {"int_bits": {"intermediate": [2, 4]}, "formats": {"weight": [6, 5]}}})
    (_, _, tt), (_, _, dense) = b.layer_specs()
    assert tt.intermediates(3) == [Format(8, 6), Format(8, 4)] and tt.weight == Format(6, 5)
    assert [s.out_fmt for s in tt.steps(TT.core_shapes, True)][:2] == [Format(8, 6), Format(8, 4)]
    assert tt.bias_format(TT.core_shapes) == Format(32, 4 + 5)          # F_in(last step) + F_weight
    assert dense.weight == Format(8, 6) and dense.intermediate == Format(8, 3)      # the defaults
    assert b._param_formats["0.core1"] == Format(6, 5) and b._param_formats["2.weight"] == Format(8, 6)
    same = _fixed(net, bits=8, layers={"0": {"formats": {"intermediate": [[8, 6], [8, 4]]}}})
    assert same.layer_specs()[0][2].intermediate == tt.intermediate


@pytest.mark.parametrize("layers, message", [
    ({1: {"int_bits": {"intermediate": 3}}}, r"backend\.layers: 1 is not a linear layer of the network; its linear layers are 0, 2"),
    ({0: {"int_bits": {"output": 3}}}, r"backend\.layers\.0\.int_bits\.output: role 'output' is not allowed; use one of weight, intermediate"),
    ({0: {"int_bits": {"intermediate": [3, 4, 5]}}}, r"backend: layer 0: 3 intermediate formats given for 3 cores; a layer of 3 cores has 2"),
    ({0: {"formats": {"intermediate": [[8, 3], [8]]}}}, r"backend\.layers\.0\.formats\.intermediate\[1\]: \[8\] is not allowed; use \[bits, frac_bits\]"),
    ({"a": {}}, r"backend\.layers\.a: the key must be a layer index"),
    ({0: {"bits": 4}}, r"backend\.layers\.0: \{'bits': 4\} is not allowed; use \{int_bits"),
    ([1], r"backend\.layers: expected a mapping, got \[1\]"),
])
def test_per_layer_formats_are_validated_with_the_key_named(layers, message):
    with pytest.raises(ValueError, match=message):
        _fixed(_net(), layers=layers)


def test_unbound_backend_says_how_to_fix_it():
    b = create_backend("fixed")
    with pytest.raises(RuntimeError, match=r"call backend\.bind\(network\) first"):
        b.linear(Linear(2, 2), {"weight": torch.zeros(2, 2), "bias": torch.zeros(2)}, torch.zeros(1, 2), None)


def _on_grid(shape, fmt, gen, lo=-1.0, hi=1.0):
    x = torch.rand(shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo
    return quantize(x, fmt.bits, fmt.frac_bits).double() * fmt.lsb


def test_matches_float_within_half_an_output_lsb_when_only_the_output_rounds(gen):
    """Inputs on the grid, integer weights and intermediates wide enough to be exact (shift 0): the only
    rounding left is the output's, at most 1/2 LSB for half_up."""
    net = Network([TTLinear(12, 6, False, TT)])
    fx, fw = Format(12, 8), Format(4, 0)
    formats = {"input": [12, 8], "weight": [4, 0], "intermediate": [30, 8], "output": [24, 6]}
    b = _fixed(net, formats=formats)
    assert [s.shift for s in b._layers[id(net.layers[0])][1].steps(TT.core_shapes, False)] == [0, 0, 2]
    ideal = create_backend("ideal", dtype="float64")
    params = {n: _on_grid(s, fw, gen, -3.0, 3.0) for n, s in net.layers[0].param_shapes()}
    x = _on_grid((5, 12), fx, gen, 0.0, 1.0)
    exact = ideal.linear(net.layers[0], params, x, None)
    got = b.linear(net.layers[0], params, x, None).double()
    assert (got - exact).abs().max() <= 2.0 ** -6 / 2
    assert b.counters()["overflows_layer0"] == 0


def test_linear_is_the_spec_applied_to_quantized_operands(gen):
    net = _net()
    b = _fixed(net, bits=8, rounding="half_even")
    spec = b._layers[id(net.layers[0])][1]
    params = {n: torch.randn(4, *s, generator=gen, dtype=torch.float64) * 0.5 for n, s in net.layers[0].param_shapes()}
    x = torch.rand(3, 12, generator=gen)
    got = b.linear(net.layers[0], params, x, 4)
    codes = {n: quantize(t, 8, 6, "half_even") for n, t in params.items()}
    bias = quantize(params["bias"], 32, spec.bias_format(TT.core_shapes).frac_bits, "half_even")
    want = int_linear([codes[f"core{k}"] for k in range(3)], quantize(x, 8, 7, "half_even"), spec, bias)
    assert torch.equal(got, want.float() * spec.output.lsb)
    # one query at a time gives the same numbers
    for q in range(4):
        alone = b.linear(net.layers[0], {n: t[q] for n, t in params.items()}, x, None)
        assert torch.equal(got[q], alone)


def test_counters_report_macs_by_width_requantizations_and_saturation(gen):
    net = _net()
    b = _fixed(net, bits=8)
    tensors = net.space.unflatten(net.init_params(gen) * 40)          # far out of range: saturates
    x = torch.rand(5, 12, generator=gen)
    out = net.forward(b, tensors, x)
    c = b.counters()
    assert out.shape == (5, 3)
    per_row = [1 * 1 * 2 * 1 * 2 * 6, 1 * 2 * 3 * 3 * 2 * 2, 3 * 2 * 2 * 2 * 1 * 1]   # D r n m s Z per step
    assert c["macs_int8xint8"] == 5 * (sum(per_row) + 6 * 3)
    assert c["requantizations_layer0"] == 5 * (2 * 6 + 3 * 2 * 2 + 6) and c["requantizations_layer2"] == 15
    assert c["overflows_layer0"] > 0 and c["linear_calls"] == 2


def test_counters_count_every_query_of_an_input_with_a_query_axis(gen):
    """Regression: a layer whose own parameters are shared but whose input differs per query (x (Q, B, in),
    queries=None) executes Q times; the MACs were counted once (found by the RTL core's own counters)."""
    net = Network([TTLinear(12, 6, False, TT)])
    b = _fixed(net)
    params = {n: t for n, t in net.space.unflatten(net.init_params(gen)).items()}
    layer = net.layers[0]
    local = {n.split(".", 1)[1]: t for n, t in params.items()}
    b.linear(layer, local, torch.rand(3, 5, 12, generator=gen), None)
    once = _fixed(net)
    once.linear(layer, local, torch.rand(5, 12, generator=gen), None)
    assert b.counters()["macs_int8xint8"] == 3 * once.counters()["macs_int8xint8"] > 0
    assert b.counters()["rows"] == 15


def test_integer_master_encodes_projects_and_decodes(gen):
    net = _net()
    b = _fixed(net, master="integer", bits=6)
    theta = net.init_params(gen)
    codes = b.encode(theta)
    assert torch.equal(codes, codes.round()) and codes.abs().max() <= 32
    w = b.formats["weight"]
    back = b.decode(codes)
    inside = theta.abs() < 2 ** (w.bits - w.frac_bits - 1) - w.lsb
    assert ((back - theta)[inside].abs() <= w.lsb / 2).all()
    moved = codes + torch.linspace(-40, 40, codes.numel(), dtype=codes.dtype) / 3
    b.project_(moved)
    assert torch.equal(moved, moved.round()) and moved.max() <= w.hi and moved.min() >= w.lo
    assert b.check_perturbation(1.0) is None and "whole number of LSBs" in b.check_perturbation(0.5)


def test_stochastic_update_rounding_is_seeded_and_unbiased():
    net = _net()
    b = _fixed(net, master="integer", update_rounding="stochastic")
    runs = []
    for _ in range(2):
        theta = torch.full((net.space.size,), 0.25, dtype=torch.float64)
        b.project_(theta, torch.Generator().manual_seed(7))
        runs.append(theta)
    assert torch.equal(runs[0], runs[1])
    assert set(runs[0].tolist()) == {0.0, 1.0} and abs(runs[0].mean().item() - 0.25) < 0.1


def test_float_master_warns_when_mu_is_below_one_lsb():
    b = _fixed(_net(), bits=8)
    assert "below the weight LSB 0.015625 (Q8.6)" in b.check_perturbation(0.01)
    assert b.check_perturbation(0.02) is None


FAST = ["data.train_limit=2000", "data.val_size=500", "train.steps=60", "train.eval_every=30",
        "train.batch_size=64"]


# The integer-master bound pins this seed's run, it is no claim about every seed: seeds 1..7 of the same
# settings reach 13.2-28.3 % (mean 20.0 % over seeds 0..7). The run is deterministic (asserted below; also
# 28.39 % with 1 thread instead of 2), so the margin is for a platform whose last-bit rounding flips a few
# test predictions: 3 standard errors of an accuracy on the 10,000 test images, 3 sqrt(0.284 x 0.716 / 10^4)
# = 1.35 points, below the measured 28.39 %: 27.0 %.
@pytest.mark.parametrize("config, lr, chance_beaten_by", [("mnist_tt_fixed8", 0.02, 0.3),
                                                          ("mnist_tt_fixed8_int", 1.28, 0.27)])
@pytest.mark.slow
def test_training_on_the_fixed_backend_learns_and_is_deterministic(tmp_path, config, lr, chance_beaten_by):
    """60 steps of batch 64 (measured: 45.9 % float master, 28.4 % integer master; chance is 10 %)."""
    overrides = FAST + [f"optimizer.lr={lr}"]
    runs = [train(load_config(config, overrides), tmp_path / str(i), progress=False, log=lambda s: None)
            for i in range(2)]
    assert runs[0]["test_accuracy"] == runs[1]["test_accuracy"] and runs[0]["counters"] == runs[1]["counters"]
    assert runs[0]["test_accuracy"] > chance_beaten_by and runs[0]["backend"] == "fixed"
    assert runs[0]["counters"]["macs_int8xint8"] > 0 and not runs[0]["warnings"]
    saved = torch.load(tmp_path / "0" / "params.pt")
    assert saved["backend"] == "fixed" and saved["theta"].shape == saved["backend_theta"].shape
    if load_config(config).backend.options["master"] == "integer":
        codes = saved["backend_theta"]
        assert torch.equal(codes, codes.round()) and codes.abs().max() <= 128
        assert torch.allclose(saved["theta"], codes * 2.0 ** -6)         # all tensors are Q8.6 cores


@pytest.mark.slow
def test_vanishing_perturbations_are_detected_and_reported(tmp_path):
    cfg = load_config("mnist_tt_fixed8", FAST[:2] + ["train.steps=4", "train.eval_every=2",
                                                      "estimator.rge.mu=0.0001"])
    metrics = train(cfg, tmp_path, progress=False, log=lambda s: None)
    assert any("below the weight LSB" in w for w in metrics["warnings"])
    assert any("were exactly zero" in w for w in metrics["warnings"])


def test_non_relu_activations_are_evaluated_on_the_host_and_put_back_on_the_grid():
    b = _fixed(_net(), bits=8)
    x = torch.tensor([[-1.5, 0.3, 2.0]])
    y = b.activation("tanh", x)
    fmt = b.formats["activation"]
    assert torch.equal(y.double(), quantize(torch.tanh(x.double()), fmt.bits, fmt.frac_bits).double() * fmt.lsb)
    assert torch.equal(b.activation("relu", torch.tensor([-0.5, 0.25])), torch.tensor([0.0, 0.25]))
    assert b.counters() == {"activation_tanh": 3, "activation_relu": 2}


@pytest.mark.parametrize("overflow", ["saturate", "wrap"])
@pytest.mark.parametrize("master", ["float", "integer"])
def test_the_device_path_gives_the_host_codes_and_counts(gen, monkeypatch, overflow, master):
    """Off the host (CUDA) the numerics skip every shortcut that reads data back (nothing to round, nothing
    out of range) and leave overflow counts on the device; forced here on the CPU, the outputs are the same
    bits and the counters the same numbers as the host path's, with values in and far out of range."""
    import hwsim.backends.fixed.numerics as numerics
    net = _net()
    x = torch.rand(2, 5, 12, generator=gen) * torch.tensor([1.0, 30.0])[:, None, None]
    for scale in (1, 40):
        host = _fixed(net, bits=8, overflow=overflow, master=master)
        theta = host.encode(net.init_params(gen) * scale)
        runs = []
        for on_host in (True, False):
            monkeypatch.setattr(numerics, "_on_host", lambda t, on_host=on_host: on_host)
            b = _fixed(net, bits=8, overflow=overflow, master=master)
            out = net.forward(b, net.space.unflatten(theta), x)
            runs.append((out, b.counters()))
        (out_h, c_h), (out_d, c_d) = runs
        assert torch.equal(out_h, out_d) and out_h.dtype == out_d.dtype
        assert c_h == c_d
    assert sum(v for k, v in c_h.items() if k.startswith("overflows")) > 0    # out of range was reached


@pytest.mark.parametrize("overflow", ["saturate", "wrap"])
def test_row_blocks_change_no_code_and_no_counter(gen, monkeypatch, overflow):
    """The contraction runs rows in cache-sized blocks (ROW_BLOCK_ELEMENTS): blocks of 1, 2 and all rows
    (queries sharing a layer input and queries with their own) give the same bits and the same counters,
    overflows included."""
    import hwsim.backends.fixed.backend as fixed_backend
    net = _net()
    x = torch.rand(3, 7, 12, generator=gen) * torch.tensor([1.0, 3.0, 30.0])[:, None, None]
    theta = net.init_params(gen) * 40                                    # saturates / wraps
    runs = []
    for elements in (1, 12, 2 ** 22):
        monkeypatch.setattr(fixed_backend, "ROW_BLOCK_ELEMENTS", elements)
        monkeypatch.setattr(fixed_backend, "ROW_BLOCK_MIN", 1)
        b = _fixed(net, bits=8, overflow=overflow)
        out = net.forward(b, net.space.unflatten(theta), x)
        shared = b.linear(net.layers[0], {n.split(".", 1)[1]: t.expand(4, *t.shape) for n, t in
                                          net.space.unflatten(theta).items() if n.startswith("0.")}, x[0], 4)
        runs.append((out, shared, b.counters()))
    for out, shared, counters in runs[:-1]:
        assert torch.equal(out, runs[-1][0]) and torch.equal(shared, runs[-1][1]) and counters == runs[-1][2]
    assert sum(v for k, v in runs[-1][2].items() if k.startswith("overflows")) > 0


def test_layer_inputs_known_on_the_grid_give_the_checked_codes(gen, monkeypatch):
    """A hidden layer takes its input's codes unchecked when the backend made that input (a layer output,
    then ReLU); the same network with that memory off (GRID_MEMORY = 0) gives the same bits and counters.
    A remembered tensor changed in place afterwards is checked again (off-grid values are rounded)."""
    import hwsim.backends.fixed.backend as fixed_backend
    net = _net()
    x = torch.rand(3, 5, 12, generator=gen)
    tensors = net.space.unflatten(net.init_params(gen) * 3)
    runs = []
    for memory in (0, fixed_backend.GRID_MEMORY):
        monkeypatch.setattr(fixed_backend, "GRID_MEMORY", memory)
        b = _fixed(net, bits=8)
        runs.append((net.forward(b, tensors, x), b.counters(), len(b._grid)))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert runs[0][2] == 0 and runs[1][2] > 0
    b = _fixed(net, bits=8)
    local = {n.split(".", 1)[1]: t for n, t in tensors.items() if n.startswith("2.")}
    hidden = b.activation("relu", b.linear(net.layers[0], {n.split(".", 1)[1]: t for n, t in tensors.items()
                                                          if n.startswith("0.")}, x, None))
    on_grid = b.linear(net.layers[2], local, hidden, None)
    hidden.add_(0.7 * b.formats["activation"].lsb)            # off the grid now: rounds up by one code
    fresh = _fixed(net, bits=8)
    assert torch.equal(b.linear(net.layers[2], local, hidden, None), fresh.linear(net.layers[2], local, hidden.clone(), None))
    assert not torch.equal(on_grid, fresh.linear(net.layers[2], local, hidden.clone(), None))
