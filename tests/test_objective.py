"""The batched query evaluation computes exactly what evaluating every query alone computes."""
import dataclasses

import pytest
import torch

from hwsim.backends import create_backend
from hwsim.model import Activation, Linear, Network, TTLinear, cross_entropy
from hwsim.objective import BatchObjective
from hwsim.tt import TTShape


def small_network(end_with_activation=True):
    return Network([
        TTLinear(12, 8, True, TTShape.build(12, 8, 2, (3, 4), (2, 4))), Activation("relu"),
        Linear(8, 5, True), Activation("tanh"),
        TTLinear(5, 3, False, TTShape.build(5, 3, 3, (5, 1), (1, 3)))]
        + ([Activation("sin")] if end_with_activation else []))


@pytest.fixture(params=[True, False], ids=["ends-with-activation", "ends-with-linear"])
def setup(request):
    net = small_network(request.param)
    backend = create_backend("ideal", dtype="float64")
    g = torch.Generator().manual_seed(0)
    theta = net.init_params(g)
    x = torch.randn(7, 12, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (7,), generator=g)
    return net, backend, theta, x, y


def loss_alone(net, backend, theta, x, y):
    return cross_entropy(net.forward(backend, net.space.unflatten(theta), x), y)


def test_batched_losses_equal_one_at_a_time(setup):
    net, backend, theta, x, y = setup
    g = torch.Generator().manual_seed(1)
    deltas = torch.randn(9, theta.numel(), dtype=torch.float64, generator=g) * 0.1
    deltas[3] = 0                                            # the base point inside a batch
    deltas[4, :net.space.entries[1].offset] = 0              # only later tensors perturbed
    deltas[5:, net.space.entries[3].offset:] = 0             # only early tensors perturbed
    obj = BatchObjective(net, backend, x, y, chunk_elements=7 * 12 * 4)   # forces several chunks
    assert obj.chunk < len(deltas)
    got = obj.losses(theta, deltas)
    want = torch.stack([loss_alone(net, backend, theta + d, x, y) for d in deltas])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert obj.queries == 9
    window = slice(5, 40)                                    # a window across tensor boundaries
    got = obj.losses(theta, deltas[:, window], window.start)
    moved = torch.zeros_like(deltas)
    moved[:, window] = deltas[:, window]
    want = torch.stack([loss_alone(net, backend, theta + d, x, y) for d in moved])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="do not fit"):
        obj.losses(theta, deltas, 1)


def test_per_tensor_chunks_run_earlier_layers_once(setup):
    net, backend, theta, x, y = setup
    last = net.space.entries[-1]
    deltas = torch.full((4, last.numel), 0.01, dtype=torch.float64)
    backend.reset_counters()
    got = BatchObjective(net, backend, x, y).losses(theta, deltas, last.offset)
    rows = backend.counters()["rows"]
    moved = theta.clone()
    moved[last.slice] += 0.01
    torch.testing.assert_close(got, loss_alone(net, backend, moved, x, y).expand(4), rtol=1e-12, atol=1e-12)
    # layers 0 and 2 ran once for all four queries (7 rows each); only the last layer saw 4 x 7 rows
    assert rows == 7 + 7 + 4 * 7


def test_multilinear_coordinate_shortcut_equals_full_evaluation(setup):
    net, backend, theta, x, y = setup
    idx = torch.arange(theta.numel())
    fast = BatchObjective(net, backend, x, y).coordinate_losses(theta, idx, 0.01)
    slow_backend = create_backend("ideal", dtype="float64")
    slow_backend.capabilities = dataclasses.replace(slow_backend.capabilities, multilinear=False)
    slow = BatchObjective(net, slow_backend, x, y).coordinate_losses(theta, idx, 0.01)
    want = torch.stack([loss_alone(net, backend, theta + 0.01 * torch.eye(theta.numel(), dtype=torch.float64)[j], x, y)
                        for j in idx])
    torch.testing.assert_close(slow, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast, want, rtol=1e-10, atol=1e-12)


def test_shortcut_handles_subsets_in_any_order(setup):
    net, backend, theta, x, y = setup
    idx = torch.tensor([theta.numel() - 1, 0, 50, 7, 100])
    obj = BatchObjective(net, backend, x, y, chunk_elements=7 * 12 * 2)
    got = obj.coordinate_losses(theta, idx, -0.05)
    want = torch.stack([loss_alone(net, backend, theta - 0.05 * torch.eye(theta.numel(), dtype=torch.float64)[j], x, y)
                        for j in idx])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert obj.queries == 5


@pytest.mark.parametrize("name, options", [("ideal", {"dtype": "float64"}), ("fixed", {"bits": 8})])
def test_the_prefix_runs_once_per_step_not_once_per_call(name, options):
    """Per-tensor queries of a late tensor share the layers in front of it: the objective keeps their
    output for every later call of the step (as a host would), with the same losses as running them per
    call, and counts it once as prefix_cache_values."""
    net = small_network()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 12, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (7,), generator=g)
    last = net.space.entries[-1]
    results = {}
    for shared in (True, False):
        backend = create_backend(name, **options)
        backend.bind(net)
        theta = backend.encode(net.init_params(torch.Generator().manual_seed(0)).to(backend.dtype))
        deltas = torch.randn(4, 3, last.numel, dtype=theta.dtype, generator=torch.Generator().manual_seed(1)) * 0.01
        one = BatchObjective(net, backend, x.to(backend.data_dtype), y)
        calls = [(one if shared else BatchObjective(net, backend, x.to(backend.data_dtype), y)).losses(
            theta, d, last.offset) for d in deltas]
        results[shared] = (torch.cat(calls), backend.counters())
    (kept, c_kept), (again, c_again) = results[True], results[False]
    assert torch.equal(kept, again)
    assert c_again["prefix_cache_values"] == 4 * c_kept["prefix_cache_values"] == 4 * 7 * 5
    assert c_kept["rows"] < c_again["rows"]


def test_chunk_elements_default_is_chosen_for_the_device(monkeypatch):
    """null: 2^22 on the CPU (its cache); on a GPU 1/64 of its memory in float32 elements, at most 2^28;
    a configured value is kept on every device."""
    from types import SimpleNamespace

    from hwsim.objective import DEFAULT_CHUNK_ELEMENTS, chunk_elements
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert chunk_elements(None, cpu) == DEFAULT_CHUNK_ELEMENTS == 2 ** 22
    assert chunk_elements(1000, cpu) == chunk_elements(1000, gpu) == 1000
    for memory, expected in ((141 * 2 ** 30, 2 ** 28), (16 * 2 ** 30, 2 ** 26)):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d, m=memory: SimpleNamespace(total_memory=m))
        assert chunk_elements(None, gpu) == expected
