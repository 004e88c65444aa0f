"""PDE losses for the ZO estimators and the FO baseline: the mean squared residual of the ansatz at B
collocation points, with the derivatives of u from a stencil (one batched forward over points x
offsets) or from autodiff (the reference)."""
from __future__ import annotations

import torch

from hwsim.model import Activation, Linear, Network
from hwsim.objective import BatchObjective
from hwsim.pinn.derivatives import Stencil, autodiff, finite_differences, stein_grid, stein_mc
from hwsim.pinn.problems import Problem


# A block of points' activations (P K H elements) takes 1/BLOCK_SHARE of ``chunk_elements``: several such
# tensors are live at once (h, the next layer's output, its sine, ...) and small blocks stay in cache.
# On the 2-core CPU blocks of a few points run the losses ~2x faster than the whole batch at once
# (benchmarks/bench_pinn_loss.py: "blocks" in benchmarks/results/pinn_loss.json, docs/results.md).
BLOCK_SHARE = 8


class StencilLoss:
    """outputs of N at every stencil point (Q?, B * K, 1) -> mean squared residual (Q?,).

    u = base + gate * N is formed in float64 (the base, e.g. sum_i x_i, is exact there) on the device of
    the outputs (base and gate move there once), then the stencil turns the K values per point into
    derivatives."""

    def __init__(self, problem: Problem, stencil: Stencil, x: torch.Tensor):
        self.problem, self.stencil = problem, stencil
        self.points = stencil.points(x.to(torch.float64))                    # (B * K, D)
        self.base, self.gate = problem.base(self.points), problem.gate(self.points)

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        if self.base.device != out.device:
            self.base, self.gate = (t.to(out.device, non_blocking=True) for t in (self.base, self.gate))
        u = self.base + self.gate * out[..., 0].to(torch.float64)
        return self.problem.residual(self.stencil.combine(u)).pow(2).mean(-1)


class AutodiffObjective(BatchObjective):
    """Losses with autodiff derivatives over the inputs: every query gets its own copy of the points
    (Q, B, D) so its input gradient stays its own. Reference only (differentiable backends)."""

    linear_shortcut = False          # the loss needs the network as a function of its input

    def __init__(self, network: Network, backend, problem: Problem, x: torch.Tensor, **kw):
        super().__init__(network, backend, x, loss=lambda out: out, **kw)
        self.problem = problem

    def _forward(self, tensors: dict, queries: int | None, batched: set) -> torch.Tensor:
        x = self.x.detach() if queries is None else self.x.detach().expand(queries, *self.x.shape).clone()
        return autodiff_loss(self.problem, lambda p: self.network.forward(self.backend, tensors, p, queries, batched), x)


def autodiff_loss(problem: Problem, net, x: torch.Tensor) -> torch.Tensor:
    """Mean squared residual (...,) at points x (..., B, D) with u = ansatz(x, net(x)) differentiated
    by autograd (the graph is kept, so FO training can back-propagate through it)."""
    d = autodiff(lambda p: problem.ansatz(p.to(torch.float64), net(p)[..., 0].to(torch.float64)), x)
    return problem.residual(d).pow(2).mean(-1)


