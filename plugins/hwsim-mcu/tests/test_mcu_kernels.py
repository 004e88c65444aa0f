"""The integer kernels against Python-integer references written independently, in the C semantics of
gemmlowp / CMSIS-NN (truncating division, two's-complement masks, arithmetic shifts)."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings, strategies as st

from hwsim_mcu import kernels
from hwsim_mcu.kernels import (INT32_MAX, INT32_MIN, linear_s8, quantize_multiplier, relu_s8, requantize,
                               saturate_int8, tt_linear_s8, wrap_int32)

FAST = settings(max_examples=60, deadline=None)


# --- references with Python integers -------------------------------------------------------------------
def c_div(a: int, b: int) -> int:
    """C's integer division (truncation toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def ref_srdhm(a: int, b: int) -> int:
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    return c_div(ab + nudge, 1 << 31)


def ref_rdbpot(x: int, exponent: int) -> int:
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def ref_requantize(acc: int, q: int, e: int) -> int:
    left, right = max(e, 0), max(-e, 0)
    x = min(max(acc * (1 << left), INT32_MIN), INT32_MAX)
    return ref_rdbpot(ref_srdhm(x, q), right)


def ref_wrap(acc: int) -> int:
    return (acc - INT32_MIN) % (1 << 32) + INT32_MIN


def ref_out(acc: int, q: int, e: int) -> int:
    return min(max(ref_requantize(ref_wrap(acc), q, e), -128), 127)


def round_half_away(t: Fraction) -> int:
    return int(math.floor(abs(t) + Fraction(1, 2))) * (1 if t >= 0 else -1)


multipliers = st.floats(min_value=1e-9, max_value=300.0, allow_nan=False, allow_infinity=False)
int32s = st.integers(INT32_MIN, INT32_MAX)


# --- requantisation ------------------------------------------------------------------------------------
@FAST
@given(multipliers)
def test_quantize_multiplier_is_a_q31_number_within_2_pow_minus_31(m):
    q, e = quantize_multiplier(m)
    assert (1 << 30) <= q < (1 << 31)
    assert abs(Fraction(q) * Fraction(2) ** (e - 31) - Fraction(m)) <= Fraction(m) * Fraction(1, 1 << 31)


def test_quantize_multiplier_edges():
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(2.0 ** -40) == (0, 0)
    assert quantize_multiplier(1.0) == (1 << 30, 1)
    assert quantize_multiplier(0.5) == (1 << 30, 0)
    assert quantize_multiplier(1 - 2.0 ** -40) == (1 << 30, 1)      # q rounds to 2^31: halved, e + 1
    for bad in (-1.0, float("nan"), float("inf"), 2.0 ** 31):
        with pytest.raises(ValueError):
            quantize_multiplier(bad)


@FAST
@given(st.lists(int32s, min_size=1, max_size=40), multipliers)
def test_requantize_equals_the_gemmlowp_reference_bit_for_bit(accs, m):
    q, e = quantize_multiplier(m)
    got = requantize(torch.tensor(accs, dtype=torch.int64), q, e).tolist()
    assert got == [ref_requantize(a, q, e) for a in accs]


@FAST
@given(st.integers(-(1 << 40), 1 << 40), st.integers(0, 40))
def test_rounding_divide_form_equals_gemmlowp_for_every_integer(x, exponent):
    # requantize's sign(h) floor((|h| + 2^(R-1)) / 2^R) is gemmlowp's remainder/threshold form
    q, e = 1 << 30, 1 - exponent                    # M = 2^-exponent: SRDHM(x, 2^30) = round(x / 2)
    x = max(min(x, INT32_MAX), INT32_MIN)
    assert requantize(torch.tensor([x]), q, e).item() == ref_requantize(x, q, e)


@FAST
@given(st.lists(int32s, min_size=1, max_size=20), multipliers)
def test_requantize_is_within_one_lsb_of_the_exact_rational_rounding(accs, m):
    q, e = quantize_multiplier(m)
    got = requantize(torch.tensor(accs, dtype=torch.int64), q, e).tolist()
    for acc, y in zip(accs, got):
        t = Fraction(acc) * Fraction(m)
        if abs(t) < (1 << 30):
            assert abs(y - round_half_away(t)) <= 1
            # the derived bound on the real error: 1/2 + 2^-(R+1) + |t| 2^-31
            assert abs(Fraction(y) - t) <= Fraction(1, 2) + Fraction(1, 2 ** (max(-e, 0) + 1)) + abs(t) / 2 ** 31


def test_requantize_ties():
    q, e = quantize_multiplier(0.5)                 # exact: M = 1/2
    y = requantize(torch.tensor([1, -1, 3, -3, 5, -5]), q, e).tolist()
    # SRDHM (x 2^30 / 2^31) rounds half up: 0.5 -> 1, -0.5 -> 0; 1.5 -> 2, -1.5 -> -1; 2.5 -> 3, -2.5 -> -2
    assert y == [1, 0, 2, -1, 3, -2]
    q, e = quantize_multiplier(0.25)                # the divide by 2 rounds half away from zero
    assert requantize(torch.tensor([2, -2, 6, -6]), q, e).tolist() == [1, -1, 2, -2]


