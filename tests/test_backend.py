import pytest
import torch

from hwsim.backends import backend_class, backend_names, create_backend
from hwsim.errors import ConfigError
from hwsim.backends.ideal import IdealBackend
from hwsim.model import Linear


def test_registry_lists_and_creates_ideal():
    assert "ideal" in backend_names()
    assert backend_class("ideal") is IdealBackend
    b = create_backend("ideal", dtype="float64", tt_method="direct")
    assert b.dtype == torch.float64 and b.capabilities.differentiable


def test_unknown_backend_lists_known_ones():
    with pytest.raises(ConfigError, match="backend.name: unknown backend 'nope'; known backends: fixed, ideal"):
        create_backend("nope")


def test_linear_shapes_with_and_without_query_axis():
    b = create_backend("ideal", dtype="float64")
    layer = Linear(3, 2, True)
    w = torch.randn(4, 2, 3, dtype=torch.float64)
    bias = torch.randn(4, 2, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)
    y = b.linear(layer, {"weight": w, "bias": bias}, x, 4)
    assert y.shape == (4, 5, 2)
    torch.testing.assert_close(y[2], x @ w[2].T + bias[2])
    assert b.linear(layer, {"weight": w[0], "bias": bias[0]}, x, None).shape == (5, 2)
    assert b.counters()["linear_calls"] == 2
    b.reset_counters()
    assert b.counters() == {}
