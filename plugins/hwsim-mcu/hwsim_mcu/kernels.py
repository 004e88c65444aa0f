"""Integer kernels of a Cortex-M class core in the style of CMSIS-NN, computed really in integers.

Every value is an integer held in a torch int64 tensor (bit-exact and deterministic on any machine):
int8 x int8 products are accumulated in int32 (plus an int32 bias), and each accumulator is requantised
to int8 the way CMSIS-NN's ``arm_nn_requantize`` does it (L. Lai, N. Suda, V. Chandra, "CMSIS-NN:
Efficient Neural Network Kernels for Arm Cortex-M CPUs", arXiv:1801.06601), which is the integer-only
scheme of gemmlowp / TensorFlow Lite Micro (B. Jacob et al., "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference", CVPR 2018, arXiv:1712.05877):

- a real multiplier M = s_in * s_w / s_out > 0 is held as a Q31 integer q in [2^30, 2^31) and a shift
  e with M ~= q * 2^(e - 31) (:func:`quantize_multiplier`);
- acc * 2^max(e, 0) (saturated to int32 here; C would overflow) times q: the *saturating rounding
  doubling high multiply* SRDHM(a, q) = (a q + nudge) / 2^31, truncated toward zero, nudge = 2^30 for
  a q >= 0 else 1 - 2^30. For 64-bit integers this equals floor((a q + 2^30) / 2^31) for either sign
  (round half up), which is how :func:`requantize` computes it with an arithmetic shift;
- a *rounding divide by a power of two* by 2^max(-e, 0): floor division plus one where the remainder
  exceeds 2^(R-1) - 1 (for negative values: 2^(R-1)), i.e. round half away from zero;
- then saturation to [-128, 127] (:func:`saturate_int8`).

Bound (tests/test_kernels.py checks it): with t = acc * M exactly, the two roundings each err by at most
1/2 of their unit and the Q31 multiplier by a relative 2^-31, so |y - t| <= 1/2 + 2^-(R+1) + |t| 2^-31
(R = max(-e, 0); for R = 0 the second rounding is exact), and for |t| < 2^30 the requantised integer y
differs from round(t) by at most 1 (both are integers within less than 2 of each other).

The code is written from the published description of the scheme, not copied from either library.

The int8 x int8 sums are computed by a float64 GEMM when that is exact: every product and partial sum is
an integer of magnitude at most 2^14 T for T terms, and float64 represents every integer up to 2^53, so
for T <= 2^39 the float64 result *is* the integer sum, whatever the order of summation (10-50x faster
than torch's int64 kernels); otherwise the sums run in int64.

A TT layer (hwsim.model.TTLinear) runs core step by core step exactly as hwsim.tt.contract schedules it:
each step is an int8 x int8 -> int32 contraction requantised to int8 with its own multiplier; a dense layer
(hwsim.model.Linear) is one step. ReLU is max(code, 0) on int8 codes.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def quantize_multiplier(m: float) -> tuple[int, int]:
    """(q, e): the Q31 multiplier q in [2^30, 2^31) and the shift e (> 0: left) with m ~= q 2^(e - 31).

    m = frac * 2^e with frac in [0.5, 1) (frexp); q = round(frac 2^31) (half away from zero; the product is
    exact in a double), and q = 2^31 becomes 2^30 with e + 1. m = 0, or m below 2^-32 (e < -31), gives
    (0, 0): every accumulator requantises to 0. ValueError for a negative or non-finite m, or m >= 2^30."""
    if not math.isfinite(m) or m < 0:
        raise ValueError(f"requantisation multiplier must be a finite number >= 0, got {m!r}")
    if m == 0:
        return 0, 0
    frac, e = math.frexp(m)
    q = math.floor(frac * (1 << 31) + 0.5)
    if q == 1 << 31:
        q, e = q // 2, e + 1
    if e < -31:
        return 0, 0
    if e > 30:
        raise ValueError(f"requantisation multiplier {m!r} is too large for a Q31 multiplier and shift")
    return q, e


def wrap_int32(acc: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Accumulators as the int32 register holds them (two's-complement wrap-around), and how many wrapped."""
    lo, hi = torch.aminmax(acc)
    if lo >= INT32_MIN and hi <= INT32_MAX:
        return acc, 0
    wrapped = ((acc - INT32_MIN) & 0xFFFFFFFF) + INT32_MIN
    return wrapped, int((wrapped != acc).sum())