@FAST
@given(st.lists(st.integers(-(1 << 40), 1 << 40), min_size=1, max_size=30))
def test_saturation_and_wrap(values):
    t = torch.tensor(values, dtype=torch.int64)
    s, n = saturate_int8(t)
    assert s.tolist() == [min(max(v, -128), 127) for v in values]
    assert n == sum(1 for v in values if not -128 <= v <= 127)
    w, n = wrap_int32(t)
    assert w.tolist() == [ref_wrap(v) for v in values]
    assert n == sum(1 for v in values if not INT32_MIN <= v <= INT32_MAX)
    assert relu_s8(s).tolist() == [max(v, 0) for v in s.tolist()]


# --- layers --------------------------------------------------------------------------------------------
def ref_dense(x, w, bias, q, e):
    """y[b][o] = requant(sum_i x[b][i] w[o][i] + bias[o]) with Python integers."""
    return [[ref_out(sum(xi * wi for xi, wi in zip(row, wrow)) + (bias[o] if bias else 0), q, e)
             for o, wrow in enumerate(w)] for row in x]


def ref_tt(x, cores, bias, steps):
    """The core-by-core schedule, literally: state S[b][d][a][rest] (rest = input digits not yet used,
    the first one most significant); step k sums over (a, j) and requantises."""
    state = [[[[v for v in row]]] for row in x]                 # d = 1, a = r_0 = 1, rest = P
    for k, (g, (q, e)) in enumerate(zip(cores, steps)):
        r, n, m, s = len(g), len(g[0]), len(g[0][0]), len(g[0][0][0])
        new_state = []
        for b, per_b in enumerate(state):
            rest = len(per_b[0][0]) // n
            out = []
            for d, per_d in enumerate(per_b):
                for u in range(m):
                    rows_c = []
                    for c in range(s):
                        vals = []
                        for z in range(rest):
                            acc = sum(per_d[a][j * rest + z] * g[a][j][u][c] for a in range(r) for j in range(n))
                            if k == len(cores) - 1 and bias is not None:
                                acc += bias[d * m + u]
                            vals.append(ref_out(acc, q, e))
                        rows_c.append(vals)
                    out.append(rows_c)
            new_state.append(out)
        state = new_state
    return [[per_d[0][0] for per_d in per_b] for per_b in state]


int8s = st.integers(-128, 127)


@st.composite
def dense_case(draw):
    b, i, o = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    x = [[draw(int8s) for _ in range(i)] for _ in range(b)]
    w = [[draw(st.integers(-127, 127)) for _ in range(i)] for _ in range(o)]
    bias = draw(st.one_of(st.none(), st.lists(st.integers(-(1 << 20), 1 << 20), min_size=o, max_size=o)))
    return x, w, bias, draw(st.floats(1e-4, 4.0))


@FAST
@given(dense_case())
def test_linear_s8_equals_the_python_integer_reference(case):
    x, w, bias, m = case
    q, e = quantize_multiplier(m)
    y, _ = linear_s8(torch.tensor(x), torch.tensor(w), torch.tensor(bias) if bias else None, q, e)
    assert y.tolist() == ref_dense(x, w, bias, q, e)


@st.composite
def tt_case(draw):
    k = draw(st.integers(1, 3))
    ns = [draw(st.integers(1, 3)) for _ in range(k)]
    ms = [draw(st.integers(1, 3)) for _ in range(k)]
    ranks = [1] + [draw(st.integers(1, 3)) for _ in range(k - 1)] + [1]
    cores = [[[[[draw(st.integers(-127, 127)) for _ in range(ranks[j + 1])] for _ in range(ms[j])]
               for _ in range(ns[j])] for _ in range(ranks[j])] for j in range(k)]
    b = draw(st.integers(1, 2))
    x = [[draw(int8s) for _ in range(math.prod(ns))] for _ in range(b)]
    bias = draw(st.one_of(st.none(), st.lists(st.integers(-(1 << 16), 1 << 16), min_size=math.prod(ms),
                                               max_size=math.prod(ms))))
    steps = [quantize_multiplier(draw(st.floats(1e-3, 2.0))) for _ in range(k)]
    return x, cores, bias, steps


@FAST
@given(tt_case())
def test_tt_linear_s8_equals_the_python_integer_reference(case):
    x, cores, bias, steps = case
    y, _ = tt_linear_s8(torch.tensor(x), [torch.tensor(g) for g in cores],
                        torch.tensor(bias) if bias else None, steps)
    assert y.tolist() == ref_tt(x, cores, bias, steps)


@settings(max_examples=20, deadline=None)
@given(tt_case())
def test_float64_sums_equal_int64_sums(case):
    x, cores, bias, steps = case
    args = (torch.tensor(x), [torch.tensor(g) for g in cores], torch.tensor(bias) if bias else None, steps)
    fast, _ = tt_linear_s8(*args)
    saved = kernels.EXACT_TERMS
    kernels.EXACT_TERMS = 0                         # force the int64 path
    try:
        slow, _ = tt_linear_s8(*args)
    finally:
        kernels.EXACT_TERMS = saved
    assert torch.equal(fast, slow)


def test_leading_query_axes_broadcast():
    g = torch.Generator().manual_seed(0)
    cores = [torch.randint(-127, 128, (3, 1, 2, 2, 2), generator=g), torch.randint(-127, 128, (2, 3, 2, 1), generator=g)]
    x = torch.randint(-128, 128, (4, 6), generator=g)
    steps = [quantize_multiplier(0.01), quantize_multiplier(0.02)]
    y, _ = tt_linear_s8(x, cores, None, steps)
    assert y.shape == (3, 4, 4)
    for q in range(3):
        yq, _ = tt_linear_s8(x, [cores[0][q], cores[1]], None, steps)
        assert torch.equal(y[q], yq)
