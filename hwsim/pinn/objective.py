"""PDE losses for the ZO estimators and the FO baseline: the mean squared residual of the ansatz at B
collocation points, with the derivatives of u from a stencil (one batched forward over points x
offsets) or from autodiff (the reference)."""
from __future__ import annotations

import torch

from hwsim.model import Network
from hwsim.objective import BatchObjective
from hwsim.pinn.derivatives import Stencil, autodiff
from hwsim.pinn.problems import Problem


class StencilLoss:
    """outputs of N at every stencil point (Q?, B * K, 1) -> mean squared residual (Q?,).

    u = base + gate * N is formed in float64 on the host (the base, e.g. sum_i x_i, is exact there),
    then the stencil turns the K values per point into derivatives."""

    def __init__(self, problem: Problem, stencil: Stencil, x: torch.Tensor):
        self.problem, self.stencil = problem, stencil
        self.points = stencil.points(x.to(torch.float64))                    # (B * K, D)
        self.base, self.gate = problem.base(self.points), problem.gate(self.points)

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        u = self.base + self.gate * out[..., 0].to(torch.float64)
        return self.problem.residual(self.stencil.combine(u)).pow(2).mean(-1)


class AutodiffObjective(BatchObjective):
    """Losses with autodiff derivatives over the inputs: every query gets its own copy of the points
    (Q, B, D) so its input gradient stays its own. Reference only (differentiable backends)."""

    linear_shortcut = False          # the loss needs the network as a function of its input

    def __init__(self, network: Network, backend, problem: Problem, x: torch.Tensor, **kw):
        super().__init__(network, backend, x, loss=lambda out: out, **kw)
        self.problem = problem

    def _forward(self, tensors: dict, queries: int, batched: set) -> torch.Tensor:
        x = self.x.detach().expand(queries, *self.x.shape).clone()
        return autodiff_loss(self.problem, lambda p: self.network.forward(self.backend, tensors, p, queries, batched), x)


def autodiff_loss(problem: Problem, net, x: torch.Tensor) -> torch.Tensor:
    """Mean squared residual (...,) at points x (..., B, D) with u = ansatz(x, net(x)) differentiated
    by autograd (the graph is kept, so FO training can back-propagate through it)."""
    d = autodiff(lambda p: problem.ansatz(p.to(torch.float64), net(p)[..., 0].to(torch.float64)), x)
    return problem.residual(d).pow(2).mean(-1)


def stencil_objective(network: Network, backend, problem: Problem, stencil: Stencil, x: torch.Tensor,
                      chunk_elements: int) -> BatchObjective:
    """The objective the ZO estimators query: every stencil point of x (B, D) in one batch."""
    loss = StencilLoss(problem, stencil, x)
    return BatchObjective(network, backend, loss.points.to(backend.device, backend.data_dtype),
                          chunk_elements=chunk_elements, loss=loss)