def requantize(acc: torch.Tensor, multiplier: int, shift: int) -> torch.Tensor:
    """arm_nn_requantize: int32 accumulators (int64 tensor) -> round(acc * M) as described in the module
    doc (a new int64 tensor, not yet saturated to int8).

    The rounding divide is computed as sign(h) floor((|h| + 2^(R-1)) / 2^R), which equals gemmlowp's
    floor(h / 2^R) + [remainder > threshold] for every integer h (remainder = h mod 2^R, threshold =
    2^(R-1) - 1 + [h < 0]); tests/test_kernels.py compares both forms bit for bit."""
    left, right = max(shift, 0), max(-shift, 0)
    x = acc.to(torch.int64).contiguous()
    if left:
        x = (x * (1 << left)).clamp_(INT32_MIN, INT32_MAX)
    hi = x * multiplier                                  # SRDHM: |x q| < 2^62, no int64 overflow
    hi += 1 << 30
    hi >>= 31
    if right:
        negative = hi < 0
        hi.abs_()
        hi += 1 << (right - 1)
        hi >>= right
        hi = torch.where(negative, -hi, hi)
    return hi


def saturate_int8(y: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Clamp to [-128, 127]; (codes, how many were clamped)."""
    lo, hi = torch.aminmax(y)
    if lo >= INT8_MIN and hi <= INT8_MAX:
        return y, 0
    clipped = int(((y < INT8_MIN) | (y > INT8_MAX)).sum())
    return y.clamp(INT8_MIN, INT8_MAX), clipped


def relu_s8(x: torch.Tensor) -> torch.Tensor:
    """ReLU on int8 codes (zero point 0): max(code, 0)."""
    return x.clamp_min(0)


EXACT_TERMS = 1 << 39                             # 2^14 T <= 2^53: float64 sums of int8 products are exact


def _int_contract(equation: str, a: torch.Tensor, b: torch.Tensor, terms: int) -> torch.Tensor:
    """einsum of integer tensors with exact integer results (int64): float64 while exact, else int64."""
    if terms <= EXACT_TERMS:
        return torch.einsum(equation, a.to(torch.float64), b.to(torch.float64)).to(torch.int64)
    return torch.einsum(equation, a.to(torch.int64), b.to(torch.int64))


def linear_s8(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              multiplier: int, shift: int) -> tuple[torch.Tensor, dict[str, int]]:
    """A dense layer on codes: x (..., B, in) int8 codes, weight (..., out, in) int8 codes, bias (..., out)
    int32 codes at scale s_in s_w, or None. Returns int8 codes (..., B, out) as int64 and the event counts
    {"wrapped": accumulators that overflowed int32, "saturated": outputs clamped to int8}."""
    acc = _int_contract("...bi,...oi->...bo", x, weight, x.shape[-1])
    if bias is not None:
        acc = acc + bias.to(torch.int64).unsqueeze(-2)
    acc, wrapped = wrap_int32(acc)
    y, saturated = saturate_int8(requantize(acc, multiplier, shift))
    return y, {"wrapped": wrapped, "saturated": saturated}


def tt_linear_s8(x: torch.Tensor, cores: Sequence[torch.Tensor], bias: torch.Tensor | None,
                 steps: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, dict[str, int]]:
    """A TT-matrix layer on codes, core step by core step (the schedule of hwsim.tt.contract).

    x: (..., B, P) int8 codes; cores: K int8 code tensors (..., r, n, m, r'); bias: (..., M) int32 codes at
    the scale of the last step's accumulator (s_in of the last step x s_w of the last core), or None;
    steps: K (multiplier, shift) pairs, one per core step. Every step is an int8 x int8 -> int32 contraction
    over (r, n), requantised and saturated to int8. Leading axes broadcast. Returns int8 codes (..., B, M)
    as int64 and the event counts {"wrapped", "saturated"} summed over the steps."""
    if len(steps) != len(cores):
        raise ValueError(f"{len(steps)} requantisation steps given for {len(cores)} cores")
    *lead, rows, p = x.shape
    rest = p
    t = x.to(torch.int64).reshape(*lead, rows, 1, 1, p)             # (..., B, done, r, rest)
    counts = {"wrapped": 0, "saturated": 0}
    for k, (g, (multiplier, shift)) in enumerate(zip(cores, steps)):
        n = g.shape[-3]
        rest //= n
        t = t.reshape(*t.shape[:-1], n, rest)                       # (..., B, done, r, n, rest)
        acc = _int_contract("...bdrnz,...rnms->...bdmsz", t, g, g.shape[-4] * n)
        *lt, b, d, m, s, z = acc.shape
        acc = acc.reshape(*lt, b, d * m, s, z)
        if k == len(cores) - 1 and bias is not None:
            acc = acc + bias.to(torch.int64)[..., None, :, None, None]
        acc, wrapped = wrap_int32(acc)
        t, saturated = saturate_int8(requantize(acc, multiplier, shift))
        counts["wrapped"] += wrapped
        counts["saturated"] += saturated
    return t[..., 0, 0], counts
