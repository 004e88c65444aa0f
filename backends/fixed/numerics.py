"""Fixed-point numerics of docs/fixed_point.md: formats, float -> fixed quantization, requantization.

A format Q(W, F) is a W-bit signed two's-complement integer code c with value c * 2^-F; codes lie in
[-2^(W-1), 2^(W-1) - 1]. All functions take and return torch tensors of integer *codes* (int64 for the
public helpers). The emulator's fast path runs the same arithmetic on float tensors that hold exact
integers (``exact_dtype`` says when that is provably exact); ``requantize_exact`` serves both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ROUNDINGS = ("floor", "half_up", "half_even")
OVERFLOWS = ("saturate", "wrap")
MAX_BITS = 32                # data formats (and the bias); accumulators may use up to MAX_ACC_BITS
MAX_ACC_BITS = 64            # the int64 emulation; wider sums would need multi-word integers
MAX_FRAC = 64                # |F|: keeps every value c * 2^-F of a <= 24-bit code a normal float32
# Integers of magnitude <= 2^MANTISSA are exact in the float type; a sum whose every partial sum stays
# below that bound is computed exactly in any order (docs/fixed_point.md, section 9).
_MANTISSA = {torch.float32: 24, torch.float64: 53}


@dataclass(frozen=True)
class Format:
    """Q(bits, frac_bits): signed two's complement, value = code * 2^-frac_bits."""

    bits: int
    frac_bits: int

    def __post_init__(self):
        if not isinstance(self.bits, int) or not 2 <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be an integer in 2..{MAX_BITS}, got {self.bits!r}")
        if not isinstance(self.frac_bits, int) or abs(self.frac_bits) > MAX_FRAC:
            raise ValueError(f"frac_bits must be an integer in -{MAX_FRAC}..{MAX_FRAC}, got {self.frac_bits!r}")

    @property
    def lo(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def hi(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def lsb(self) -> float:
        """Value of one code step, 2^-F."""
        return 2.0 ** -self.frac_bits

    def __str__(self) -> str:
        return f"Q{self.bits}.{self.frac_bits}"


def _check_modes(rounding: str, overflow: str) -> None:
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    if overflow not in OVERFLOWS:
        raise ValueError(f"overflow must be one of {', '.join(OVERFLOWS)}, got {overflow!r}")


def quantize(x: torch.Tensor, bits: int, frac_bits: int, rounding: str = "half_up",
             overflow: str = "saturate") -> torch.Tensor:
    """Float values -> int64 codes of Q(bits, frac_bits), exact for every finite float.

    The scaled value v = x * 2^F (exact in float64) is rounded to an integer (floor: floor(v);
    half_up: floor(v + 1/2); half_even: nearest, ties to even) and brought into range by ``overflow``
    (saturate: clamp; wrap: modulo 2^bits, two's complement). Non-finite values raise ValueError.
    """
    fmt = Format(bits, frac_bits)
    _check_modes(rounding, overflow)
    return quantize_counted(torch.as_tensor(x), fmt, rounding, overflow)[0].to(torch.int64)


def quantize_counted(x: torch.Tensor, fmt: Format, rounding: str, overflow: str) -> tuple[torch.Tensor, int]:
    """:func:`quantize` of float values x (any shape): (codes as float64 integers, number of values whose
    rounded value lay outside the format, i.e. saturated or wrapped)."""
    x = x.to(torch.float64)
    if _on_host(x) and not bool(torch.isfinite(x).all()):   # a device keeps computing: the loop's guard stops it
        raise ValueError("quantize: input holds NaN or infinite values")
    v = _round_scaled(x, fmt.frac_bits, rounding)            # may be +-inf where x * 2^F exceeds float64
    outside = _outside(v, fmt.lo, -fmt.lo)
    if _none(outside):
        return v, 0
    if overflow == "saturate":
        return v.clamp_(fmt.lo, fmt.hi), outside
    # wrap: x mod 2^(W-F) first (fmod is exact) keeps the scaled value finite and below 2^W in magnitude,
    # where the float wrap is exact; rounding commutes with subtracting multiples of 2^W (W >= 2: even)
    v = _round_scaled(torch.fmod(x, 2.0 ** (fmt.bits - fmt.frac_bits)), fmt.frac_bits, rounding)
    return _wrap(v, fmt), outside


def grid_codes(x: torch.Tensor, fmt: Format, rounding: str, overflow: str) -> tuple[torch.Tensor, int]:
    """(codes of float values x in ``fmt`` as exact integers in a float tensor, number outside the range),
    the numbers of :func:`quantize_counted`. Values already on the grid and inside the range (activations,
    integer-master codes) skip the rounding and keep x's dtype."""
    scaled = x * 2.0 ** fmt.frac_bits                # exact (a power of two) unless it under- or overflows
    if (_on_host(x) and torch.equal(scaled, scaled.trunc()) and not _outside(scaled, fmt.lo, -fmt.lo)
            and (fmt.frac_bits >= 0 or torch.equal(scaled * 2.0 ** -fmt.frac_bits, x))):   # no underflow to 0
        return scaled, 0
    return quantize_counted(x, fmt, rounding, overflow)


def _round_scaled(x: torch.Tensor, frac_bits: int, rounding: str) -> torch.Tensor:
    """x * 2^frac_bits rounded to integers (float64 x): exact for every finite x."""
    scaled = x * 2.0 ** frac_bits         # exact unless subnormal, where only floor of a negative suffers
    v = round_half_up(scaled) if rounding == "half_up" else _round_float(scaled, rounding)
    if rounding == "floor":               # a negative value that underflowed to -0 floors to -1
        v = torch.where((v == 0) & (x < 0), -1.0, v)
    return v


def round_half_up(v: torch.Tensor) -> torch.Tensor:
    """floor(v + 1/2) of a float tensor without forming v + 1/2, which can round up (0.49999999999999994)."""
    f = torch.floor(v)
    return f + (v - f >= 0.5)                         # v - floor(v) is exact


def requantize(acc: torch.Tensor, shift: int, bits: int, rounding: str = "half_up",
               overflow: str = "saturate") -> torch.Tensor:
    """Integer accumulator (int64) -> int64 codes of a ``bits``-wide format, dividing by 2^shift.

    shift > 0: arithmetic right shift with the rounding mode (half_up adds 2^(shift-1) first);
    shift <= 0: exact left shift. Then ``overflow`` brings the result into [-2^(bits-1), 2^(bits-1)-1].
    Exact for every int64 value and every shift.
    """
    _check_modes(rounding, overflow)
    acc = torch.as_tensor(acc)
    if acc.dtype.is_floating_point or acc.dtype == torch.bool:
        raise TypeError(f"requantize needs an integer tensor, got {acc.dtype}")
    return requantize_exact(acc.to(torch.int64), shift, Format(bits, 0), rounding, overflow)[0]


def requantize_exact(acc: torch.Tensor, shift: int, fmt: Format, rounding: str, overflow: str,
                     inplace: bool = False) -> tuple[torch.Tensor, int]:
    """``requantize`` for int64 tensors or float tensors holding exact integers (result in acc's dtype).

    int64: any values and any shift. Float: integers that stay exact through the scaling, rounding and
    wrap, |acc| * 2^-shift <= 2^(mantissa-1) and |acc| + 2^(shift-1) <= 2^mantissa (the emulator
    guarantees it through ``exact_dtype``). Returns (codes, number of values that overflowed);
    ``inplace`` lets a saturation overwrite acc.
    """
    if acc.dtype.is_floating_point:
        v = acc * (2.0 ** -shift) if shift else acc             # exact: a power-of-two scaling
        v = _round_float(v, rounding) if shift > 0 else v
    elif shift < 0:
        return _shift_left(acc, -shift, fmt, overflow)
    else:
        v = _shift_right(acc, shift, rounding)
    outside = _outside(v, fmt.lo, -fmt.lo)
    if _none(outside):
        return v, 0
    if overflow == "saturate":
        return (v.clamp_(fmt.lo, fmt.hi) if inplace or v is not acc else v.clamp(fmt.lo, fmt.hi)), outside
    return _wrap(v, fmt), outside


def _on_host(t: torch.Tensor) -> bool:
    """Whether t is on the CPU, where reading a value back costs nothing: the shortcuts that branch on data
    (nothing to round, nothing out of range) run there only. On a device every value takes the full path,
    which gives the same codes (rounding an integer and clamping an in-range value change nothing)."""
    return t.device.type == "cpu"


def _none(count: "int | torch.Tensor") -> bool:
    """Whether an :func:`_outside` count is known, without a host read, to be zero."""
    return isinstance(count, int) and count == 0


def _outside(v: torch.Tensor, lo: int, end: int) -> "int | torch.Tensor":
    """How many integers of v lie outside [lo, end). The codes of a format are [-2^(W-1), 2^(W-1)): powers
    of two, exact in every dtype (2^(W-1) - 1 is no float32 beyond W = 25). One min/max pass if none do.
    Off the host: the count as a 0-dim tensor left on the device (Backend.count takes it as it is)."""
    if not v.numel():
        return 0
    if not _on_host(v):
        return torch.count_nonzero((v < lo) | (v >= end))
    vmin, vmax = torch.aminmax(v)
    below, above = bool(vmin < lo), bool(vmax >= end)
    # one comparison pass per side that is crossed (a saturating layer usually crosses one side only)
    return (int(torch.count_nonzero(v < lo)) if below else 0) + (int(torch.count_nonzero(v >= end)) if above else 0)


def _round_float(v: torch.Tensor, rounding: str) -> torch.Tensor:
    """Round to integers (same dtype); exact when v + 1/2 is representable (half_up adds it)."""
    if rounding == "floor":
        return torch.floor(v)
    if rounding == "half_up":
        return torch.floor(v + 0.5)
    return torch.round(v)                                     # round half to even


def _shift_right(acc: torch.Tensor, shift: int, rounding: str) -> torch.Tensor:
    """acc / 2^shift rounded by ``rounding`` (int64 in and out, shift >= 0), without int64 overflow.

    The rounding reads the dropped bits instead of adding 2^(shift-1) (which overflows near 2^63):
    half_up adds the first dropped bit; half_even adds it when a lower dropped bit is set or the kept
    part is odd. Shifts beyond 63 are clamped: an int64 shifted right by 63 is its sign (0 or -1), and
    sign extension makes every higher bit the sign bit too.
    """
    if shift == 0:
        return acc
    q = acc >> min(shift, 63)                                 # arithmetic shift = floor division
    if rounding == "floor":
        return q
    first = (acc >> min(shift - 1, 63)) & 1                   # remainder >= 2^(shift-1)
    if rounding == "half_up":
        return q + first
    # the dropped bits below the first (past 64, all of acc's, by sign extension): set = above a tie
    below = acc & ((1 << (shift - 1)) - 1 if shift <= 64 else -1)
    return q + (first & ((below != 0) | (q & 1).bool()))


def _shift_left(acc: torch.Tensor, shift: int, fmt: Format, overflow: str) -> tuple[torch.Tensor, int]:
    """acc * 2^shift (int64, shift > 0) brought into ``fmt`` by ``overflow``: (codes, number outside).

    The product may exceed int64, so the range check compares acc with the range divided by 2^shift."""
    top = 1 << (fmt.bits - 1)
    lo, hi = -(top >> shift), (top - 1) >> shift             # acc * 2^shift is a code iff lo <= acc <= hi
    outside = _outside(acc, lo, hi + 1)
    if overflow == "wrap":          # int64 shifts keep the low 64 bits, of which a wrap keeps the W <= 32 lowest
        return _wrap(acc << min(shift, 63), fmt), outside
    # one step beyond the bounds still lands beyond the range after the shift (and within int64)
    return (acc.clamp(lo - 1, hi + 1) << min(shift, 62)).clamp_(fmt.lo, fmt.hi), outside


def _wrap(v: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Two's-complement wrap into ``fmt``: the low W bits of the integers v, sign-extended. Exact for int64
    of any value (bit operations cannot overflow) and for floats holding integers below 2^(mantissa-1)."""
    if v.dtype.is_floating_point:
        return torch.remainder(v - fmt.lo, float(1 << fmt.bits)) + fmt.lo
    top = 1 << (fmt.bits - 1)
    return ((v & ((1 << fmt.bits) - 1)) ^ top) - top


def accumulator_bits(a_bits: int, b_bits: int, terms: int, extra_bits: int = 0) -> int:
    """Width of a signed accumulator that holds any sum of ``terms`` products of an a_bits-wide and a
    b_bits-wide code, plus (if extra_bits > 0) one more addend of extra_bits width, without overflow:

        W_acc = max(a_bits + b_bits, extra_bits) + ceil(log2(terms + [extra_bits > 0]))
    """
    n = terms + (1 if extra_bits > 0 else 0)
    return max(a_bits + b_bits, extra_bits) + math.ceil(math.log2(n)) if n > 1 else max(a_bits + b_bits, extra_bits)


def exact_dtype(acc_bits: int, shift: int) -> torch.dtype:
    """Cheapest torch dtype in which a sum with accumulator width ``acc_bits`` followed by a requantize
    by ``shift`` is computed exactly: float32 (BLAS), float64 (BLAS) or int64 (any shift, see
    ``requantize_exact``); ValueError beyond MAX_ACC_BITS."""
    # |acc| <= 2^(W_acc - 1); a left shift scales that up; half_up adds 2^(shift - 1) before its floor
    need = max(acc_bits + max(0, -shift), shift)
    for dtype in (torch.float32, torch.float64):
        if need <= _MANTISSA[dtype]:
            return dtype
    if acc_bits > MAX_ACC_BITS:
        raise ValueError(f"an accumulator of {acc_bits} bits exceeds the {MAX_ACC_BITS}-bit integer emulation")
    return torch.int64


def code_dtype(bits: int) -> torch.dtype:
    """The float type that holds every code of a ``bits``-wide format exactly."""
    return torch.float32 if bits <= _MANTISSA[torch.float32] else torch.float64