class StencilObjective(BatchObjective):
    """The losses at every stencil point X_b + offset_k (B K rows, point-major).

    On a backend whose linear layers are exactly linear in their input (``capabilities.multilinear``: a float
    one) a first linear layer followed by sin is split: its pre-activation is a_b + c_k with
    a_b = W X_b + bias and c_k = W offset_k, and sin(a + c) = sin a cos c + cos a sin c. So the first
    layer runs on B + K + 1 rows instead of B K and 2 (B + K) H sines replace B K H; the sines are counted
    as ``activation_sin``. Other backends evaluate every point as it is (what the chip computes)."""

    def __init__(self, network: Network, backend, loss: StencilLoss, x: torch.Tensor, chunk_elements: int):
        super().__init__(network, backend, loss.points.to(backend.device, backend.data_dtype, non_blocking=True),
                         chunk_elements=chunk_elements, loss=loss)
        layers = network.layers
        split = (backend.capabilities.multilinear and len(layers) > 2 and isinstance(layers[0], Linear)
                 and isinstance(layers[1], Activation) and layers[1].kind == "sin")
        offsets = loss.stencil.offsets.to(torch.float64)
        rows = torch.cat([x.to(torch.float64), offsets, offsets.new_zeros(1, offsets.shape[1])])
        self.split_rows = rows.to(backend.device, backend.data_dtype, non_blocking=True) if split else None
        self.sizes = (x.shape[0], offsets.shape[0])
        self.block = max(1, chunk_elements // (BLOCK_SHARE * offsets.shape[0] * self.widest))  # points per block

    def _forward(self, tensors: dict, queries: int | None, batched: set) -> torch.Tensor:
        """Losses (Q?,): the network runs on blocks of ``self.block`` points (all K offsets each), one
        block's activations within chunk_elements / BLOCK_SHARE; the loss sees all outputs at once."""
        b, k = self.sizes
        trig = None
        if self.split_rows is not None:
            pre = self.network.forward(self.backend, tensors, self.split_rows, queries, batched, stop=1)
            a, c = pre[..., :b, :], pre[..., b:b + k, :] - pre[..., b + k:, :]        # (Q?, B | K, H)
            trig = (torch.sin(a), torch.cos(a), torch.sin(c), torch.cos(c))
            self.backend.count("activation_sin", 2 * (a.numel() + c.numel()))
        outs = [self._block_outputs(tensors, queries, batched, trig, lo, min(lo + self.block, b))
                for lo in range(0, b, self.block)]
        return self.loss(torch.cat(outs, dim=-2))

    def _block_outputs(self, tensors: dict, queries: int | None, batched: set, trig: tuple | None,
                       lo: int, hi: int) -> torch.Tensor:
        """Network outputs (Q?, (hi - lo) K, out) at the stencil points of points lo..hi-1. ``trig``:
        sin a, cos a (Q?, B, H), sin c, cos c (Q?, K, H) of the split first layer; None: every point."""
        k = self.sizes[1]
        if trig is None:
            return self.network.forward(self.backend, tensors, self.x[lo * k:hi * k], queries, batched)
        sin_a, cos_a, sin_c, cos_c = trig
        h = sin_a[..., lo:hi, None, :] * cos_c[..., None, :, :]                     # (Q?, P, K, H)
        h.addcmul_(cos_a[..., lo:hi, None, :], sin_c[..., None, :, :])
        h = h.reshape(*h.shape[:-3], (hi - lo) * k, h.shape[-1])
        return self.network.forward(self.backend, tensors, h, queries, batched, start=2)


def stencil_objective(network: Network, backend, problem: Problem, stencil: Stencil, x: torch.Tensor,
                      chunk_elements: int) -> BatchObjective:
    """The objective the ZO estimators query: every stencil point of x (B, D) in one batch."""
    return StencilObjective(network, backend, StencilLoss(problem, stencil, x), x, chunk_elements)


class StencilMethod:
    """Derivatives from a stencil (``stein_grid``, ``stein_mc``, ``fd`` of ``pde.derivatives``): the model at
    X + offset_k, forward only. stein_mc draws its samples when built and again at every :meth:`redraw`."""

    def __init__(self, cfg, dim: int, generator: torch.Generator):
        self.cfg, self.dim = cfg, dim
        self.stencil = self._make(generator)

    @property
    def per_point(self) -> int:
        """Network evaluations per collocation point."""
        return self.stencil.size

    def _make(self, generator: torch.Generator) -> Stencil:
        c = self.cfg
        if c.method == "stein_grid":
            return stein_grid(self.dim, c.sigma, c.level)
        if c.method == "stein_mc":
            return stein_mc(self.dim, c.samples, generator, c.sigma)
        return finite_differences(self.dim, c.h)

    def redraw(self, generator: torch.Generator) -> None:
        """A new step: stein_mc draws fresh samples; deterministic stencils stay."""
        if self.cfg.method == "stein_mc":
            self.stencil = self._make(generator)

    def objective(self, network: Network, backend, problem: Problem, x: torch.Tensor,
                  chunk_elements: int) -> BatchObjective:
        return stencil_objective(network, backend, problem, self.stencil, x, chunk_elements)


class AutodiffMethod:
    """Exact derivatives by autograd through the model (the reference; differentiable backends only)."""

    per_point = 1

    def redraw(self, generator: torch.Generator) -> None:
        """Nothing random."""

    def objective(self, network: Network, backend, problem: Problem, x: torch.Tensor,
                  chunk_elements: int) -> BatchObjective:
        return AutodiffObjective(network, backend, problem, x.to(backend.device, backend.data_dtype, non_blocking=True),
                                 chunk_elements=chunk_elements)


def derivative_method(cfg, dim: int, generator: torch.Generator) -> StencilMethod | AutodiffMethod:
    """The method of ``pde.derivatives`` for a model of ``dim`` inputs, chosen once for a run."""
    return AutodiffMethod() if cfg.method == "autodiff" else StencilMethod(cfg, dim, generator)
