"""The mcu backend: registry, shapes contract, integer-code parametrisation, refusals."""
from __future__ import annotations

import pytest
import torch

from hwsim.backends import backend_class, create_backend
from hwsim.errors import ConfigError
from hwsim.model import Activation, Linear, Network, TTLinear
from hwsim.tt import TTShape
from hwsim_mcu.arch import CortexM
from hwsim_mcu.backend import McuBackend
from hwsim_mcu.kernels import linear_s8, saturate_int8


def tiny_tt(bias=True):
    shape = TTShape.build(12, 6, 2, [3, 4], [2, 3], None)
    return Network([TTLinear(12, 6, bias, shape), Activation("relu"), Linear(6, 3, bias)])


def bound(net, **options):
    b = McuBackend(McuBackend.Options(**options))
    b.bind(net)
    theta = net.init_params(torch.Generator().manual_seed(0))
    if net.space.by_name.get("0.bias") is not None:                    # non-zero biases exercise the path
        named = net.space.unflatten(theta.clone())
        named["0.bias"].copy_(torch.linspace(-0.2, 0.2, named["0.bias"].numel(), dtype=torch.float64))
        theta = net.space.flatten(named)
    return b, theta, b.encode(theta)


def test_found_through_the_entry_point():
    assert backend_class("mcu") is McuBackend
    assert McuBackend.name == "mcu" and McuBackend.summary
    caps = McuBackend.capabilities
    assert (caps.exact, caps.differentiable, caps.multilinear) == (True, False, False)
    assert McuBackend.architecture.name == "cortex_m" and McuBackend.architecture.spec is CortexM


def test_query_axis_or_not_gives_the_same_numbers():
    net = tiny_tt()
    b, _, codes = bound(net)
    x = torch.rand(5, 12, generator=torch.Generator().manual_seed(1))
    q = 3
    thetas = torch.stack([codes + k * (torch.arange(codes.numel()) % 3 - 1) for k in range(q)])  # 3 queries
    per_query = [net.forward(b, net.space.unflatten(t), x) for t in thetas]
    batched = net.forward(b, net.space.unflatten(thetas), x, queries=q, batched=set(net.space.by_name))
    assert batched.shape == (q, 5, 3)
    for k in range(q):
        assert torch.equal(batched[k], per_query[k])
    # only the last layer's weight batched: the prefix runs once, x then carries no query axis
    named = net.space.unflatten(codes)
    tensors = {**named, "2.weight": torch.stack([named["2.weight"]] * q)}
    part = net.forward(b, tensors, x, queries=q, batched={"2.weight"})
    assert part.shape == (q, 5, 3) and all(torch.equal(part[k], per_query[0]) for k in range(q))
    # x with a query axis, params without
    layer = net.layers[2]
    h = torch.relu(b.linear(net.layers[0], {"core0": named["0.core0"], "core1": named["0.core1"],
                                            "bias": named["0.bias"]}, x, None))
    hq = torch.stack([h, h])
    y2 = b.linear(layer, {"weight": named["2.weight"], "bias": named["2.bias"]}, hq, None)
    assert y2.shape == (2, 5, 3) and torch.equal(y2[0], per_query[0]) and torch.equal(y2[1], per_query[0])


def test_dense_layer_is_the_kernel():
    net = Network([Linear(7, 4, True)])
    b, _, codes = bound(net)
    x = torch.rand(3, 7, generator=torch.Generator().manual_seed(2))
    sc = b._scales[0]
    xc, _ = saturate_int8(torch.round(x.double() / sc.s_in).long())
    named = net.space.unflatten(codes)
    y, _ = linear_s8(xc, named["0.weight"].long(), named["0.bias"].long(), *sc.steps[0])
    assert torch.equal(net.forward(b, named, x), (y.double() * sc.s_out[-1]).float())
    c = b.counters()
    assert c["macs_int8xint8"] == 3 * 7 * 4 and c["requantizations"] == 3 * 4 and c["linear_calls"] == 1


