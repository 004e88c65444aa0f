"""Host/device mixing, caught without a GPU: every shipped config's training losses and its evaluation run
with the backend's tensors on torch's ``meta`` device (shapes only, no data). A tensor left on the host
(CPU) that meets a device tensor raises there exactly as it would on CUDA ("Expected all tensors to be on
the same device"), which a CPU-only run can never show: the paper-size PINN crashed at its first loss on
a GPU this way (its ansatz's base and gate stayed on the host).

What CUDA refuses but the meta device lets pass (an in-place operation on a device tensor with a host
operand; a host generator drawing straight onto the device) is refused by a function mode around the
test (DeviceGuard).

The photonic chip's model programs the parameters on the host (it reads their values, which a meta
tensor does not have): the guard hands it zeros of their shape there, and checks the data path around it.

A training step's gradient estimate runs to its end: a meta tensor has no values, so any read of the
device from the host (``float(loss)``, ``.item()``, ``nonzero``, ``.cpu()``; on a GPU each waits for all
queued work) fails, and a function mode (NoWaitingCopies) refuses copies from the host that would wait
for the device (``.to(device)`` without ``non_blocking``). An evaluation runs until its first read of a
result on the host, which a meta tensor cannot serve: the test accepts only that error there."""
from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

import hwsim.backends.base as base
from hwsim.backends.base import backend_class
from hwsim.backends.photonic.backend import PhotonicBackend
from hwsim.config import PinnConfig, load_config, read_raw, shipped_configs
from hwsim.pinn.train import prepare as pinn_prepare
from hwsim.train import prepare as train_prepare
from hwsim.zo import RGE

META = torch.device("meta")
HOST_READ = r"item\(\) cannot be called on meta tensors|Cannot copy out of meta tensor"
SMALL_TRAIN = ["data.train_limit=512", "data.val_size=64", "data.test_limit=64", "train.batch_size=16"]
SMALL_PINN = ["pde.points=3", "pde.test_points=8", "train.eval_batch_size=8"]


class DeviceGuard(TorchFunctionMode):
    """What CUDA refuses and the meta device lets pass: an in-place operation on a device tensor with a host
    operand (``meta.mul_(cpu)`` is allowed, ``cuda.mul_(cpu)`` is not), and a draw whose generator lives on
    another device type than the tensor it makes. Moves, copies and indexing may cross devices (CUDA
    allows them); 0-dim host tensors are scalars."""

    CROSSING = {"to", "cpu", "cuda", "copy_", "__getitem__", "__setitem__", "__get__", "__set__"}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        gen, device = kwargs.get("generator"), kwargs.get("device")
        if gen is not None and device is not None and torch.device(device).type != gen.device.type:
            raise RuntimeError(f"{name}: a {gen.device.type} generator drawing on {device}")
        if name not in self.CROSSING:
            kinds = {t.device.type for t in _tensors((args, kwargs)) if t.dim() > 0}
            if len(kinds) > 1:
                raise RuntimeError(f"{name}: tensors on {' and '.join(sorted(kinds))} in one operation")
        return func(*args, **kwargs)


class NoWaitingCopies(TorchFunctionMode):
    """Refuses a copy of a host tensor onto another device that would wait for the device's queued work (on
    CUDA a blocking host-to-device copy synchronises the stream; ``non_blocking=True`` stages it instead);
    ``staged=False`` refuses every copy from the host (what a CUDA graph cannot record)."""

    def __init__(self, staged: bool = True):
        super().__init__()
        self.staged = staged

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("to", "copy_", "cuda") and not (self.staged and kwargs.get("non_blocking", False)):
            source = args[1] if name == "copy_" else args[0]
            target = args[0].device if name == "copy_" else _target_device(args[1:], kwargs)
            if (isinstance(source, torch.Tensor) and source.device.type == "cpu" and source.dim() > 0
                    and target is not None and target.type != "cpu"):
                raise RuntimeError(f"{name}: a copy from the host onto {target.type} that waits for the device")
        return func(*args, **kwargs)


def _target_device(args, kwargs) -> torch.device | None:
    """The device of Tensor.to's arguments (a device, a string or a tensor to match), or None."""
    for value in [kwargs.get("device"), *args]:
        if isinstance(value, torch.Tensor):
            return value.device
        if isinstance(value, (str, torch.device)):
            return torch.device(value)
    return None


def _tensors(obj):
    """Every tensor in nested args (lists, tuples, dicts)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _zeros_for_meta(t: torch.Tensor) -> torch.Tensor:
    """PhotonicBackend._host under the guard: a meta tensor's stand-in on the host (zeros of its shape)."""
    return torch.zeros(t.shape, dtype=t.dtype) if t.device == META else t.to("cpu")


