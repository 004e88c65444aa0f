import itertools
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from hwsim.tt import (TTShape, choose_method, contract, core_environment, factorize, to_dense, tt_linear)


@given(st.integers(1, 5000), st.integers(1, 5))
def test_factorize_multiplies_back(n, k):
    f = factorize(n, k)
    assert len(f) == k and math.prod(f) == n


def test_factorize_examples():
    assert factorize(784, 4) == (4, 7, 7, 4)
    assert factorize(1024, 4) == (4, 8, 8, 4)


@pytest.mark.parametrize("shape, rank, params", [
    ((784, 1024, (7, 4, 4, 7), (8, 4, 4, 8)), 6, 1824),
    ((1024, 10, (8, 4, 4, 8), (1, 5, 2, 1)), 6, 1104),
    ((784, 256, (4, 7, 7, 4), (4, 4, 4, 4)), 4, 1024),
    ((256, 10, (4, 4, 4, 4), (1, 5, 2, 1)), 4, 480),
])
def test_reference_parameter_counts(shape, rank, params):
    """Zhao et al., arXiv:2308.09858: 784-1024-10 rank 6 = 3,962 with biases; 784-256-10 rank 4 = 1,504."""
    s = TTShape.build(shape[0], shape[1], rank, shape[2], shape[3])
    assert s.num_params == params
    assert s.dense_params == shape[0] * shape[1]


def random_cores(shape, lead=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*lead, *c, generator=g, dtype=torch.float64) for c in shape.core_shapes]


def test_to_dense_matches_the_defining_formula():
    s = TTShape((3, 2, 4), (2, 3, 2), (1, 2, 3, 1))
    cores = random_cores(s)
    w = to_dense(cores)
    assert w.shape == (12, 24)
    for i in itertools.product(*map(range, s.out_factors)):
        for j in itertools.product(*map(range, s.in_factors)):
            v = cores[0][:, j[0], i[0], :]
            for k in (1, 2):
                v = v @ cores[k][:, j[k], i[k], :]
            row = (i[0] * 3 + i[1]) * 2 + i[2]
            col = (j[0] * 2 + j[1]) * 4 + j[2]
            assert w[row, col].item() == pytest.approx(v.item(), rel=1e-12, abs=1e-12)


shapes = st.integers(1, 3).flatmap(lambda k: st.tuples(
    st.lists(st.integers(1, 4), min_size=k, max_size=k), st.lists(st.integers(1, 4), min_size=k, max_size=k),
    st.lists(st.integers(1, 3), min_size=k - 1, max_size=k - 1)))


def _defining_formula(cores, x):
    """y (..., B, M) = x W^T for x (B, P) and cores G_k (..., r_{k-1}, n_k, m_k, r_k), K <= 3, with
    W[(i_1..i_K), (j_1..j_K)] = G_1[0, j_1, i_1, :] ... G_K[:, j_K, i_K, 0] (row-major multi-indices):
    one einsum over every core and rank, independent of hwsim.tt's code."""
    k = len(cores)
    j, i, a = "abc"[:k], "hij"[:k], "opqr"[:k + 1]
    terms = ",".join(f"...{a[t]}{j[t]}{i[t]}{a[t + 1]}" for t in range(k))
    y = torch.einsum(f"z{j},{terms}->...z{i}", x.reshape(len(x), *(g.shape[-3] for g in cores)), *cores)
    return y.reshape(*y.shape[:-k], -1)


@settings(max_examples=40, deadline=None)
@given(shapes, st.integers(1, 5), st.integers(0, 3))
def test_all_evaluations_agree(shape, rows, queries):
    """dense reconstruction + GEMM, direct contraction, batched over a query axis: the map of the defining
    formula (float64: rounding differences only)."""
    nf, mf, r = shape
    s = TTShape(tuple(nf), tuple(mf), (1, *r, 1))
    lead = (queries,) if queries else ()
    cores = random_cores(s, lead)
    x = torch.randn(rows, s.in_features, dtype=torch.float64)
    reference = _defining_formula(cores, x)
    for method in ("dense", "direct", "auto"):
        torch.testing.assert_close(tt_linear(cores, x, method), reference, rtol=1e-10, atol=1e-10)
    if queries:
        for q in range(queries):
            single = contract([c[q] for c in cores], x)
            torch.testing.assert_close(single, reference[q], rtol=1e-10, atol=1e-10)


def test_core_environment_is_the_derivative():
    s = TTShape.build(784, 256, 4, (4, 7, 7, 4), (4, 4, 4, 4))
    cores = random_cores(s)
    x = torch.randn(3, 784, dtype=torch.float64)
    y = contract(cores, x)
    for k in range(s.num_cores):
        env = core_environment(cores, k, x)
        yk = torch.einsum("buancv,anic->buiv", env, cores[k]).reshape(3, -1)
        torch.testing.assert_close(yk, y, rtol=1e-10, atol=1e-10)


def test_init_std_gives_the_weight_std():
    s = TTShape.build(784, 1024, 6, (7, 4, 4, 7), (8, 4, 4, 8))
    g = torch.Generator().manual_seed(0)
    core_std = s.init_std(0.05)
    w = to_dense([torch.randn(*c, generator=g, dtype=torch.float64) * core_std for c in s.core_shapes])
    assert w.std().item() == pytest.approx(0.05, rel=0.1)


def test_auto_prefers_dense_for_big_batches():
    s = TTShape.build(784, 1024, 6, (7, 4, 4, 7), (8, 4, 4, 8))
    assert choose_method(s, rows=2000) == "dense"


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="multiply to"):
        TTShape.build(784, 256, 4, (4, 7, 7, 5), (4, 4, 4, 4))
    with pytest.raises(ValueError, match="ranks"):
        TTShape((2, 2), (2, 2), (2, 2, 1))
    with pytest.raises(ValueError, match="internal ranks"):
        TTShape.build(16, 16, [2, 2, 2], (4, 4), (4, 4))
    with pytest.raises(ValueError, match="method"):
        tt_linear(random_cores(TTShape((2,), (2,), (1, 1))), torch.zeros(1, 2, dtype=torch.float64), "fast")
