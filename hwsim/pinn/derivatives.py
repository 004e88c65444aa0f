"""Derivatives of a model evaluated only forward: every estimator is a *stencil*.

A stencil is K input offsets and a (K, 1 + 2 D) weight matrix: evaluate the model at X + offset_k for
all k (points x offsets in one batch), then one matrix product turns the K values of each point into
(value, gradient (D), diagonal second derivatives (D)). Estimators:

- ``stein_grid``: Gaussian smoothing u_s(X) = E[u(X + s z)], z ~ N(0, I), with the expectations of the
  Stein identities (Zhao et al., arXiv:2308.09858)
      grad u_s(X)      = E[z (u(X + s z) - u(X - s z))] / (2 s)
      d2u_s/dX_i^2    = E[(z_i^2 - 1)(u(X + s z) + u(X - s z) - 2 u(X))] / (2 s^2)
  computed on a Gauss-Hermite Smolyak grid. The grid is symmetric, so X - s z is already a node: K = the
  grid's size (925 for D = 21, level 3), not 2 K - 1; the symmetric sums fold into weights on the
  centred values u(X + s z_k) - u(X).
- ``stein_mc``: the same expectations by Monte Carlo over M antithetic pairs +-z_m (K = 2 M + 1), fresh
  samples per call.
- ``fd``: central finite differences with step h (K = 2 D + 1); value = u(X).
``autodiff`` (the reference) differentiates the model itself (a differentiable backend only).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from hwsim.pinn.sparse_grid import gauss_hermite_smolyak, smolyak_node_bound

METHODS = ("stein_grid", "stein_mc", "fd", "autodiff")


@dataclass(frozen=True)
class Derivatives:
    """value (..., B), grad (..., B, D), second (..., B, D): the diagonal of the Hessian."""

    value: torch.Tensor
    grad: torch.Tensor
    second: torch.Tensor


@dataclass(frozen=True)
class Stencil:
    """offsets (K, D) and weights (K, 1 + 2 D): [value | gradient | second derivatives] = values @ weights,
    where values are the model at X + offsets (offset 0 first: the centre, subtracted from the rest)."""

    offsets: torch.Tensor
    weights: torch.Tensor

    @property
    def size(self) -> int:
        return self.offsets.shape[0]

    def points(self, x: torch.Tensor) -> torch.Tensor:
        """Every shifted point: x (B, D) -> (B * K, D), point-major."""
        return (x[:, None, :] + self.offsets.to(x)).reshape(-1, x.shape[-1])

    def combine(self, values: torch.Tensor) -> Derivatives:
        """values (..., B * K) of the model at :meth:`points` -> Derivatives (float64 sums)."""
        v = values.reshape(*values.shape[:-1], -1, self.size).to(torch.float64)
        centred = torch.cat([v[..., :1], v[..., 1:] - v[..., :1]], dim=-1)
        out = centred @ self.weights.to(v.device, torch.float64, non_blocking=True)
        d = self.offsets.shape[1]
        return Derivatives(out[..., 0], out[..., 1:1 + d], out[..., 1 + d:])


def stencil_nodes(method: str, dim: int, level: int, samples: int) -> int:
    """Nodes K of a method's stencil around each point, known without building it (for ``stein_grid`` an
    upper bound: the sparse grid's nodes before duplicates merge)."""
    return {"stein_grid": lambda: smolyak_node_bound(dim, level), "stein_mc": lambda: 2 * samples + 1,
            "fd": lambda: 2 * dim + 1, "autodiff": lambda: 1}[method]()


def _stein_weights(z: torch.Tensor, w: torch.Tensor, sigma: float) -> torch.Tensor:
    """Weights for nodes z (K, D) of probability weights w (K,), node 0 the origin: the value row sums
    w f (f_0 carries the total weight), the derivative rows act on the centred values."""
    value = w.clone()
    value[0] = w.sum()                     # [f_0, f_k - f_0] . value = sum_k w_k f_k
    grad = w[:, None] * z / sigma
    second = w[:, None] * (z ** 2 - 1) / sigma ** 2
    grad[0], second[0] = 0.0, 0.0
    return torch.cat([value[:, None], grad, second], dim=1)


def stein_grid(dim: int, sigma: float = 0.1, level: int = 3) -> Stencil:
    """Stein derivatives of the Gaussian-smoothed model on the Smolyak grid of ``level``.

    On a symmetric rule, sum_k w_k z_k (f_k - f_-k) / (2 s) = sum_k w_k z_k f_k / s and likewise for the
    second derivatives, and sum_k w_k z_k = sum_k w_k (z_k^2 - 1) = 0 (exact for degree <= 2), so the
    weights apply to the centred values f_k - f_0 (better conditioned: f_0 cancels exactly)."""
    nodes, weights = gauss_hermite_smolyak(dim, level)
    origin = int((abs(nodes).sum(1) == 0).nonzero()[0][0])
    order = [origin] + [k for k in range(len(weights)) if k != origin]
    z = torch.from_numpy(nodes[order])
    return Stencil(z * sigma, _stein_weights(z, torch.from_numpy(weights[order]), sigma))


def stein_mc(dim: int, samples: int, generator: torch.Generator, sigma: float = 0.1) -> Stencil:
    """Stein derivatives by Monte Carlo: ``samples`` pairs +-z (K = 2 samples + 1), each pair weight 1/2M."""
    z = torch.randn(samples, dim, generator=generator, dtype=torch.float64)
    z = torch.cat([torch.zeros(1, dim, dtype=torch.float64), z, -z])
    w = torch.full((2 * samples + 1,), 0.5 / samples, dtype=torch.float64)
    w[0] = 0.0
    return Stencil(z * sigma, _stein_weights(z, w, sigma))


def finite_differences(dim: int, h: float = 0.1) -> Stencil:
    """Central differences: f_i' = (f(+h e_i) - f(-h e_i)) / 2h, f_i'' = (f(+h e_i) + f(-h e_i) - 2 f) / h^2."""
    eye = torch.eye(dim, dtype=torch.float64)
    offsets = torch.cat([torch.zeros(1, dim, dtype=torch.float64), h * eye, -h * eye])
    weights = torch.zeros(2 * dim + 1, 1 + 2 * dim, dtype=torch.float64)
    weights[0, 0] = 1.0
    weights[1:1 + dim, 1:1 + dim] = eye / (2 * h)
    weights[1 + dim:, 1:1 + dim] = -eye / (2 * h)
    weights[1:1 + dim, 1 + dim:] = eye / h ** 2          # centred: f_+ - f_0 + f_- - f_0
    weights[1 + dim:, 1 + dim:] = eye / h ** 2
    return Stencil(offsets, weights)


def autodiff(fn, x: torch.Tensor) -> Derivatives:
    """Exact derivatives of fn: (..., B, D) -> (..., B) by autograd, rows independent (differentiable fn
    only; the reference). The graph is kept (create_graph) so a loss built from them can be
    back-propagated."""
    x = x.detach().requires_grad_(True)
    value = fn(x)
    grad, = torch.autograd.grad(value.sum(), x, create_graph=True, materialize_grads=True)
    if not grad.requires_grad:                      # fn is affine in x
        return Derivatives(value, grad, torch.zeros_like(grad))
    second = torch.stack([torch.autograd.grad(grad[..., i].sum(), x, create_graph=True, materialize_grads=True)[0][..., i]
                          for i in range(x.shape[-1])], dim=-1)
    return Derivatives(value, grad, second)