# Shipped configs on other hardware, for the paths no shipped config takes: the photonic chip's read-out
# noise and ADCs (weights and phases), stochastic integer updates, a PINN on integer hardware.
VARIANTS = [
    ("mnist_tt_zo", ["backend.name=photonic", "backend.noise=typical", "backend.calibrate=false"]),
    ("mnist_tt_zo", ["backend.name=photonic", "backend.noise=typical", "backend.calibrate=false", "backend.params=phases"]),
    ("mnist_tt_zo", ["backend.name=fixed", "backend.master=integer", "backend.update_rounding=stochastic",
                     "estimator.rge.mu=1"]),
    ("hjb20_zo_tt_sg", ["backend.name=fixed", "backend.bits=12"]),
    ("hjb20_zo_tt_fd", ["backend.name=photonic", "backend.noise=typical", "backend.calibrate=false"]),
]


def _runs() -> list[tuple[str, list[str]]]:
    """The shipped run configs (not compare specs) whose backend computes on more than the CPU, and VARIANTS."""
    names = []
    for name in shipped_configs():
        raw = read_raw(name)
        if "config" in raw:                           # a compare spec
            continue
        backend = backend_class(raw.get("backend", {}).get("name", base.DEFAULT_BACKEND))
        if "cuda" in backend.capabilities.devices:
            names.append((name, []))
    return names + VARIANTS


def _task(name: str, overrides: list[str]):
    """(task, parts) of shipped config ``name`` with ``overrides``, small (every backend tensor on the meta
    device when resolve_device is patched)."""
    if "pde" in read_raw(name):
        task, parts, _ = pinn_prepare(load_config(name, SMALL_PINN + overrides, PinnConfig))
    else:
        task, parts, _ = train_prepare(load_config(name, SMALL_TRAIN + overrides))
    return task, parts


@pytest.mark.parametrize("name, overrides", _runs(), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_shipped_config_keeps_every_tensor_on_the_backend_device(name, overrides, monkeypatch):
    monkeypatch.setattr(base, "resolve_device", lambda choice: META)
    monkeypatch.setattr(PhotonicBackend, "_host", staticmethod(_zeros_for_meta))
    with DeviceGuard():
        _one_step_and_evaluation(name, overrides)


def _one_step_and_evaluation(name: str, overrides: list[str]) -> None:
    task, parts = _task(name, overrides)
    backend = parts.backend
    assert backend.device == META
    theta = backend.encode(backend.to_backend(parts.start))
    task.objective(0, parts.generator)                # the first draws may set up (move data once)
    with NoWaitingCopies():                           # a step's objective and estimate: no read of the device
        objective = task.objective(1, parts.generator)
        objective.key_noise(1)
        if parts.estimator is not None:
            estimate = parts.estimator.estimate(objective, theta, parts.generator)
    if _replayable(parts, objective):                 # what a CUDA graph records: no copy from the host at all
        directions = parts.estimator.draw(theta, parts.generator).to(META)
        with NoWaitingCopies(staged=False):
            parts.estimator.estimate_along(objective, theta, directions)
    if parts.estimator is None:                       # first order: the loss itself
        assert objective.loss_at(theta).device == META
    else:
        assert estimate.grad.device == estimate.loss.device == META and estimate.grad.shape == theta.shape
    backend.project_(theta.clone(), parts.generator)    # after the optimizer step: back onto the hardware
    backend.advance()
    with pytest.raises((RuntimeError, NotImplementedError), match=HOST_READ):
        task.evaluate(0, theta)


def _replayable(parts, objective) -> bool:
    """Whether hwsim.graphs would record this run's steps on a GPU."""
    return (isinstance(parts.estimator, RGE) and parts.backend.capabilities.replayable
            and objective.step_inputs() is not None)


def test_the_guard_sees_a_host_tensor_meet_a_device_tensor():
    """The mechanisms the guard relies on: a host tensor combined with a meta one raises; so does a host
    generator drawing on the meta device inside the guard's mode."""
    with pytest.raises(RuntimeError, match="device"):
        torch.ones(3) + torch.ones(3, device=META)
    with DeviceGuard(), pytest.raises(RuntimeError, match="a cpu generator drawing on meta"):
        torch.rand(3, generator=torch.Generator(), device=META)
    with DeviceGuard(), pytest.raises(RuntimeError, match="mul_: tensors on cpu and meta in one operation"):
        torch.ones(3, device=META).mul_(torch.ones(3))
    with NoWaitingCopies(), pytest.raises(RuntimeError, match="to: a copy from the host onto meta that waits"):
        torch.ones(3).to(META)
    with NoWaitingCopies(), pytest.raises(RuntimeError, match="copy_: a copy from the host onto meta that waits"):
        torch.empty(3, device=META).copy_(torch.ones(3))
    with NoWaitingCopies():
        torch.ones(3).to(META, non_blocking=True)
    with NoWaitingCopies(staged=False), pytest.raises(RuntimeError, match="to: a copy from the host onto meta"):
        torch.ones(3).to(META, non_blocking=True)
    with pytest.raises(RuntimeError, match=HOST_READ):
        float(torch.ones((), device=META))


def test_cuda_without_a_cuda_device_is_one_config_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    from hwsim.errors import ConfigError
    with pytest.raises(ConfigError, match=r"^backend\.device: 'cuda' was asked for but torch sees no CUDA device"):
        base.create_backend("ideal", device="cuda")
