"""The fixed-point spec (docs/fixed_point.md) against a pure-Python oracle with exact rationals."""
import math

import pytest
import torch
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

import fixed_reference as ref
from hwsim.backends import create_backend
from hwsim.backends.fixed import Format, LayerSpec, int_linear, int_linear_steps, quantize, requantize
from hwsim.backends.fixed.layer import contract
from hwsim.backends.fixed.numerics import (MAX_BITS, MAX_FRAC, OVERFLOWS, ROUNDINGS, accumulator_bits, exact_dtype,
                                           grid_codes, requantize_exact)
from hwsim.model import Linear, Network

modes = st.sampled_from([(r, o) for r in ROUNDINGS for o in OVERFLOWS])
bits_st = st.integers(2, MAX_BITS)
formats_st = st.builds(Format, bits_st, st.integers(-MAX_FRAC, MAX_FRAC))     # every format the spec accepts


@st.composite
def values_near(draw, fmt, width=64):
    """Floats for ``fmt``: ties (k + 1/2 LSB), exact codes, the range edges, values many multiples of 2^W
    codes away (what a wrap must reduce) and arbitrary floats of ``width`` bits, subnormals included."""
    kind = draw(st.sampled_from(["tie", "code", "edge", "far", "any"]))
    if kind == "any":
        return draw(st.floats(allow_nan=False, allow_infinity=False, width=width))
    k = draw(st.integers(-(1 << (fmt.bits + 1)), 1 << (fmt.bits + 1)))
    if kind == "edge":
        k = draw(st.sampled_from([fmt.lo, fmt.hi, fmt.hi + 1, fmt.lo - 1]))
    if kind == "far":
        k += draw(st.integers(-(1 << 40), 1 << 40)) << fmt.bits
    return (k + (0.5 if kind == "tie" else 0.0)) * fmt.lsb


@settings(max_examples=500, deadline=None)
@given(st.data(), formats_st, modes)
def test_quantize_matches_exact_rationals(data, fmt, mode):
    x = data.draw(values_near(fmt))
    rounding, overflow = mode
    got = quantize(torch.tensor([x], dtype=torch.float64), fmt.bits, fmt.frac_bits, rounding, overflow)
    assert got.dtype == torch.int64
    assert int(got[0]) == ref.quantize(x, fmt.bits, fmt.frac_bits, rounding, overflow)


@settings(max_examples=400, deadline=None)
@given(st.data(), formats_st, modes, st.sampled_from([torch.float32, torch.float64]))
def test_backend_codes_and_overflow_counts_are_exact_at_every_width(data, fmt, mode, dtype):
    """grid_codes, the backend's quantizer of inputs, parameters and host activations: codes and the number
    of values outside the format, for float32 and float64 values on and off the grid (one value alone
    takes the on-grid shortcut whenever it is a code)."""
    width = torch.finfo(dtype).bits
    x = torch.tensor(data.draw(st.lists(values_near(fmt, width), min_size=1, max_size=3)), dtype=torch.float64)
    x = x.to(dtype)
    assume(bool(torch.isfinite(x).all()))                   # a far value beyond the float32 range
    rounding, overflow = mode
    codes, over = grid_codes(x, fmt, rounding, overflow)
    assert codes.dtype.is_floating_point
    assert codes.to(torch.int64).tolist() == [ref.quantize(v, fmt.bits, fmt.frac_bits, rounding, overflow)
                                              for v in x.tolist()]
    assert over == sum(ref.outside(ref.scaled(v, fmt.frac_bits, rounding), fmt.bits) for v in x.tolist())


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
    with pytest.raises(ValueError, match="NaN or infinite"):
        grid_codes(torch.tensor([1.0, float("-inf")]), Format(8, 4), "half_up", "saturate")
    with pytest.raises(ValueError, match="rounding must be one of floor, half_up, half_even"):
        quantize(torch.tensor([1.0]), 8, 4, rounding="nearest")
    with pytest.raises(ValueError, match="bits must be an integer in 2..32"):
        quantize(torch.tensor([1.0]), 1, 0)


