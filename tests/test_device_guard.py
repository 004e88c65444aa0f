"""Host/device mixing, caught without a GPU: every shipped config's training losses and its evaluation run
with the backend's tensors on torch's ``meta`` device (shapes only, no data). A tensor left on the host
(CPU) that meets a device tensor raises there exactly as it would on CUDA ("Expected all tensors to be on
the same device"), which a CPU-only run can never show: the paper-size PINN crashed at its first loss on
a GPU this way (its ansatz's base and gate stayed on the host).

The losses (the estimators' only call into the network) run to their end. An evaluation runs until its
first read of a result on the host (``int(...)``, ``.to("cpu")``), which a meta tensor cannot serve: the
test accepts only that error there."""
from __future__ import annotations

import pytest
import torch

import hwsim.backends.base as base
from hwsim.backends.base import backend_class
from hwsim.build import build_network
from hwsim.config import PinnConfig, load_config, read_raw, shipped_configs
from hwsim.loop import build_parts

META = torch.device("meta")
HOST_READ = r"item\(\) cannot be called on meta tensors|Cannot copy out of meta tensor"
SMALL_TRAIN = ["data.train_limit=512", "data.val_size=64", "data.test_limit=64", "train.batch_size=16"]
SMALL_PINN = ["pde.points=3", "pde.test_points=8", "train.eval_batch_size=8"]


def _runs() -> list[str]:
    """The shipped run configs (not compare specs) whose backend computes on more than the CPU."""
    names = []
    for name in shipped_configs():
        raw = read_raw(name)
        if "config" in raw:                           # a compare spec
            continue
        backend = backend_class(raw.get("backend", {}).get("name", base.DEFAULT_BACKEND))
        if "cuda" in backend.capabilities.devices:
            names.append(name)
    return names


def _task(name: str):
    """(task, parts) of shipped config ``name``, small, with every backend tensor on the meta device."""
    raw = read_raw(name)
    if "pde" in raw:
        from hwsim.pinn.objective import derivative_method
        from hwsim.pinn.train import PinnTask, _setup
        cfg = load_config(name, SMALL_PINN, PinnConfig)
        problem, network, test_x = _setup(cfg)
        parts = build_parts(cfg, network, network.init_params, 1)
        method = derivative_method(cfg.pde.derivatives, problem.inputs, parts.generator)
        return PinnTask(cfg, problem, network, parts.backend, method, test_x), parts
    from hwsim.data import load_dataset
    from hwsim.train import Classification
    cfg = load_config(name, SMALL_TRAIN)
    d = cfg.data
    data = load_dataset(d.name, d.path, d.val_size, d.train_limit, d.test_limit)
    network = build_network(cfg.model)
    parts = build_parts(cfg, network, network.init_params, 1)
    return Classification(cfg, data, network, parts.backend), parts


@pytest.mark.parametrize("name", _runs())
def test_shipped_config_keeps_every_tensor_on_the_backend_device(name, monkeypatch):
    monkeypatch.setattr(base, "resolve_device", lambda choice: META)
    task, parts = _task(name)
    backend = parts.backend
    assert backend.device == META
    theta = backend.encode(backend.to_backend(parts.start))
    objective = task.objective(0, parts.generator)
    objective.key_noise(0)
    if parts.estimator is None:                       # first order: the loss itself
        assert objective.loss_at(theta).device == META
    else:
        deltas = torch.zeros(2, theta.numel(), dtype=theta.dtype, device=theta.device)
        losses = objective.losses(theta, deltas)
        assert losses.device == META and losses.shape == (2,)
    with pytest.raises((RuntimeError, NotImplementedError), match=HOST_READ):
        task.evaluate(0, theta)


def test_the_guard_sees_a_host_tensor_meet_a_device_tensor():
    """The mechanism the guard relies on: a host tensor combined with a meta one raises."""
    with pytest.raises(RuntimeError, match="device"):
        torch.ones(3) + torch.ones(3, device=META)


def test_cuda_without_a_cuda_device_is_one_config_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    from hwsim.errors import ConfigError
    with pytest.raises(ConfigError, match=r"^backend\.device: 'cuda' was asked for but torch sees no CUDA device"):
        base.create_backend("ideal", device="cuda")
