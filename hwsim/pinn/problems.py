"""PDE problems with known solutions, each with a hard-constraint ansatz u = base(X) + gate(X) N(X).

X = (x_1 .. x_d, t): the network sees d + 1 inputs. A problem supplies the ansatz pieces, the PDE
residual from derivatives of u, the exact solution, and uniform sampling of its domain.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hwsim.pinn.derivatives import Derivatives

PROBLEMS = ("hjb", "heat")


@dataclass(frozen=True)
class Problem:
    """Base class: ``dim`` spatial dimensions on [0, 1]^dim x [0, 1] (time last)."""

    dim: int

    name = ""

    @property
    def inputs(self) -> int:
        return self.dim + 1

    def sample(self, n: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
        """n uniform points (n, dim + 1) of the domain."""
        return torch.rand(n, self.inputs, generator=generator, dtype=dtype)

    def ansatz(self, x: torch.Tensor, net: torch.Tensor) -> torch.Tensor:
        """u = base(x) + gate(x) * net: x (..., B, dim + 1), net (..., B) -> (..., B)."""
        return self.base(x) + self.gate(x) * net

    def base(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def residual(self, d: Derivatives) -> torch.Tensor:
        """The PDE residual (..., B) from derivatives of u over X = (x, t)."""
        raise NotImplementedError

    def laplacian(self, d: Derivatives) -> torch.Tensor:
        return d.second[..., :self.dim].sum(-1)


@dataclass(frozen=True)
class HJB(Problem):
    """u_t + Laplacian_x u - 0.05 |grad_x u|^2 + c = 0, u(x, 1) = sum_i x_i; exact u = sum_i x_i + 1 - t
    (Zhao et al., arXiv:2308.09858: d = 20, c = 2). Other d keep that solution with c = 1 + 0.05 d. Ansatz
    u = sum_i x_i + (1 - t) N(x, t): N = 1 is exact, N = 0 the trivial baseline (5.46 % relative L2
    error for d = 20)."""

    name = "hjb"

    def base(self, x):
        return x[..., :self.dim].sum(-1)

    def gate(self, x):
        return 1 - x[..., self.dim]

    def exact(self, x):
        return x[..., :self.dim].sum(-1) + 1 - x[..., self.dim]

    def residual(self, d):
        grad_x = d.grad[..., :self.dim]
        return d.grad[..., self.dim] + self.laplacian(d) - 0.05 * (grad_x ** 2).sum(-1) + 1 + 0.05 * self.dim


@dataclass(frozen=True)
class Heat(Problem):
    """u_t = Laplacian_x u / dim with u(x, 0) = mean_i sin(pi x_i / 2); exact
    u = exp(-pi^2 t / (4 dim)) mean_i sin(pi x_i / 2). Ansatz u = u(x, 0) + t N(x, t)."""

    name = "heat"

    @property
    def rate(self) -> float:
        return math.pi ** 2 / (4 * self.dim)

    def _initial(self, x):
        return torch.sin(math.pi / 2 * x[..., :self.dim]).mean(-1)

    def base(self, x):
        return self._initial(x)

    def gate(self, x):
        return x[..., self.dim]

    def exact(self, x):
        return torch.exp(-self.rate * x[..., self.dim]) * self._initial(x)

    def residual(self, d):
        return d.grad[..., self.dim] - self.laplacian(d) / self.dim


def build_problem(name: str, dim: int) -> Problem:
    if name not in PROBLEMS:
        raise ValueError(f"pde.problem: {name!r} is not allowed; use one of {', '.join(PROBLEMS)}")
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"pde.dim: expected an integer >= 1, got {dim!r}")
    return {"hjb": HJB, "heat": Heat}[name](dim)
