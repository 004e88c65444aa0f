"""Zeroth-order gradient estimators: RGE, CGE and the hybrid schedule (Zhao et al., arXiv:2308.09858).

An estimator sees only the flat parameter vector theta (d,) and an *objective* that returns the
mini-batch losses at many parameter points in one call (all queries of a step use the same batch):

    objective.losses(theta, deltas, start)     deltas (Q, w) -> (Q,) losses with theta[start:start + w]
                                                                moved by deltas[q], the rest unchanged
    objective.coordinate_losses(theta, idx, h) idx (J,)      -> (J,) losses at theta + h * e_idx[j] (idx: a host
                                                                tensor)
    objective.block_losses(theta, blocks)      [(deltas, start), ...] -> [losses, ...]: the step's blocks of
                                                                queries in one call (spread over ranks as a whole)

It returns an :class:`Estimate` whose ``grad`` the caller writes into ``.grad`` before a stock
torch.optim optimizer steps. Every loss evaluation is one forward query and is counted.

Nothing here reads a value of the device back to the host (on a GPU each read waits for all queued
work): random draws come from the caller's host generator and reach the device in one copy a step, the
scalars of an estimate stay on the device until the caller reads them all at once (:meth:`Estimate.read`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from hwsim.params import ParamSpace

DISTRIBUTIONS = ("rademacher", "gaussian", "sphere")


class Objective(Protocol):
    def losses(self, theta: torch.Tensor, deltas: torch.Tensor, start: int = 0) -> torch.Tensor: ...

    def coordinate_losses(self, theta: torch.Tensor, idx: torch.Tensor, h: float) -> torch.Tensor: ...

    def block_losses(self, theta: torch.Tensor, blocks: list[tuple[torch.Tensor, int]]) -> list[torch.Tensor]: ...


@dataclass
class Estimate:
    """grad: (d,) gradient estimate; queries: forward queries spent; loss: () estimate of L(theta);
    differences: loss differences formed; zero_differences: () how many of them were exactly zero (on an
    exact backend: perturbations too small to register). ``loss`` and ``zero_differences`` are 0-dim
    tensors on grad's device: :meth:`read` brings them to the host."""

    grad: torch.Tensor
    queries: int
    loss: torch.Tensor
    differences: int = 0
    zero_differences: torch.Tensor | int = 0

    def read(self) -> tuple[float, int, bool]:
        """(loss, zero differences, whether every entry of grad is finite) in one read of the device."""
        zeros = self.zero_differences
        if not isinstance(zeros, torch.Tensor):          # a count the host knows: filled on the device, not copied
            zeros = self.grad.new_full((), zeros)
        flags = [self.loss, zeros, torch.isfinite(self.grad).all()]
        loss, zeros, finite = torch.stack([f.to(self.grad.device, torch.float64) for f in flags]).tolist()
        return loss, int(zeros), bool(finite)


