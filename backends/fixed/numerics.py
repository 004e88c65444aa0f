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
MAX_BITS = 32                # data formats; accumulators may use up to 64 bits (int64 emulation)
# Integers of magnitude <= 2^MANTISSA are exact in the float type; a sum whose every partial sum stays
# below that bound is computed exactly in any order (see docs/fixed_point.md, "Exact float emulation").
_MANTISSA = {torch.float32: 24, torch.float64: 53}


@dataclass(frozen=True)
class Format:
    """Q(bits, frac_bits): signed two's complement, value = code * 2^-frac_bits."""

    bits: int
    frac_bits: int

    def __post_init__(self):
        if not isinstance(self.bits, int) or not 2 <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be an integer in 2..{MAX_BITS}, got {self.bits!r}")
        if not isinstance(self.frac_bits, int) or abs(self.frac_bits) > 64:
            raise ValueError(f"frac_bits must be an integer in -64..64, got {self.frac_bits!r}")

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
    """Float values -> int64 codes of Q(bits, frac_bits).

    The scaled value v = x * 2^F (exact in float64) is rounded to an integer (floor: floor(v);
    half_up: floor(v + 1/2); half_even: nearest, ties to even) and brought into range by ``overflow``
    (saturate: clamp; wrap: modulo 2^bits, two's complement). Non-finite values raise ValueError.
    """
    fmt = Format(bits, frac_bits)
    _check_modes(rounding, overflow)
    x = torch.as_tensor(x).to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("quantize: input holds NaN or infinite values")
    if overflow == "wrap":               # x mod 2^(W-F) first (exact), so the scaled value cannot overflow
        x = torch.fmod(x, 2.0 ** (bits - frac_bits))
    scaled = x * 2.0 ** frac_bits         # exact unless subnormal, where only floor of a negative suffers
    if rounding == "half_up":             # floor(v + 1/2) without forming v + 1/2 (that can round up)
        v = torch.floor(scaled)
        v = v + (scaled - v >= 0.5)
    else:
        v = _round_float(scaled, rounding)
    if rounding == "floor":
        v = torch.where((v == 0) & (x < 0), -1.0, v)
    if overflow == "saturate":
        return v.clamp(fmt.lo, fmt.hi).to(torch.int64)
    return _overflow(v.to(torch.int64), fmt, overflow)


def requantize(acc: torch.Tensor, shift: int, bits: int, rounding: str = "half_up",
               overflow: str = "saturate") -> torch.Tensor:
    """Integer accumulator (int64) -> int64 codes of a ``bits``-wide format, dividing by 2^shift.

    shift > 0: arithmetic right shift with the rounding mode (half_up adds 2^(shift-1) first);
    shift <= 0: exact left shift. Then ``overflow`` brings the result into [-2^(bits-1), 2^(bits-1)-1].
    """
    _check_modes(rounding, overflow)
    acc = torch.as_tensor(acc)
    if acc.dtype.is_floating_point or acc.dtype == torch.bool:
        raise TypeError(f"requantize needs an integer tensor, got {acc.dtype}")
    return requantize_exact(acc.to(torch.int64), shift, Format(bits, 0), rounding, overflow)[0]


