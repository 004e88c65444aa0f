"""PDE losses for the ZO estimators and the FO baseline: the mean squared residual of the ansatz at B
collocation points, with the derivatives of u from a stencil (one batched forward over points x
offsets) or from autodiff (the reference)."""
from __future__ import annotations

import torch

from hwsim.model import Activation, Linear, Network
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


class StencilObjective(BatchObjective):
    """The losses at every stencil point X_b + offset_k (B K rows, point-major).

    On a backend whose linear layers are exactly linear in their input (``capabilities.multilinear``: the
    ideal one) a first linear layer followed by sin is split: its pre-activation is a_b + c_k with
    a_b = W X_b + bias and c_k = W offset_k, and sin(a + c) = sin a cos c + cos a sin c. So the first
    layer runs on B + K + 1 rows instead of B K and 2 (B + K) H sines replace B K H; the sines are counted
    as ``activation_sin``. Other backends evaluate every point as it is (what the chip computes)."""

    def __init__(self, network: Network, backend, loss: StencilLoss, x: torch.Tensor, chunk_elements: int):
        super().__init__(network, backend, loss.points.to(backend.device, backend.data_dtype),
                         chunk_elements=chunk_elements, loss=loss)
        layers = network.layers
        split = (backend.capabilities.multilinear and len(layers) > 2 and isinstance(layers[0], Linear)
                 and isinstance(layers[1], Activation) and layers[1].kind == "sin")
        offsets = loss.stencil.offsets.to(torch.float64)
        rows = torch.cat([x.to(torch.float64), offsets, offsets.new_zeros(1, offsets.shape[1])])
        self.split_rows = rows.to(backend.device, backend.data_dtype) if split else None
        self.sizes = (x.shape[0], offsets.shape[0])

    def _forward(self, tensors: dict, queries: int, batched: set) -> torch.Tensor:
        if self.split_rows is None:
            return super()._forward(tensors, queries, batched)
        b, k = self.sizes
        pre = self.network.forward(self.backend, tensors, self.split_rows, queries, batched, stop=1)
        a, c = pre[..., :b, :], pre[..., b:b + k, :] - pre[..., b + k:, :]            # (Q?, B | K, H)
        h = torch.sin(a)[..., :, None, :] * torch.cos(c)[..., None, :, :]            # (Q?, B, K, H)
        h.addcmul_(torch.cos(a)[..., :, None, :], torch.sin(c)[..., None, :, :])
        self.backend.count("activation_sin", 2 * (a.numel() + c.numel()))
        h = h.reshape(*h.shape[:-3], b * k, h.shape[-1])
        return self.loss(self.network.forward(self.backend, tensors, h, queries, batched, start=2))


def stencil_objective(network: Network, backend, problem: Problem, stencil: Stencil, x: torch.Tensor,
                      chunk_elements: int) -> BatchObjective:
    """The objective the ZO estimators query: every stencil point of x (B, D) in one batch."""
    return StencilObjective(network, backend, StencilLoss(problem, stencil, x), x, chunk_elements)
