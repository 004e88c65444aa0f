"""Tensor-train matrix (TTM) format: shapes, initialisation and exact evaluation.

A TT matrix W in R^{M x P} with M = m_1*...*m_K (outputs) and P = n_1*...*n_K (inputs) is stored as K
cores G_k of shape (r_{k-1}, n_k, m_k, r_k), r_0 = r_K = 1, and

    W[(i_1..i_K), (j_1..j_K)] = G_1[:, j_1, i_1, :] G_2[:, j_2, i_2, :] ... G_K[:, j_K, i_K, :]

with multi-indices flattened row-major. Every function here accepts cores with extra *leading* axes
(for example a query axis Q) and broadcasts them, so a batch of parameter points is one call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

# Cost model for ``method="auto"``: on a CPU one flop spent in an einsum chain over small TT cores costs
# roughly this many flops of a large GEMM (benchmarks/bench_tt_linear.py measures it; docs/tt.md).
DIRECT_FLOP_PENALTY = 16.0


def factorize(n: int, k: int) -> tuple[int, ...]:
    """Split ``n`` into ``k`` integer factors as balanced as possible (product exactly ``n``).

    Prime factors are dealt largest first onto the currently smallest factor; the result is sorted so
    that the larger factors sit in the middle, e.g. ``factorize(784, 4) == (4, 7, 7, 4)``.
    """
    if n < 1 or k < 1:
        raise ValueError(f"factorize needs n >= 1 and k >= 1, got n={n}, k={k}")
    primes, m, p = [], n, 2
    while p * p <= m:
        while m % p == 0:
            primes.append(p)
            m //= p
        p += 1
    if m > 1:
        primes.append(m)
    bins = [1] * k
    for q in sorted(primes, reverse=True):
        bins[bins.index(min(bins))] *= q
    bins.sort()
    # small ones outside, large ones in the middle: (a, c, d, b) from sorted (a, b, c, d)
    return tuple(bins[0::2] + bins[1::2][::-1])


@dataclass(frozen=True)
class TTShape:
    """Shape of a TT matrix: input factors n_k, output factors m_k and ranks (r_0, ..., r_K)."""

    in_factors: tuple[int, ...]
    out_factors: tuple[int, ...]
    ranks: tuple[int, ...]

    def __post_init__(self):
        k = len(self.in_factors)
        if k < 1 or len(self.out_factors) != k:
            raise ValueError(f"in_factors {self.in_factors} and out_factors {self.out_factors} must have the "
                             f"same non-zero length")
        if len(self.ranks) != k + 1 or self.ranks[0] != 1 or self.ranks[-1] != 1:
            raise ValueError(f"ranks must have length {k + 1} and start and end with 1, got {self.ranks}")
        if min(self.in_factors + self.out_factors + self.ranks) < 1:
            raise ValueError("TT factors and ranks must be positive integers")

    @classmethod
    def build(cls, in_features: int, out_features: int, rank: int | Sequence[int],
              in_factors: Sequence[int] | None = None, out_factors: Sequence[int] | None = None,
              num_cores: int | None = None) -> "TTShape":
        """Shape from sizes; factors are taken as given or found by :func:`factorize`.

        ``rank`` is one internal rank for all bonds or the K-1 internal ranks.
        """
        k = len(in_factors or out_factors or ()) or num_cores or 4
        nf = tuple(in_factors) if in_factors else factorize(in_features, k)
        mf = tuple(out_factors) if out_factors else factorize(out_features, k)
        if math.prod(nf) != in_features:
            raise ValueError(f"in_factors {nf} multiply to {math.prod(nf)}, not in_features={in_features}")
        if math.prod(mf) != out_features:
            raise ValueError(f"out_factors {mf} multiply to {math.prod(mf)}, not out_features={out_features}")
        inner = [rank] * (k - 1) if isinstance(rank, int) else list(rank)
        if len(inner) != k - 1:
            raise ValueError(f"rank needs {k - 1} internal ranks for {k} cores, got {list(rank)}")
        return cls(nf, mf, (1, *inner, 1))

    @property
    def num_cores(self) -> int:
        return len(self.in_factors)

    @property
    def in_features(self) -> int:
        return math.prod(self.in_factors)

    @property
    def out_features(self) -> int:
        return math.prod(self.out_factors)

    @property
    def core_shapes(self) -> list[tuple[int, int, int, int]]:
        """Shapes (r_{k-1}, n_k, m_k, r_k) of the cores."""
        r, n, m = self.ranks, self.in_factors, self.out_factors
        return [(r[k], n[k], m[k], r[k + 1]) for k in range(self.num_cores)]

    @property
    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.core_shapes)

    @property
    def dense_params(self) -> int:
        return self.in_features * self.out_features

    def init_std(self, weight_std: float) -> float:
        """Core std s such that every entry of W has std ``weight_std`` (cores i.i.d. N(0, s^2)).

        An entry of W is a sum of prod(internal ranks) products of K independent core entries, so
        Var(W) = prod(r) * s^(2K) and s = (weight_std^2 / prod(r))^(1 / 2K).
        """
        paths = math.prod(self.ranks[1:-1])
        return (weight_std ** 2 / paths) ** (1.0 / (2 * self.num_cores))

    def dense_flops(self, rows: int, queries: int = 1) -> int:
        """Multiply-adds to rebuild W (per query) and run one GEMM over ``rows`` input rows."""
        build, cols, out = 0, 1, 1
        for (r0, n, m, r1) in self.core_shapes:
            cols, out = cols * n, out * m
            build += cols * out * r0 * r1 if r0 > 1 else 0
        return queries * (build + rows * self.in_features * self.out_features)

    def direct_flops(self, rows: int, queries: int = 1) -> int:
        """Multiply-adds of the core-by-core contraction of ``rows`` input rows."""
        total, done_out, rest_in = 0, 1, self.in_features
        for (r0, n, m, r1) in self.core_shapes:
            rest_in //= n
            total += done_out * r0 * n * m * r1 * rest_in
            done_out *= m
        return queries * rows * total


@dataclass(frozen=True)
class Step:
    """Core step k of the core-by-core contraction of one input row (docs/rtl.md, "Schedule"): every value
    it produces is a sum of ``terms`` = r_k n_k products; it produces ``done`` x ``mr`` x ``rest`` values
    (outputs finished so far x m_k r_k+1 x inputs not yet contracted), applying the core's (m_k r_k+1) x
    (r_k n_k) matrix to ``done`` x ``rest`` sub-vectors."""

    terms: int
    mr: int
    rest: int
    done: int

    @property
    def values(self) -> int:
        return self.done * self.mr * self.rest

    @property
    def subvectors(self) -> int:
        return self.done * self.rest


def tt_steps(core_shapes: Sequence[tuple[int, int, int, int]]) -> list[Step]:
    """The steps of a TT layer with cores (r, n, m, r'), core 0 first."""
    out, done, rest = [], 1, math.prod(s[1] for s in core_shapes)
    for r, n, m, s in core_shapes:
        rest //= n
        out.append(Step(r * n, m * s, rest, done))
        done *= m
    return out


def step_outputs(core_shapes: Sequence[tuple[int, int, int, int]], rows: int) -> list[int]:
    """Values every core step of the core-by-core contraction produces for ``rows`` input rows (each a sum
    of r_k * n_k products); the last step's are the layer outputs."""
    return [rows * step.values for step in tt_steps(core_shapes)]


def to_dense(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Dense matrix of a TT matrix.

    cores: K tensors of shape (..., r_{k-1}, n_k, m_k, r_k) with broadcastable leading axes.
    Returns W of shape (..., M, P).

    The cores are multiplied out in two halves (small), which one GEMM over the middle rank joins:
    W[(u, v), (j, k)] = sum_r L[j, u, r] R[r, k, v].
    """
    if len(cores) == 1:
        return cores[0][..., 0, :, :, 0].transpose(-1, -2)
    half = (len(cores) + 1) // 2
    left = chain(cores[:half])[..., 0, :, :, :]         # (..., N_L, M_L, r)
    right = chain(cores[half:])[..., 0]                 # (..., r, N_R, M_R)
    *lead_l, n_l, m_l, r = left.shape
    *lead_r, _, n_r, m_r = right.shape
    w = torch.matmul(left.reshape(*lead_l, n_l * m_l, r), right.reshape(*lead_r, r, n_r * m_r))
    w = w.reshape(*w.shape[:-2], n_l, m_l, n_r, m_r)    # (..., j, u, k, v)
    return w.permute(*range(w.dim() - 4), -3, -1, -4, -2).reshape(*w.shape[:-4], m_l * m_r, n_l * n_r)


def chain(cores: Sequence[torch.Tensor], like: torch.Tensor | None = None) -> torch.Tensor:
    """Product of consecutive cores as one tensor (..., r_first, N, M, r_last).

    cores: tensors (..., r, n, m, r') with broadcastable leading axes. An empty list gives the neutral
    element ones(1, 1, 1, 1), on like's device and in its dtype when given.
    """
    if not cores:
        return torch.ones(1, 1, 1, 1) if like is None else like.new_ones(1, 1, 1, 1)
    t = cores[0]
    for g in cores[1:]:
        t = torch.einsum("...aiur,...rjvs->...aijuvs", t, g)
        *lead, a, i, j, u, v, s = t.shape
        t = t.reshape(*lead, a, i * j, u * v, s)
    return t


def core_environment(cores: Sequence[torch.Tensor], k: int, x: torch.Tensor) -> torch.Tensor:
    """Everything of y = W x except core k: the exact derivative of y with respect to core k.

    cores: K tensors (r, n, m, r') without leading axes; x: (B, P).
    Returns E (B, M_<k, r_{k-1}, n_k, r_k, M_>k) with
    y[b, (u, i, v)] = sum_{a, j, c} E[b, u, a, j, c, v] * G_k[a, j, i, c].
    """
    left = chain(cores[:k], x).to(x)[0]                    # (N<, M<, r_{k-1})
    right = chain(cores[k + 1:], x).to(x)[..., 0]          # (r_k, N>, M>)
    n = cores[k].shape[1]
    xs = x.reshape(x.shape[0], left.shape[0], n, right.shape[1])
    t = torch.einsum("bpnq,pua->buanq", xs, left)
    return torch.einsum("buanq,cqv->buancv", t, right)


def contract(cores: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """y = W x for every row of x, contracting core by core (W is never formed).

    cores: K tensors (..., r_{k-1}, n_k, m_k, r_k); x: (..., B, P) with leading axes broadcastable
    against the cores'. Returns (..., B, M).
    """
    *lead, rows, p = x.shape
    n_rest = p
    t = x.reshape(*lead, rows, 1, 1, p)               # (..., B, Mdone, r, Nrest)
    for g in cores:
        n = g.shape[-3]
        n_rest //= n
        t = t.reshape(*t.shape[:-1], n, n_rest)       # (..., B, Md, r, n, Nr)
        t = torch.einsum("...bdrnz,...rnms->...bdmsz", t, g)
        *lead_t, b, d, m, s, z = t.shape
        t = t.reshape(*lead_t, b, d * m, s, z)
    return t[..., 0, 0]


def tt_linear(cores: Sequence[torch.Tensor], x: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """Evaluate y = W x exactly; ``method`` is "dense" (rebuild W, one GEMM), "direct" or "auto".

    cores: K tensors (..., r, n, m, r'); x: (..., B, P). Returns (..., B, M). "auto" picks the cheaper
    by :class:`TTShape` flop counts, weighting direct flops by ``DIRECT_FLOP_PENALTY``.
    """
    if method == "auto":
        queries = math.prod(cores[0].shape[:-4])
        method = choose_method(shape_of(cores), x.shape[-2], queries)
    if method == "dense":
        return torch.matmul(x, to_dense(cores).transpose(-1, -2))
    if method == "direct":
        return contract(cores, x)
    raise ValueError(f"tt method must be 'auto', 'dense' or 'direct', got {method!r}")


def choose_method(shape: TTShape, rows: int, queries: int = 1) -> str:
    """"dense" or "direct", whichever the cost model says is faster for ``rows`` rows per query."""
    direct = DIRECT_FLOP_PENALTY * shape.direct_flops(rows, queries)
    return "dense" if shape.dense_flops(rows, queries) <= direct else "direct"


def shape_of(cores: Sequence[torch.Tensor]) -> TTShape:
    """The :class:`TTShape` of a list of cores (leading axes ignored)."""
    shapes = [tuple(g.shape[-4:]) for g in cores]
    return TTShape(tuple(s[1] for s in shapes), tuple(s[2] for s in shapes),
                   (shapes[0][0], *(s[3] for s in shapes)))