def to_device(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Host tensor t on like's device without waiting for the device's queued work (a copy from the host
    need not wait: the source is staged at once; on the CPU this is t itself)."""
    return t.to(like.device, non_blocking=True)


def sample_directions(n: int, d: int, distribution: str, generator: torch.Generator,
                      like: torch.Tensor) -> torch.Tensor:
    """n random directions (n, d) with E[u u^T] = I (the sphere is scaled by sqrt(d) to get there), on the
    generator's device in like's dtype."""
    if distribution == "rademacher":
        u = torch.randint(0, 2, (n, d), generator=generator, device=generator.device).to(like.dtype) * 2 - 1
    elif distribution in ("gaussian", "sphere"):
        u = torch.randn(n, d, generator=generator, device=generator.device).to(like.dtype)
        if distribution == "sphere":
            u = u / u.norm(dim=1, keepdim=True) * d ** 0.5
    else:
        raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}, got {distribution!r}")
    return u


class RGE:
    """Randomized gradient estimate g = (1/N) sum_i [L(theta + mu u_i) - L(theta)] / mu * u_i.

    ``form="antithetic"`` uses [L(theta + mu u) - L(theta - mu u)] / (2 mu) (2N queries instead of N+1).
    ``per_tensor`` gives every named tensor its own N directions (supported on that tensor only), so the
    layers before it are evaluated once for all its queries. ``sign`` returns sign(g) (ZO-signSGD).
    Sphere directions are uniform on the sphere of radius sqrt(d), i.e. the usual d-scaling.
    """

    phase = "rge"

    def __init__(self, space: ParamSpace, num_queries: int = 10, mu: float = 0.01,
                 distribution: str = "rademacher", form: str = "forward", per_tensor: bool = False,
                 sign: bool = False):
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}, got {distribution!r}")
        if form not in ("forward", "antithetic"):
            raise ValueError(f"RGE form must be 'forward' or 'antithetic', got {form!r}")
        self.space, self.n, self.mu = space, num_queries, mu
        self.distribution, self.form, self.per_tensor, self.sign = distribution, form, per_tensor, sign

    def observe(self, epoch: int, val_accuracy: float | None = None) -> None:
        """RGE has no schedule of its own."""

    def state_dict(self) -> dict:
        """RGE keeps no state between steps (its directions come from the caller's generator)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore."""

    def queries_per_step(self) -> int:
        blocks = len(self.space) if self.per_tensor else 1
        return blocks * 2 * self.n if self.form == "antithetic" else blocks * self.n + 1

    def blocks(self, d: int) -> list[slice]:
        """The parameter ranges that get directions of their own: every tensor's, or all d at once."""
        return [e.slice for e in self.space.entries] if self.per_tensor else [slice(0, d)]

    def draw(self, theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The step's directions on the host in theta's dtype: every block's (N, w), flattened and joined
        into one tensor (N d,) (one copy to the device; :meth:`split` takes it apart)."""
        return torch.cat([sample_directions(self.n, b.stop - b.start, self.distribution, generator, theta).reshape(-1)
                          for b in self.blocks(theta.numel())])

    def split(self, flat: torch.Tensor, d: int) -> list[torch.Tensor]:
        """Views (N, w) of every block's directions in ``flat`` (N d,), as :meth:`draw` joined them."""
        widths = [b.stop - b.start for b in self.blocks(d)]
        return [part.view(self.n, w) for part, w in zip(flat.split([self.n * w for w in widths]), widths)]

    def estimate(self, objective: Objective, theta: torch.Tensor, generator: torch.Generator) -> Estimate:
        return self.estimate_along(objective, theta, to_device(self.draw(theta, generator), theta))

    def estimate_along(self, objective: Objective, theta: torch.Tensor, flat: torch.Tensor) -> Estimate:
        """The estimate along the directions ``flat`` (N d,) on theta's device (as :meth:`draw` gives them):
        device work only, no read of the device."""
        blocks, directions = self.blocks(theta.numel()), self.split(flat, theta.numel())
        if self.form == "forward":       # the base loss rides with the first block's queries
            moves = [torch.cat([u.new_zeros(1, u.shape[1]), self.mu * u]) if k == 0 else self.mu * u
                     for k, u in enumerate(directions)]
        else:
            moves = [torch.cat([self.mu * u, -self.mu * u]) for u in directions]
        losses = objective.block_losses(theta, [(m, b.start) for m, b in zip(moves, blocks)])
        grad = torch.zeros_like(theta)
        zeros = []
        if self.form == "forward":
            base = losses[0][0]
            losses[0] = losses[0][1:]
        for block, u, both in zip(blocks, directions, losses):
            if self.form == "forward":
                diffs = (both - base) / self.mu
            else:
                diffs = (both[:self.n] - both[self.n:]) / (2 * self.mu)
            grad[block] = diffs @ u / self.n
            zeros.append((diffs == 0).sum())
        queries = sum(len(m) for m in moves)
        loss = base if self.form == "forward" else torch.stack([b.mean() for b in losses]).double().sum() / len(blocks)
        return Estimate(grad.sign() if self.sign else grad, queries, loss, self.n * len(blocks), torch.stack(zeros).sum())


class CGE:
    """Coordinate-wise gradient estimate g_j = [L(theta + mu e_j) - L(theta - mu e_j)] / (2 mu).

    ``form="forward"`` uses [L(theta + mu e_j) - L(theta)] / mu (d+1 queries instead of 2d).
    ``subset`` < 1 estimates only a random subset of coordinates per step (each kept with that
    probability); the others get zero gradient.
    """

    phase = "cge"

    def __init__(self, space: ParamSpace, mu: float = 0.01, form: str = "central", subset: float = 1.0):
        if form not in ("forward", "central"):
            raise ValueError(f"CGE form must be 'forward' or 'central', got {form!r}")
        if not 0.0 < subset <= 1.0:
            raise ValueError(f"CGE subset must be in (0, 1], got {subset}")
        self.space, self.mu, self.form, self.subset = space, mu, form, subset

    def observe(self, epoch: int, val_accuracy: float | None = None) -> None:
        """CGE has no schedule of its own."""

    state_dict, load_state_dict = RGE.state_dict, RGE.load_state_dict

    def queries_per_step(self) -> int:
        d = round(self.space.size * self.subset)
        return d + 1 if self.form == "forward" else 2 * d

    def estimate(self, objective: Objective, theta: torch.Tensor, generator: torch.Generator) -> Estimate:
        d = theta.numel()
        if self.subset < 1.0:            # drawn and selected on the host: the objective groups idx there
            keep = torch.rand(d, generator=generator, device=generator.device) < self.subset
            idx = keep.nonzero().squeeze(1)
        else:
            idx = torch.arange(d)
        at = to_device(idx, theta)
        grad = torch.zeros_like(theta)
        if self.form == "forward":
            base = objective.losses(theta, theta.new_zeros(1, 0))[0]
            diffs = (objective.coordinate_losses(theta, idx, self.mu) - base) / self.mu
            grad[at] = diffs
            return Estimate(grad, len(idx) + 1, base, len(idx), (diffs == 0).sum())
        plus = objective.coordinate_losses(theta, idx, self.mu)
        minus = objective.coordinate_losses(theta, idx, -self.mu)
        grad[at] = (plus - minus) / (2 * self.mu)
        loss = (plus + minus).mean() / 2 if len(idx) else theta.new_tensor(float("nan"))
        return Estimate(grad, 2 * len(idx), loss, len(idx), (plus == minus).sum())


class Hybrid:
    """RGE first, CGE after: switch at epoch ``switch_epoch`` or after ``patience`` evaluations
    without a new best score (validation accuracy, or minus the PINN's error; whichever is configured;
    both may be)."""

    def __init__(self, rge: RGE, cge: CGE, switch_epoch: int | None = None, patience: int | None = None):
        if switch_epoch is None and patience is None:
            raise ValueError("hybrid needs switch_epoch or patience")
        self.rge, self.cge = rge, cge
        self.switch_epoch, self.patience = switch_epoch, patience
        self.current: RGE | CGE = rge
        self.best, self.stale = float("-inf"), 0

    @property
    def phase(self) -> str:
        return self.current.phase

    def queries_per_step(self) -> int:
        return self.current.queries_per_step()

    def observe(self, epoch: int, val_accuracy: float | None = None) -> None:
        if self.switch_epoch is not None and epoch >= self.switch_epoch:
            self.current = self.cge
        if val_accuracy is not None and self.patience is not None:
            if val_accuracy > self.best:
                self.best, self.stale = val_accuracy, 0
            else:
                self.stale += 1
                if self.stale >= self.patience:
                    self.current = self.cge

    def state_dict(self) -> dict:
        """The schedule's position: the phase, the best score seen and evaluations since it."""
        return {"phase": self.phase, "best": self.best, "stale": self.stale}

    def load_state_dict(self, state: dict) -> None:
        self.current = self.cge if state["phase"] == self.cge.phase else self.rge
        self.best, self.stale = float(state["best"]), int(state["stale"])

    def estimate(self, objective: Objective, theta: torch.Tensor, generator: torch.Generator) -> Estimate:
        return self.current.estimate(objective, theta, generator)