def test_encode_decode_project_round_trip():
    net = tiny_tt()
    b, theta, codes = bound(net)
    assert torch.equal(codes, torch.round(codes))
    steps = [s for e, (s, lo, hi) in zip(net.space.entries, b._entry_scales())]
    back = b.decode(codes)
    for e, s in zip(net.space.entries, steps):
        assert (back[e.slice] - theta[e.slice]).abs().max() <= s / 2 + 1e-15
        if not e.name.endswith("bias"):
            assert codes[e.slice].abs().max() == 127          # the scale is max|w| / 127
    assert torch.equal(b.encode(b.decode(codes)), codes)      # codes -> values -> the same codes
    moved = codes + 0.4
    moved[0], moved[1] = 300.6, -1e3
    bias = net.space.by_name["0.bias"]
    moved[bias.offset] = 2.0 ** 40
    b.project_(moved)
    assert torch.equal(moved, torch.round(moved))
    assert moved[0] == 127 and moved[1] == -127 and moved[bias.offset] == 2 ** 31 - 1
    assert torch.equal(moved[2:bias.offset], (codes[2:bias.offset] + 0.4).round().clamp(-127, 127))


def test_stochastic_update_rounding_and_scales_in_the_state():
    net = tiny_tt()
    b, _, codes = bound(net, update_rounding="stochastic")
    moved = codes + 0.5
    b.project_(moved, torch.Generator().manual_seed(0))
    assert torch.equal(moved, torch.round(moved)) and not torch.equal(moved, codes)
    fresh = McuBackend(McuBackend.Options(update_rounding="stochastic"))
    fresh.bind(net)
    fresh.load_state_dict(b.state_dict())
    x = torch.rand(2, 12)
    assert torch.equal(net.forward(fresh, net.space.unflatten(codes), x), net.forward(b, net.space.unflatten(codes), x))


def test_perturbation_warning_below_one_lsb():
    b, _, _ = bound(tiny_tt())
    assert b.check_perturbation(1.0) is None and b.check_perturbation(2) is None
    assert "below one weight LSB" in b.check_perturbation(0.01)
    assert "whole number" in b.check_perturbation(1.5)


def test_storage_and_memory_limit():
    b = McuBackend()
    assert b.storage_bits() == (8, 8) and b.memory_limit() is None
    b.bind(tiny_tt(), CortexM(sram_bytes=256 * 1024))
    assert b.memory_limit() == 256 * 1024


def test_a_model_too_large_for_flash_is_refused_in_one_line():
    net = Network([Linear(2048, 1024, True)])
    with pytest.raises(ConfigError) as e:
        McuBackend().bind(net)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == ("model.layers: the int8 weights and int32 biases need 2,101,248 B; the STM32F746's flash "
                   "holds 1,048,576 B (architecture.flash_bytes)")
    McuBackend().bind(net, CortexM(part="bigger", flash_bytes=4 * 1024 * 1024))     # fits 4 MB


def test_refusals_of_options_and_activations():
    with pytest.raises(ConfigError, match=r"^backend\.input_range: expected a number > 0"):
        McuBackend(McuBackend.Options(input_range=0))
    with pytest.raises(ConfigError, match=r"^backend\.update_rounding: 'up' is not allowed; expected one of 'nearest'"):
        create_backend("mcu", update_rounding="up")            # the options' typed schema (hwsim's converter)
    with pytest.raises(ConfigError, match=r"^model\.layers\[1\]: the mcu backend runs int8 ReLU only"):
        McuBackend().bind(Network([Linear(3, 3), Activation("tanh"), Linear(3, 2)]))
    with pytest.raises(RuntimeError, match="encode"):
        b = McuBackend()
        net = tiny_tt()
        b.bind(net)
        net.forward(b, net.space.unflatten(net.init_params(torch.Generator())), torch.rand(1, 12))
