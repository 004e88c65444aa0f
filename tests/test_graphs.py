"""A recorded RGE step replayed (hwsim.graphs): the same numbers and counts as the eager step.

CUDA graphs need a GPU (benchmarks/gpu_check.py compares them with the eager step there); here the
"python" recorder exercises the rest on the CPU: the buffers a replay reads (the mini-batch, the
directions, the parameters updated in place), the outputs it overwrites and the counts it adds."""
from __future__ import annotations

import torch

from hwsim.config import PinnConfig, load_config
from hwsim.graphs import ReplayedRGE, step_estimate
from hwsim.pinn.train import prepare as pinn_prepare
from hwsim.train import prepare as train_prepare

SMALL = ["data.train_limit=512", "data.val_size=64", "data.test_limit=64", "train.batch_size=32"]


def _steps(parts, task, estimate, steps: int):
    """Run ``steps`` Adam steps with ``estimate``; the losses, zero-difference counts, final parameters
    and backend counters."""
    backend = parts.backend
    theta = torch.nn.Parameter(backend.encode(backend.to_backend(parts.start)))
    optimizer = torch.optim.Adam([theta], lr=1e-2)
    seen = []
    for step in range(steps):
        objective = task.objective(step, parts.generator)
        objective.key_noise(step)
        est = estimate(objective, theta.detach(), parts.generator)
        seen.append(est.read())
        theta.grad = est.grad.to(theta.dtype)          # as the loop does: a replay's own output tensor
        optimizer.step()
    return seen, theta.detach().clone(), backend.counters()


def _prepared(overrides):
    task, parts, _ = train_prepare(load_config("mnist_tt_zo", SMALL + overrides))
    return task, parts


def test_a_replayed_step_gives_the_eager_steps_numbers_and_counts():
    """Per-tensor RGE (8 blocks, the prefix kept between blocks) and plain antithetic RGE: four steps of new
    mini-batches and directions, the parameters moved in place between them."""
    for overrides in ([], ["estimator.rge.per_tensor=false", "estimator.rge.form=antithetic"]):
        task, parts = _prepared(overrides)
        eager = _steps(parts, task, parts.estimator.estimate, 4)
        task, parts = _prepared(overrides)
        replayed = ReplayedRGE(parts.estimator, parts.backend, "python")
        again = _steps(parts, task, replayed.estimate, 4)
        assert again[0] == eager[0]
        assert torch.equal(again[1], eager[1])
        assert again[2] == eager[2]
        assert replayed.recording is not None and not replayed.failed


def test_a_recording_that_fails_is_reported_once_and_the_run_goes_on_eagerly(monkeypatch):
    task, parts = _prepared([])
    eager = _steps(parts, task, parts.estimator.estimate, 3)
    task, parts = _prepared([])
    messages = []
    replayed = ReplayedRGE(parts.estimator, parts.backend, "python", messages.append)

    real = parts.estimator.estimate_along
    calls = {"n": 0}

    def refuse(objective, theta, directions):          # fails inside the recording, after the front layers ran
        calls["n"] += 1
        if calls["n"] == 1:
            real(objective, theta, directions)
            raise RuntimeError("operation not permitted when stream is capturing\nmore")
        return real(objective, theta, directions)
    monkeypatch.setattr(parts.estimator, "estimate_along", refuse)
    again = _steps(parts, task, replayed.estimate, 3)
    assert messages == ["the step could not be recorded as a CUDA graph (operation not permitted when stream is "
                        "capturing); it runs eagerly, with the same numbers"]
    assert again[0] == eager[0] and torch.equal(again[1], eager[1]) and again[2] == eager[2]


def test_a_pde_objective_is_not_replayed():
    """A PINN's loss depends on more than a batch (the collocation points' base and gate): eager."""
    task, parts, _ = pinn_prepare(load_config("hjb20_zo_tt_sg", ["pde.points=2", "pde.test_points=8"], PinnConfig))
    replayed = ReplayedRGE(parts.estimator, parts.backend, "python")
    _steps(parts, task, replayed.estimate, 1)
    assert replayed.recording is None


def test_graphs_are_used_only_where_the_step_allows_them():
    task, parts = _prepared([])
    plain = parts.estimator.estimate
    assert step_estimate(parts.estimator, parts.backend, True) == plain          # the CPU: nothing to replay
    _, fixed = _prepared(["backend.name=fixed"])
    assert not fixed.backend.capabilities.replayable and parts.backend.capabilities.replayable
    _, cge = _prepared(["estimator.name=cge"])
    assert step_estimate(cge.estimator, cge.backend, True) == cge.estimator.estimate
