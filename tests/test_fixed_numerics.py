"""The fixed-point spec (docs/fixed_point.md) against a pure-Python oracle with exact rationals."""
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fixed_reference as ref
from hwsim.backends.fixed import Format, LayerSpec, int_linear, int_linear_steps, quantize, requantize
from hwsim.backends.fixed.numerics import OVERFLOWS, ROUNDINGS, accumulator_bits, exact_dtype, requantize_exact

modes = st.sampled_from([(r, o) for r in ROUNDINGS for o in OVERFLOWS])
bits_st = st.integers(2, 32)


@st.composite
def scaled_values(draw):
    """Floats that hit ties (k + 1/2 LSB), exact codes, range edges and arbitrary values."""
    bits, frac = draw(bits_st), draw(st.integers(-8, 40))
    kind = draw(st.sampled_from(["tie", "code", "edge", "any"]))
    lsb = 2.0 ** -frac
    if kind == "any":
        x = draw(st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False))
    else:
        k = draw(st.integers(-(1 << (bits + 1)), 1 << (bits + 1)))
        if kind == "edge":
            k = draw(st.sampled_from([-(1 << (bits - 1)), (1 << (bits - 1)) - 1, 1 << (bits - 1),
                                      -(1 << (bits - 1)) - 1]))
        x = (k + (0.5 if kind == "tie" else 0.0)) * lsb
    return x, bits, frac


@settings(max_examples=400, deadline=None)
@given(scaled_values(), modes)
def test_quantize_matches_exact_rationals(case, mode):
    x, bits, frac = case
    rounding, overflow = mode
    got = quantize(torch.tensor([x], dtype=torch.float64), bits, frac, rounding, overflow)
    assert got.dtype == torch.int64
    assert int(got[0]) == ref.quantize(x, bits, frac, rounding, overflow)


def test_quantize_ties_and_extremes_by_hand():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999999999999994, 200.0, -200.0], dtype=torch.float64)
    assert quantize(x, 8, 0, "half_up").tolist() == [1, 2, 3, 0, -1, -2, 0, 127, -128]
    assert quantize(x, 8, 0, "half_even").tolist() == [0, 2, 2, 0, -2, -2, 0, 127, -128]
    assert quantize(x, 8, 0, "floor").tolist() == [0, 1, 2, -1, -2, -3, 0, 127, -128]
    assert quantize(torch.tensor([128.0, 129.0, -129.0]), 8, 0, "floor", "wrap").tolist() == [-128, -127, 127]
    assert quantize(torch.tensor([0.75]), 4, 2).tolist() == [3]            # Q4.2: 0.75 = 3 LSB


def test_quantize_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN or infinite"):
        quantize(torch.tensor([float("nan")]), 8, 4)
    with pytest.raises(ValueError, match="rounding must be one of floor, half_up, half_even"):
        quantize(torch.tensor([1.0]), 8, 4, rounding="nearest")
    with pytest.raises(ValueError, match="bits must be an integer in 2..32"):
        quantize(torch.tensor([1.0]), 1, 0)


@settings(max_examples=400, deadline=None)
@given(st.integers(-(1 << 60), 1 << 60), st.integers(-3, 40), bits_st, modes)
def test_requantize_matches_exact_rationals(acc, shift, bits, mode):
    rounding, overflow = mode
    assume(abs(acc) * 2 ** max(0, -shift) < 2 ** 62)
    got = requantize(torch.tensor([acc]), shift, bits, rounding, overflow)
    assert int(got[0]) == ref.requantize(acc, shift, bits, rounding, overflow)


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(2, 20), st.integers(-3, 30), modes, st.sampled_from([torch.float32, torch.float64]))
def test_float_accumulators_requantize_exactly(data, bits, shift, mode, dtype):
    """The emulator's float path equals the integer one wherever exact_dtype allows that float type."""
    acc_bits = data.draw(st.integers(2, 53))
    assume(exact_dtype(acc_bits, shift) in (torch.float32, dtype) and
           (dtype == torch.float64 or exact_dtype(acc_bits, shift) == torch.float32))
    half = 1 << (acc_bits - 1)
    accs = data.draw(st.lists(st.integers(-half, half), min_size=1, max_size=20))
    rounding, overflow = mode
    fmt = Format(bits, 0)
    got, _ = requantize_exact(torch.tensor(accs, dtype=dtype), shift, fmt, rounding, overflow)
    assert got.to(torch.int64).tolist() == [ref.requantize(a, shift, bits, rounding, overflow) for a in accs]


