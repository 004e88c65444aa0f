"""A slow pure-Python reading of docs/fixed_point.md, used as the oracle for the fixed backend.

Python ints and Fractions only: no torch arithmetic, no floats after the input conversion.
"""
from __future__ import annotations

import math
from fractions import Fraction
from itertools import product


def round_fraction(v: Fraction, rounding: str) -> int:
    """Round an exact rational to an integer: floor, half_up (floor(v + 1/2)) or half_even."""
    f = math.floor(v)
    if rounding == "floor":
        return f
    if rounding == "half_up":
        return math.floor(v + Fraction(1, 2))
    rem = v - f
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and f % 2 == 1):
        return f + 1
    return f


def outside(v: int, bits: int) -> bool:
    """Whether an integer lies outside the codes of a bits-wide format (an overflow, counted)."""
    return not -(1 << (bits - 1)) <= v < 1 << (bits - 1)


def fit(v: int, bits: int, overflow: str) -> int:
    """Bring an integer into [-2^(bits-1), 2^(bits-1) - 1] by saturation or two's-complement wrap."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if overflow == "saturate":
        return min(hi, max(lo, v))
    return (v - lo) % (1 << bits) + lo


def scaled(x: float, frac_bits: int, rounding: str) -> int:
    """x * 2^frac_bits rounded, before the overflow mode (section 3, steps 1-2)."""
    return round_fraction(Fraction(x) * Fraction(2) ** frac_bits, rounding)


def shifted(acc: int, shift: int, rounding: str) -> int:
    """acc / 2^shift rounded, before the overflow mode (section 4.5, step 1)."""
    return round_fraction(Fraction(acc, 1) / Fraction(2) ** shift, rounding)


def quantize(x: float, bits: int, frac_bits: int, rounding: str, overflow: str) -> int:
    return fit(scaled(x, frac_bits, rounding), bits, overflow)


def requantize(acc: int, shift: int, bits: int, rounding: str, overflow: str) -> int:
    return fit(shifted(acc, shift, rounding), bits, overflow)


def tt_linear(cores, x, bias, fmts, rounding, overflow):
    """cores: nested lists G[k][a][j][i][c] of codes; x: list over batch of lists of P codes; bias: list of
    M codes or None; fmts: dict with 'input', 'weight', 'intermediate', 'output' as (bits, frac_bits), the intermediate
    one also as a list of K - 1 of them (one per core step).
    Returns the list of step results as dicts {(b, outs, c, ins): code}, the final y[b][o] and the number of
    overflows of every step."""
    K = len(cores)
    n = [len(g[0]) for g in cores]
    m = [len(g[0][0]) for g in cores]
    ranks = [len(g) for g in cores] + [1]
    # state: {(b, outs tuple, a, ins tuple): code}
    state = {}
    for b, row in enumerate(x):
        for flat, code in enumerate(row):
            ins, rem = [], flat
            for nk in reversed(n):
                ins.append(rem % nk)
                rem //= nk
            state[(b, (), 0, tuple(reversed(ins)))] = code
    fin = fmts["input"]
    traces, overflows = [], []
    for k, g in enumerate(cores):
        last = k == K - 1
        mid = fmts["intermediate"]
        target = fmts["output"] if last else (mid[k] if isinstance(mid, list) else mid)
        shift = fin[1] + fmts["weight"][1] - target[1]
        new, over = {}, 0
        for b in range(len(x)):
            outs_done = list(product(*[range(mm) for mm in m[:k]]))
            ins_left = list(product(*[range(nn) for nn in n[k + 1:]]))
            for outs, ins, i, c in product(outs_done, ins_left, range(m[k]), range(ranks[k + 1])):
                acc = sum(state[(b, outs, a, (j,) + ins)] * g[a][j][i][c]
                          for a in range(ranks[k]) for j in range(n[k]))
                o = outs + (i,)
                if last and bias is not None:
                    flat = 0
                    for mm, ii in zip(m, o):
                        flat = flat * mm + ii
                    acc += bias[flat]
                v = shifted(acc, shift, rounding)
                over += outside(v, target[0])
                new[(b, o, c, ins)] = fit(v, target[0], overflow)
        state, fin = new, target
        traces.append(new)
        overflows.append(over)
    y = [[0] * math.prod(m) for _ in x]
    for (b, outs, _, _), code in state.items():
        flat = 0
        for mm, ii in zip(m, outs):
            flat = flat * mm + ii
        y[b][flat] = code
    return traces, y, overflows