INT64 = (-(1 << 63), (1 << 63) - 1)
# shifts F_in + F_weight - F_out reach -192..192; the ones around 31/32 and 62..64 are the int64 edges
shifts_st = st.one_of(st.integers(-3 * MAX_FRAC, 3 * MAX_FRAC),
                      st.sampled_from([-192, -64, -63, -62, -33, -32, -31, 31, 32, 33, 62, 63, 64, 65, 192]))


@st.composite
def int64_accumulators(draw, shift):
    """int64 values: anywhere, at the ends of int64 and around 0, small ones, or exact ties of a right shift."""
    kind = draw(st.sampled_from(["any", "edge", "small", "tie"]))
    if kind == "any":
        return draw(st.integers(*INT64))
    if kind == "edge":
        return draw(st.sampled_from([INT64[0], INT64[0] + 1, INT64[1], 1 << 62, -(1 << 62), -1, 0, 1]))
    if kind == "small" or not 0 < shift <= 63:
        return draw(st.integers(-(1 << 20), 1 << 20))
    q = draw(st.integers(INT64[0] >> shift, (INT64[1] >> shift) - 1))
    return (q << shift) + (1 << (shift - 1))


@settings(max_examples=500, deadline=None)
@given(st.data(), shifts_st, bits_st, modes)
def test_requantize_matches_exact_rationals(data, shift, bits, mode):
    """Every int64 accumulator and every shift, both ways: no int64 overflow in the rounding, the left
    shift or the range check; the overflow count is exact."""
    acc = data.draw(int64_accumulators(shift))
    rounding, overflow = mode
    v = ref.shifted(acc, shift, rounding)
    got, over = requantize_exact(torch.tensor([acc]), shift, Format(bits, 0), rounding, overflow)
    assert int(got[0]) == ref.fit(v, bits, overflow) and over == ref.outside(v, bits)
    assert int(requantize(torch.tensor([acc]), shift, bits, rounding, overflow)[0]) == int(got[0])


def test_requantize_at_the_int64_edges_by_hand():
    """Regressions: half_up added 2^(s-1) and overflowed; shifts by 64+ and left shifts past int64 gave
    wrong codes or OverflowError."""
    big = torch.tensor([1 << 62])
    assert requantize(torch.tensor([16129]), -50, 8).tolist() == [127]                  # was -128
    assert requantize(big, 63, 32, "half_up").tolist() == [1]                            # 1/2 up; was -1
    assert requantize(big, 63, 32, "half_even").tolist() == [0]
    assert requantize(big, 64, 32, "half_up").tolist() == [0]                            # was -1
    assert requantize(big, 64, 32, "half_even").tolist() == [0]                          # was 1
    assert requantize(torch.tensor([INT64[1]]), 1, 32, "half_up").tolist() == [(1 << 31) - 1]   # was -2^31
    assert requantize(torch.tensor([-3, 3]), 192, 8, "floor").tolist() == [-1, 0]
    assert requantize(torch.tensor([-3, 3]), -192, 8, "half_up", "wrap").tolist() == [0, 0]
    assert requantize(torch.tensor([-3, 3]), -192, 8).tolist() == [-128, 127]


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


NARROW = st.tuples(st.integers(2, 12), st.integers(-2, 8))                  # the datapath's usual formats
WIDEST = st.tuples(bits_st, st.integers(-MAX_FRAC, MAX_FRAC))                # every format: shifts up to +-192


@st.composite
def tt_cases(draw, fmt=NARROW):
    k = draw(st.integers(1, 3))
    n = [draw(st.integers(1, 3)) for _ in range(k)]
    m = [draw(st.integers(1, 3)) for _ in range(k)]
    ranks = [1] + [draw(st.integers(1, 3)) for _ in range(k - 1)] + [1]
    fmts = {role: draw(fmt) for role in ("input", "weight", "intermediate", "output")}
    if draw(st.booleans()):                                         # one intermediate format per step
        fmts["intermediate"] = [draw(fmt) for _ in range(k - 1)]
    rounding, overflow = draw(modes)
    batch = draw(st.integers(1, 3))
    with_bias = draw(st.booleans())
    seed = draw(st.integers(0, 2 ** 31))
    extremes = draw(st.booleans())
    return n, m, ranks, fmts, rounding, overflow, batch, with_bias, seed, extremes