def test_requantize_counts_overflows_and_rejects_floats():
    codes, over = requantize_exact(torch.tensor([300, -300, 5]), 0, Format(8, 0), "half_up", "saturate")
    assert codes.tolist() == [127, -128, 5] and over == 2
    with pytest.raises(TypeError, match="integer tensor"):
        requantize(torch.tensor([1.0]), 1, 8)


def test_accumulator_width_formula_is_tight_enough():
    # 4 products of two 8-bit minimum codes: 4 * 2^14 = 2^16 needs 18 signed bits
    assert accumulator_bits(8, 8, 4) == 18
    worst = 4 * (-128) * (-128)
    assert worst <= (1 << 17) - 1
    assert accumulator_bits(8, 8, 1) == 16 and accumulator_bits(8, 8, 28, 32) == 37


@st.composite
def tt_cases(draw):
    k = draw(st.integers(1, 3))
    n = [draw(st.integers(1, 3)) for _ in range(k)]
    m = [draw(st.integers(1, 3)) for _ in range(k)]
    ranks = [1] + [draw(st.integers(1, 3)) for _ in range(k - 1)] + [1]
    fmt = st.tuples(st.integers(2, 12), st.integers(-2, 8))
    fmts = {role: draw(fmt) for role in ("input", "weight", "intermediate", "output")}
    if draw(st.booleans()):                                         # one intermediate format per step
        fmts["intermediate"] = [draw(fmt) for _ in range(k - 1)]
    rounding, overflow = draw(modes)
    batch = draw(st.integers(1, 3))
    with_bias = draw(st.booleans())
    seed = draw(st.integers(0, 2 ** 31))
    return n, m, ranks, fmts, rounding, overflow, batch, with_bias, seed


def _random_codes(shape, bits, gen):
    return torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), shape, generator=gen)


def _spec(fmts, rounding, overflow, bias_bits=20):
    mid = fmts["intermediate"]
    mid = [Format(*f) for f in mid] if isinstance(mid, list) else Format(*mid)
    return LayerSpec(Format(*fmts["input"]), Format(*fmts["weight"]), mid, Format(*fmts["output"]),
                     bias_bits=bias_bits, rounding=rounding, overflow=overflow)


@settings(max_examples=150, deadline=None)
@given(tt_cases())
def test_int_linear_equals_the_pure_python_spec(case):
    n, m, ranks, fmts, rounding, overflow, batch, with_bias, seed = case
    gen = torch.Generator().manual_seed(seed)
    shapes = [(ranks[k], n[k], m[k], ranks[k + 1]) for k in range(len(n))]
    cores = [_random_codes(s, fmts["weight"][0], gen) for s in shapes]
    x = _random_codes((batch, math.prod(n)), fmts["input"][0], gen)
    bias = _random_codes((math.prod(m),), 20, gen) if with_bias else None
    spec = _spec(fmts, rounding, overflow)
    steps = int_linear_steps(cores, x, spec, bias)
    traces, y = ref.tt_linear([g.tolist() for g in cores], x.tolist(), bias.tolist() if with_bias else None,
                              fmts, rounding, overflow)
    assert steps[-1].tolist() == y
    for k, (got, want) in enumerate(zip(steps[:-1], traces[:-1])):
        for (b, outs, c, ins), code in want.items():
            flat_out = sum(i * math.prod(m[j + 1:k + 1]) for j, i in enumerate(outs))
            flat_in = sum(i * math.prod(n[k + 2 + j:]) for j, i in enumerate(ins))
            assert int(got[b, flat_out, flat_in, c]) == code, f"step {k} differs at {(b, outs, c, ins)}"


