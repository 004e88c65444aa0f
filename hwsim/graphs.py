"""A small model's ZO step recorded once and replayed: CUDA graphs for the RGE estimate.

A step of a small network (the MNIST default: 1,504 parameters, 81 queries) is about a thousand tiny
operations, each launched from Python: on a GPU the launches, not the arithmetic, take the time. A CUDA
graph (torch.cuda.CUDAGraph) records the kernels of one estimate and replays them with one launch.

What is recorded: :meth:`hwsim.zo.RGE.estimate_along` for the step's objective: device work only (no read
of the device; tests/test_device_guard.py holds every shipped config to that). What changes between
steps goes through fixed buffers: the mini-batch (the objective's ``step_inputs``, copied on the device)
and the directions (drawn on the host from the run's generator as the eager step draws them, one copy).
The parameters are the run's own tensor, which the optimizer updates in place. The result is the eager
step's: the same directions, the same kernels.

Who may be replayed: a backend whose record says ``replayable`` (its calls are device work whose event
counts depend on shapes alone, so the counts of the recorded step are added at every replay), plain RGE,
an objective with step inputs (a classification batch), one process. Anything else runs eagerly. A
recording that fails (an operation CUDA cannot capture) is reported once and the run goes on eagerly with
the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from hwsim.zo import RGE, Estimate, to_device

WARM_UP_CALLS = 2        # eager calls before recording, on the stream that records (PyTorch's recipe: kernels,
                         # library handles and workspaces are set up outside the graph)


@dataclass
class _Recording:
    """One recorded estimate: its objective (whose step inputs are the buffers), the directions' buffer
    (N d,), the estimate whose tensors a replay overwrites, the event counts of one step, and ``replay``."""

    objective: object
    directions: torch.Tensor
    estimate: Estimate
    counts: dict
    replay: Callable[[], None]
    theta: int                                   # data_ptr of the parameters recorded


class ReplayedRGE:
    """``estimate(objective, theta, generator)`` like RGE's, recorded on the first call and replayed after.

    ``recorder``: "cuda" (a CUDA graph) or "python" (the recorded Python runs again into the same output
    tensors: the same buffers and counts without CUDA, for tests on a CPU). ``warn``: called once with a
    message if recording fails."""

    def __init__(self, estimator: RGE, backend, recorder: str = "cuda", warn: Callable[[str], None] = print):
        self.estimator, self.backend, self.recorder, self.warn = estimator, backend, recorder, warn
        self.recording: _Recording | None = None
        self.failed = False

    def estimate(self, objective, theta: torch.Tensor, generator: torch.Generator) -> Estimate:
        host = self.estimator.draw(theta, generator)
        inputs = objective.step_inputs()
        if self.failed or inputs is None:
            return self.estimator.estimate_along(objective, theta, to_device(host, theta))
        rec = self.recording
        if rec is None or rec.theta != theta.data_ptr() or not _same_shapes(rec.objective.step_inputs(), inputs):
            try:
                rec = self.recording = self._record(objective, theta, to_device(host, theta))
            except RuntimeError as error:
                self.failed = True
                objective.forget_prefixes()      # a front-layer output the failed recording kept but never ran
                self.warn(f"the step could not be recorded as a CUDA graph ({str(error).splitlines()[0]}); "
                          f"it runs eagerly, with the same numbers")
                return self.estimator.estimate_along(objective, theta, to_device(host, theta))
        for mine, new in zip(rec.objective.step_inputs(), inputs):
            mine.copy_(new, non_blocking=True)
        rec.directions.copy_(host, non_blocking=True)
        rec.replay()
        self.backend.add_counts(rec.counts)
        return rec.estimate

    def _record(self, objective, theta: torch.Tensor, directions: torch.Tensor) -> _Recording:
        """Record the estimate of ``objective`` at ``theta`` along ``directions`` (the buffers from now on)."""
        estimator, backend = self.estimator, self.backend

        def run() -> Estimate:
            objective.forget_prefixes()          # the layers in front are recorded, not taken from a call before
            return estimator.estimate_along(objective, theta, directions)

        if self.recorder == "python":
            with backend.counted_apart() as counts:
                est = run()
            counts = dict(counts)

            def replay() -> None:
                with backend.counted_apart():
                    again = run()
                for mine, new in zip(_outputs(est), _outputs(again)):
                    mine.copy_(new)
            return _Recording(objective, directions, est, counts, replay, theta.data_ptr())
        side = torch.cuda.Stream(theta.device)
        side.wait_stream(torch.cuda.current_stream(theta.device))
        with torch.cuda.stream(side), backend.counted_apart():
            for _ in range(WARM_UP_CALLS):
                run()
        torch.cuda.current_stream(theta.device).wait_stream(side)
        graph, first = torch.cuda.CUDAGraph(), []
        saved = torch.cuda.current_stream(theta.device)
        try:
            with backend.counted_apart() as counts, torch.cuda.graph(graph, stream=side):    # warm-up's stream
                try:
                    est = run()
                except RuntimeError as error:
                    first.append(error)          # ending the capture raises again, naming this one less well
                    raise
        except RuntimeError as error:
            torch.cuda.set_stream(saved)         # a capture that failed to end leaves its stream current
            raise (first[0] if first else error) from None
        return _Recording(objective, directions, est, dict(counts), graph.replay, theta.data_ptr())


def _outputs(est: Estimate) -> list[torch.Tensor]:
    return [est.grad, est.loss, est.zero_differences]


def _same_shapes(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return [(t.shape, t.dtype, t.device) for t in a] == [(t.shape, t.dtype, t.device) for t in b]


def step_estimate(estimator, backend, enabled: bool, ranks: int = 1,
                  warn: Callable[[str], None] = print) -> Callable[..., Estimate]:
    """The ``estimate(objective, theta, generator)`` a run's steps call: replayed from a CUDA graph where
    ``enabled`` and the step allows it (see the module), else the estimator's own."""
    if (enabled and isinstance(estimator, RGE) and backend.device.type == "cuda" and ranks == 1
            and backend.capabilities.replayable):
        return ReplayedRGE(estimator, backend, "cuda", warn).estimate
    return estimator.estimate