def _random_codes(shape, bits, gen, extremes=False):
    """Uniform codes of a bits-wide format; with ``extremes`` half of them are the range's ends or 0, +-1
    (products and sums at the accumulator's limits)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    codes = torch.randint(lo, hi + 1, shape, generator=gen)
    if not extremes:
        return codes
    ends = torch.tensor([lo, hi, lo + 1, -1, 0, 1])[torch.randint(0, 6, shape, generator=gen)]
    return torch.where(torch.rand(shape, generator=gen) < 0.5, ends, codes)


def _spec(fmts, rounding, overflow, bias_bits=20):
    mid = fmts["intermediate"]
    mid = [Format(*f) for f in mid] if isinstance(mid, list) else Format(*mid)
    return LayerSpec(Format(*fmts["input"]), Format(*fmts["weight"]), mid, Format(*fmts["output"]),
                     bias_bits=bias_bits, rounding=rounding, overflow=overflow)


def _check_against_the_spec(case, spec: LayerSpec) -> None:
    """Random codes for ``case`` through int_linear_steps and contract: every step's codes, the output and
    the overflow count of every step equal the pure-Python spec."""
    n, m, ranks, fmts, rounding, overflow, batch, with_bias, seed, extremes = case
    gen = torch.Generator().manual_seed(seed)
    shapes = [(ranks[k], n[k], m[k], ranks[k + 1]) for k in range(len(n))]
    cores = [_random_codes(s, fmts["weight"][0], gen, extremes) for s in shapes]
    x = _random_codes((batch, math.prod(n)), fmts["input"][0], gen, extremes)
    bias = _random_codes((math.prod(m),), spec.bias_bits, gen, extremes) if with_bias else None
    steps = int_linear_steps(cores, x, spec, bias)
    traces, y, overflows = ref.tt_linear([g.tolist() for g in cores], x.tolist(),
                                         bias.tolist() if with_bias else None, fmts, rounding, overflow)
    assert steps[-1].tolist() == y
    assert contract(cores, x, spec, bias)[1] == overflows
    for k, (got, want) in enumerate(zip(steps[:-1], traces[:-1])):
        for (b, outs, c, ins), code in want.items():
            flat_out = sum(i * math.prod(m[j + 1:k + 1]) for j, i in enumerate(outs))
            flat_in = sum(i * math.prod(n[k + 2 + j:]) for j, i in enumerate(ins))
            assert int(got[b, flat_out, flat_in, c]) == code, f"step {k} differs at {(b, outs, c, ins)}"


@settings(max_examples=150, deadline=None)
@given(tt_cases())
def test_int_linear_equals_the_pure_python_spec(case):
    _check_against_the_spec(case, _spec(*case[3:6]))


@settings(max_examples=300, deadline=None)
@given(tt_cases(WIDEST))
def test_int_linear_at_the_widest_formats_and_shifts_equals_the_spec(case):
    """Formats up to 32 bits with any F in -64..64, so shifts of up to +-192 in every dtype the emulator
    picks (float32, float64, int64), codes at the range ends; only what steps() refuses is skipped."""
    n, m, ranks = case[:3]
    spec = _spec(*case[3:6])
    try:
        steps = spec.steps([(ranks[k], n[k], m[k], ranks[k + 1]) for k in range(len(n))], case[7])
    except ValueError:                  # an accumulator beyond 64 bits or a bias F beyond +-64: refused
        assume(False)
    event(f"dtypes {sorted({str(s.dtype) for s in steps})}")
    event(f"shifts {'beyond 63 ' if any(abs(s.shift) > 63 for s in steps) else ''}both ways"
          if min(s.shift for s in steps) < 0 < max(s.shift for s in steps) else "shifts one way")
    _check_against_the_spec(case, spec)


@settings(max_examples=40, deadline=None)
@given(tt_cases(), st.integers(1, 3))
def test_query_axis_and_shared_operands_change_nothing(case, queries):
    """Per-query cores, an expanded (shared) core and a query-batched input all give the per-query result."""
    n, m, ranks, fmts, rounding, overflow, batch, with_bias, seed, _ = case
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
    with pytest.raises(ValueError, match=r"core step 0 \(T = 2 products of Q32\.0 x Q32\.0 codes\): an accumulator "
                                         r"of 65 bits exceeds the 64-bit integer emulation; narrow these formats"):
        too_wide.steps([(1, 2, 2, 1)], False)
    fmts = {"input": (30, 0), "weight": (30, 0), "intermediate": (30, 3), "output": (30, 0)}
    spec = _spec(fmts, "half_even", "wrap")
    steps = spec.steps([(1, 2, 2, 2), (2, 2, 2, 1)], False)
    assert [s.dtype for s in steps] == [torch.int64, torch.int64]
    gen = torch.Generator().manual_seed(0)
    cores = [_random_codes(s, 30, gen) for s in [(1, 2, 2, 2), (2, 2, 2, 1)]]
    x = _random_codes((2, 4), 30, gen)
    _, y, _ = ref.tt_linear([g.tolist() for g in cores], x.tolist(), None, fmts, "half_even", "wrap")
    assert int_linear(cores, x, spec).tolist() == y


def test_int64_layers_shift_past_int64_exactly():
    """Regression: a layer's int64 requantization overflowed on a left shift by 50 (saturated to -128)
    and raised OverflowError on shifts of +-192 (the widest formats' F)."""
    one = lambda fin, fw, fout, rounding="half_up": LayerSpec(Format(*fin), Format(*fw), Format(8, 0),  # noqa: E731
                                                            Format(*fout), rounding=rounding)
    x, w = torch.tensor([[127]]), [torch.tensor([[[[127]]]])]
    assert one((8, 0), (8, 0), (8, 50)).steps([(1, 1, 1, 1)], False)[0].dtype == torch.int64
    assert int_linear(w, x, one((8, 0), (8, 0), (8, 50))).tolist() == [[127]]
    assert int_linear(w, -x, one((8, 64), (8, 64), (8, -64), "floor")).tolist() == [[-1]]
    assert int_linear(w, x, one((8, -64), (8, -64), (8, 64))).tolist() == [[127]]


def _identity_layer(bits: int, frac: int, **options):
    """A fixed backend bound to y = w x with one input, one output and w = 1 in Q(bits, 0): input and
    output share Q(bits, frac), so the output codes are the input codes (shift 0)."""
    net = Network([Linear(1, 1, False)])
    backend = create_backend("fixed", bits=bits, formats={"input": [bits, frac], "weight": [bits, 0],
                                                           "output": [bits, frac]}, **options)
    backend.bind(net)
    return backend, net.layers[0]


@pytest.mark.parametrize("bits, frac, rounding, overflow, x, dtype, code, counted", [
    (32, 31, "half_up", "saturate", 1.0, torch.float32, (1 << 31) - 1, 1),  # the issue: was 2^31, uncounted
    (32, 31, "half_up", "wrap", 1.0, torch.float32, -(1 << 31), 1),
    (32, 31, "half_up", "wrap", 2.0 ** 40, torch.float32, 0, 1),            # float32 wrap: was -2^31
    (24, 23, "floor", "wrap", 2.0 ** 50, torch.float32, 0, 1),              # was -2^23
    (32, 0, "half_even", "wrap", 2.0 ** 32 + 5.5, torch.float64, 6, 1),     # off the grid: wrapped at 32
    (32, 0, "half_up", "saturate", 2.0 ** 32 + 5.5, torch.float64, (1 << 31) - 1, 1),  # bits first, uncounted
    (8, -64, "floor", "saturate", -1e-30, torch.float32, -1, 0),            # x * 2^-64 underflowed to -0: was 0
])
def test_backend_inputs_are_exact_and_counted_at_every_width(bits, frac, rounding, overflow, x, dtype, code, counted):
    backend, layer = _identity_layer(bits, frac, rounding=rounding, overflow=overflow)
    y = backend.linear(layer, {"weight": torch.ones(1, 1, dtype=torch.float64)}, torch.tensor([[x]], dtype=dtype), None)
    assert y.double().item() == code * 2.0 ** -frac
    counters = backend.counters()
    assert counters.get("overflows_layer0_input", 0) == counted and counters["overflows_layer0"] == 0


@pytest.mark.parametrize("options, message", [
    ({"bias_bits": 40}, r"backend\.bias_bits: 40 is not allowed; use an integer in 2\.\.32$"),
    ({"int_bits": {"weight": 100}}, r"backend\.int_bits\.weight: 100 is not allowed; at bits 8 use an integer in "
                                    r"-56\.\.72 \(frac_bits = bits - int_bits in -64\.\.64\)$"),
    ({"bits": 4, "int_bits": {"intermediate": [1, -61]}}, r"backend\.int_bits\.intermediate\[1\]: -61 is not allowed"),
    ({"formats": {"output": [8, 65]}}, r"backend\.formats\.output: frac_bits must be an integer in -64\.\.64, got 65$"),
])
def test_options_beyond_the_exact_ranges_are_refused_with_the_key_named(options, message):
    with pytest.raises(ValueError, match=message):
        create_backend("fixed", **options)


@pytest.mark.parametrize("options, message", [
    ({"bits": 32}, r"backend: layer 0: core step 0 \(T = 2 products of Q32\.31 x Q32\.30 codes, plus a 32-bit "
                   r"bias\): an accumulator of 66 bits exceeds the 64-bit integer emulation; narrow these formats"),
    ({"formats": {"input": [8, 60], "weight": [8, 60]}},
     r"backend: layer 0: the bias format takes F_in \+ F_weight = 60 \+ 60 fraction bits of the last core step: "
     r"frac_bits must be an integer in -64\.\.64, got 120$"),
])
def test_layers_beyond_the_emulators_range_are_refused_at_bind(options, message):
    """What depends on the network (the sums' lengths, the bias) is checked when the backend is bound."""
    backend = create_backend("fixed", **options)
    with pytest.raises(ValueError, match=message):
        backend.bind(Network([Linear(2, 1, True)]))


def test_integer_master_rounds_updates_to_the_nearest_code_exactly():
    """Regression: update_rounding nearest formed v + 1/2, which rounds 0.49999999999999994 up to 1."""
    backend, _ = _identity_layer(8, 0, master="integer")
    theta = torch.tensor([0.49999999999999994], dtype=torch.float64)
    backend.project_(theta)
    assert theta.tolist() == [0.0]
    for v, want in ((-0.5, 0.0), (2.5, 3.0), (-2.5000000000000004, -3.0)):
        theta = torch.tensor([v], dtype=torch.float64)
        backend.project_(theta)
        assert theta.tolist() == [want]


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


@given(st.floats(min_value=-2.0 ** 1000, max_value=2.0 ** 1000, allow_nan=False, allow_infinity=False),
       st.integers(2, 32), st.integers(-16, 16), st.sampled_from(["floor", "half_up", "half_even"]))
@settings(max_examples=300, deadline=None)
def test_wrap_is_the_low_bits_of_the_exact_rounded_value_for_any_magnitude(x, bits, frac, rounding):
    """Wrap mode keeps the low ``bits`` bits (two's complement) of the exactly rounded x * 2^F, also far
    beyond 2^63 (formats wider than 32 bits are refused, so no width loses bits in the emulation)."""
    from fractions import Fraction
    v = Fraction(x) * Fraction(2) ** frac
    exact = {"floor": math.floor(v), "half_up": math.floor(v + Fraction(1, 2)), "half_even": round(v)}[rounding]
    low = exact % (1 << bits)
    want = low - (1 << bits) if low >= 1 << (bits - 1) else low
    assert int(quantize(torch.tensor([x], dtype=torch.float64), bits, frac, rounding, "wrap")[0]) == want