@settings(max_examples=40, deadline=None)
@given(tt_cases(), st.integers(1, 3))
def test_query_axis_and_shared_operands_change_nothing(case, queries):
    """Per-query cores, an expanded (shared) core and a query-batched input all give the per-query result."""
    n, m, ranks, fmts, rounding, overflow, batch, with_bias, seed = case
    gen = torch.Generator().manual_seed(seed)
    shapes = [(ranks[k], n[k], m[k], ranks[k + 1]) for k in range(len(n))]
    cores = [_random_codes((queries, *s), fmts["weight"][0], gen) for s in shapes]
    cores[0] = cores[0][:1].expand(queries, *shapes[0])                   # shared first core
    x = _random_codes((batch, math.prod(n)), fmts["input"][0], gen)
    bias = _random_codes((queries, math.prod(m)), 20, gen) if with_bias else None
    spec = _spec(fmts, rounding, overflow)
    together = int_linear(cores, x, spec, bias)
    xq = int_linear(cores, x.expand(queries, *x.shape).clone(), spec, bias)
    for q in range(queries):
        alone = int_linear([g[q] for g in cores], x, spec, None if bias is None else bias[q])
        assert torch.equal(together[q], alone) and torch.equal(xq[q], alone)


def test_wide_formats_use_int64_and_stay_exact():
    too_wide = _spec({r: (32, 0) for r in ("input", "weight", "intermediate", "output")}, "floor", "wrap")
    with pytest.raises(ValueError, match="65 bits exceeds the 64-bit integer emulation"):
        too_wide.steps([(1, 2, 2, 1)], False)
    fmts = {"input": (30, 0), "weight": (30, 0), "intermediate": (30, 3), "output": (30, 0)}
    spec = _spec(fmts, "half_even", "wrap")
    steps = spec.steps([(1, 2, 2, 2), (2, 2, 2, 1)], False)
    assert [s.dtype for s in steps] == [torch.int64, torch.int64]
    gen = torch.Generator().manual_seed(0)
    cores = [_random_codes(s, 30, gen) for s in [(1, 2, 2, 2), (2, 2, 2, 1)]]
    x = _random_codes((2, 4), 30, gen)
    _, y = ref.tt_linear([g.tolist() for g in cores], x.tolist(), None, fmts, "half_even", "wrap")
    assert int_linear(cores, x, spec).tolist() == y


def test_worked_example_of_the_spec():
    """docs/fixed_point.md section 6, number for number."""
    x = quantize(torch.tensor([[0.5, -0.25, 0.75, 0.1]], dtype=torch.float64), 8, 7)
    g0 = quantize(torch.tensor([[[[0.5, -1], [0.25, 0.75]], [[1.5, 0.5], [-0.5, 1]]]], dtype=torch.float64), 8, 6)
    g1 = quantize(torch.tensor([[[[1.25]], [[-0.5]]], [[[0.75]], [[2.0]]]], dtype=torch.float64), 8, 6)
    assert x.tolist() == [[64, -32, 96, 13]] and g1.flatten().tolist() == [80, -32, 48, 127]
    spec = LayerSpec(Format(8, 7), Format(8, 6), Format(8, 5), Format(8, 4))
    assert [(s.shift, s.acc_bits) for s in spec.steps([(1, 2, 2, 2), (2, 2, 1, 1)], False)] == [(8, 17), (7, 18)]
    t0, y = int_linear_steps([g0, g1], x, spec)
    assert t0[0, 0].T.tolist() == [[44, 1], [-4, 10]] and t0[0, 1].T.tolist() == [[-8, -4], [36, -3]]
    assert y.tolist() == [[36, 7]]