def requantize_exact(acc: torch.Tensor, shift: int, fmt: Format, rounding: str, overflow: str,
                     inplace: bool = False) -> tuple[torch.Tensor, int]:
    """``requantize`` for int64 tensors or float tensors holding exact integers (result in acc's dtype).

    Float inputs must satisfy |acc| < 2^mantissa and |acc| + 2^(shift-1) <= 2^mantissa (the emulator
    guarantees it through ``exact_dtype``). Returns (codes, number of values that overflowed);
    ``inplace`` lets a saturation overwrite acc.
    """
    if acc.dtype.is_floating_point:
        v = acc * (2.0 ** -shift) if shift else acc             # exact: a power-of-two scaling
        v = _round_float(v, rounding) if shift > 0 else v
    else:
        v = _shift_int(acc, shift, rounding)
    lo, hi = torch.aminmax(v) if v.numel() else (v.new_zeros(()), v.new_zeros(()))
    if lo >= fmt.lo and hi <= fmt.hi:
        return v, 0
    outside = (int(torch.count_nonzero(v < fmt.lo)) if lo < fmt.lo else 0) + \
        (int(torch.count_nonzero(v > fmt.hi)) if hi > fmt.hi else 0)
    if overflow == "saturate":
        return (v.clamp_(fmt.lo, fmt.hi) if inplace or v is not acc else v.clamp(fmt.lo, fmt.hi)), outside
    if v.dtype.is_floating_point:
        return torch.remainder(v - fmt.lo, float(1 << fmt.bits)) + fmt.lo, outside
    return _overflow(v, fmt, overflow), outside


def _round_float(v: torch.Tensor, rounding: str) -> torch.Tensor:
    """Round to integers (same dtype); exact when v + 1/2 is representable (half_up adds it)."""
    if rounding == "floor":
        return torch.floor(v)
    if rounding == "half_up":
        return torch.floor(v + 0.5)
    return torch.round(v)                                     # round half to even


def _shift_int(acc: torch.Tensor, shift: int, rounding: str) -> torch.Tensor:
    """acc / 2^shift rounded by ``rounding`` (integer tensor in and out)."""
    if shift <= 0:
        return acc * (1 << -shift)
    q = acc >> shift                                          # arithmetic shift = floor division
    if rounding == "floor":
        return q
    if rounding == "half_up":
        return (acc + (1 << (shift - 1))) >> shift
    r = acc - (q << shift)                                    # remainder in [0, 2^shift)
    half = 1 << (shift - 1)
    return q + ((r > half) | ((r == half) & (q & 1).bool())).to(acc.dtype)


def _overflow(v: torch.Tensor, fmt: Format, overflow: str) -> torch.Tensor:
    """Integer values -> codes in range (saturate: clamp; wrap: two's complement modulo 2^bits)."""
    if overflow == "saturate":
        return v.clamp(fmt.lo, fmt.hi)
    mask = (1 << fmt.bits) - 1
    return ((v - fmt.lo) & mask) + fmt.lo


def accumulator_bits(a_bits: int, b_bits: int, terms: int, extra_bits: int = 0) -> int:
    """Width of a signed accumulator that holds any sum of ``terms`` products of an a_bits-wide and a
    b_bits-wide code, plus (if extra_bits > 0) one more addend of extra_bits width, without overflow:

        W_acc = max(a_bits + b_bits, extra_bits) + ceil(log2(terms + [extra_bits > 0]))
    """
    n = terms + (1 if extra_bits > 0 else 0)
    return max(a_bits + b_bits, extra_bits) + math.ceil(math.log2(n)) if n > 1 else max(a_bits + b_bits, extra_bits)


def exact_dtype(acc_bits: int, shift: int) -> torch.dtype:
    """Cheapest torch dtype in which a sum with accumulator width ``acc_bits`` followed by a requantize
    by ``shift`` is computed exactly: float32 (BLAS), float64 (BLAS) or int64."""
    # |acc| <= 2^(W_acc - 1); a left shift scales that up; half_up adds 2^(shift - 1) before its floor
    need = max(acc_bits + max(0, -shift), shift)
    for dtype in (torch.float32, torch.float64):
        if need <= _MANTISSA[dtype]:
            return dtype
    if acc_bits > 64:
        raise ValueError(f"an accumulator of {acc_bits} bits exceeds the 64-bit integer emulation")
    return torch.int64


def code_dtype(bits: int) -> torch.dtype:
    """The float type that holds every code of a ``bits``-wide format exactly."""
    return torch.float32 if bits <= _MANTISSA[torch.float32] else torch.float64
