"""Smolyak sparse grids for expectations over the standard normal N(0, I_dim).

The one-dimensional rule of level i is the i-point Gauss-Hermite rule (probabilists' weight
exp(-z^2 / 2) / sqrt(2 pi)); the Smolyak combination of level L in ``dim`` dimensions is

    A(L, dim) = sum over multi-indices i >= 1 with dim <= |i| <= dim + L - 1 of
                (-1)^(dim + L - 1 - |i|) * C(dim - 1, dim + L - 1 - |i|) * (U^i_1 x ... x U^i_dim),

(Smolyak 1963; Gerstner & Griebel 1998), which integrates polynomials of total degree <= 2L - 1
exactly. Duplicate nodes of the tensor-product terms are merged (their weights added). Level 3 in 21
dimensions gives the 925-node rule of Zhao et al., arXiv:2308.09858; level 2 has 2 dim + 1 nodes.
"""
from __future__ import annotations

from functools import lru_cache
from itertools import combinations, product
from math import comb

import numpy as np


@lru_cache(maxsize=None)
def gauss_hermite(points: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``points``-point Gauss-Hermite rule for N(0, 1): (nodes, weights summing to 1)."""
    z, w = np.polynomial.hermite_e.hermegauss(points)
    z[np.abs(z) < 1e-14] = 0.0                         # the odd rules' middle node exactly 0
    return z, w / w.sum()


def _excesses(dim: int, total: int):
    """Every multi-index i - 1 >= 0 of length ``dim`` with sum ``total``, as {axis: excess} (sparse)."""
    def partitions(rest: int, largest: int):        # non-increasing positive parts summing to rest
        if rest == 0:
            yield ()
            return
        for part in range(min(rest, largest), 0, -1):
            for tail in partitions(rest - part, part):
                yield (part,) + tail
    for parts in partitions(total, total):
        for axes in combinations(range(dim), len(parts)):
            for order in set(_permutations(parts)):
                yield dict(zip(axes, order))


def _permutations(parts: tuple[int, ...]):
    if len(parts) <= 1:
        yield parts
        return
    for k in range(len(parts)):
        for rest in _permutations(parts[:k] + parts[k + 1:]):
            yield (parts[k],) + rest


def smolyak_node_bound(dim: int, level: int) -> int:
    """Nodes of the Smolyak rule's tensor-product terms before merging (>= the rule's nodes), in closed
    form: the terms of total excess t hold C(t + 2 dim - 1, 2 dim - 1) nodes (the coefficient of x^t in
    (sum_e (e + 1) x^e)^dim = (1 - x)^(-2 dim)). What building the rule costs, known before building it."""
    return sum(comb(t + 2 * dim - 1, 2 * dim - 1) for t in range(max(0, level - dim), level))


def gauss_hermite_smolyak(dim: int, level: int) -> tuple[np.ndarray, np.ndarray]:
    """Smolyak rule for E[f(z)], z ~ N(0, I_dim): (nodes (N, dim), weights (N,)), float64.

    Nodes are sorted (lexicographically) and unique; weights sum to 1 (some are negative). The rule
    is symmetric: -z is a node of the same weight whenever z is.
    """
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim: expected an integer >= 1, got {dim!r}")
    if not isinstance(level, int) or level < 1:
        raise ValueError(f"level: expected an integer >= 1, got {level!r}")
    acc: dict[tuple, float] = {}
    for total in range(max(0, level - dim), level):     # total excess |i| - dim
        coeff = (-1) ** (level - 1 - total) * comb(dim - 1, level - 1 - total)
        if coeff == 0:
            continue
        for excess in _excesses(dim, total):
            axes = sorted(excess)
            rules = [gauss_hermite(excess[a] + 1) for a in axes]
            for picks in product(*(range(len(r[0])) for r in rules)):
                key = tuple((a, round(float(r[0][p]), 12)) for a, r, p in zip(axes, rules, picks) if r[0][p] != 0)
                weight = coeff * float(np.prod([r[1][p] for r, p in zip(rules, picks)]))
                acc[key] = acc.get(key, 0.0) + weight
    keys = [k for k, w in acc.items() if abs(w) > 1e-14]
    nodes = np.zeros((len(keys), dim))
    for row, key in enumerate(keys):
        for axis, value in key:
            nodes[row, axis] = value
    weights = np.array([acc[k] for k in keys])
    order = np.lexsort(nodes.T[::-1])
    return nodes[order], weights[order]
