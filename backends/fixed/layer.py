"""One linear layer in fixed point, exactly as docs/fixed_point.md specifies: a TT-matrix layer is
contracted core by core (core 0 first), requantizing after every core step; a dense layer is the
one-core case. Vectorised over any leading (query) axes; the emulator's hot path.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from hwsim.backends.fixed.numerics import (Format, _check_modes, accumulator_bits, exact_dtype,
                                           requantize_exact)

BIAS_BITS = 32


@dataclass(frozen=True)
class Step:
    """One core step: a sum of ``terms`` products of (in_fmt code) x (weight code), requantized by
    ``shift`` into ``out_fmt``. ``acc_bits`` is the full accumulator width; ``dtype`` the torch type
    that computes it exactly."""

    terms: int
    in_fmt: Format
    out_fmt: Format
    shift: int
    acc_bits: int
    dtype: torch.dtype


@dataclass(frozen=True)
class LayerSpec:
    """Numerics of one linear layer: formats per role, rounding and overflow modes.

    input: the layer's input x; weight: every TT core (or the dense weight); intermediate: the result
    of every core step but the last; output: the layer's output. Bias codes are ``bias_bits`` wide at
    the scale of the last step's accumulator, F_bias = F_in(last step) + F_weight.
    """

    input: Format
    weight: Format
    intermediate: Format
    output: Format
    bias_bits: int = BIAS_BITS
    rounding: str = "half_up"
    overflow: str = "saturate"

    def __post_init__(self):
        _check_modes(self.rounding, self.overflow)
        if not 2 <= self.bias_bits <= 64:
            raise ValueError(f"bias_bits must be in 2..64, got {self.bias_bits}")

    def steps(self, core_shapes: Sequence[tuple[int, int, int, int]], bias: bool) -> list[Step]:
        """The core steps for cores of shapes (r, n, m, r'); step k sums r * n products."""
        out, fmt = [], self.input
        for k, (r, n, _, _) in enumerate(core_shapes):
            last = k == len(core_shapes) - 1
            target = self.output if last else self.intermediate
            shift = fmt.frac_bits + self.weight.frac_bits - target.frac_bits
            extra = self.bias_bits if last and bias else 0
            acc = accumulator_bits(fmt.bits, self.weight.bits, r * n, extra)
            out.append(Step(r * n, fmt, target, shift, acc, exact_dtype(acc, shift)))
            fmt = target
        return out

    def bias_format(self, core_shapes: Sequence[tuple[int, int, int, int]]) -> Format:
        last_in = self.input if len(core_shapes) == 1 else self.intermediate
        return Format(self.bias_bits, last_in.frac_bits + self.weight.frac_bits)


def dense_as_core(weight: torch.Tensor) -> torch.Tensor:
    """A dense weight (..., out, in) as the single TT core (..., 1, in, out, 1) it is."""
    return weight.transpose(-1, -2)[..., None, :, :, None]


def int_linear(cores: Sequence[torch.Tensor], x: torch.Tensor, spec: LayerSpec,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = requant(W x + b) in the integer spec; every operand is given as integer codes.

    cores: K code tensors (r, n, m, r') or (Q, r, n, m, r'); x: input codes (B, P) or (Q, B, P); bias:
    codes (M,) or (Q, M) in ``spec.bias_format``. Returns int64 output codes (B, M), or (Q, B, M) when
    anything has a query axis.
    """
    return int_linear_steps(cores, x, spec, bias)[-1]


def int_linear_steps(cores: Sequence[torch.Tensor], x: torch.Tensor, spec: LayerSpec,
                     bias: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Like :func:`int_linear` but returns every core step's requantized result as int64 codes:
    step k < K-1 gives t_k (Q?, B, M_0..M_k, N_k+1..N_K-1, r_k+1) (outputs done, inputs left, rank);
    the last entry is the layer output (Q?, B, M)."""
    kept: list[torch.Tensor] = []
    contract(cores, x, spec, bias, on_step=lambda k, t, over: kept.append(t.to(torch.int64)))
    return kept


def contract(cores: Sequence[torch.Tensor], x: torch.Tensor, spec: LayerSpec,
             bias: torch.Tensor | None = None, on_step=None) -> torch.Tensor:
    """The contraction loop of :func:`int_linear`; the result stays in the last step's exact dtype.

    A core, input or bias whose leading query axis was made by ``expand`` (stride 0) counts as shared:
    the steps before the first batched core run once (the result keeps the query axis). ``on_step(k, t_k, overflows)`` sees every step's
    result in the canonical layout (q?, B, M_0..M_k, N_k+1..N_K-1, r_k+1), the last as (q?, B, M).
    Each step is one GEMM of the state (q?, B * D * Z, n_k * r_k) with the core reshaped to
    (q?, n_k * r_k, m_k * r_k+1), D counting the outputs done and Z the inputs left; one permutation
    per step restores that layout.
    """
    steps = spec.steps([tuple(g.shape[-4:]) for g in cores], bias is not None)
    queries = torch.broadcast_shapes(x.shape[:-2], *(g.shape[:-4] for g in cores),
                                     bias.shape[:-1] if bias is not None else ())
    x = _shared(x, 2)
    lead, rows, p = x.shape[:-2], *x.shape[-2:]
    done, rest = 1, p // cores[0].shape[-3]
    t = x.reshape(*lead, rows, -1, rest).transpose(-1, -2)     # (q?, B, Z, n_0): D = 1, r_0 = 1
    for k, (g, step) in enumerate(zip(cores, steps)):
        g = _shared(g, 4)
        r, n, m, s = g.shape[-4:]
        w = g.to(step.dtype).transpose(-4, -3).reshape(*g.shape[:-4], n * r, m * s)
        a = t.to(step.dtype).reshape(*lead, -1, n * r)
        if w.dim() == 3 and not lead:                      # shared state, batched core: one wide GEMM
            lead = w.shape[:1]
            y = (a @ w.permute(1, 0, 2).reshape(n * r, -1)).view(rows, done, rest, *lead, m, s)
            y = y.permute(3, 0, 1, 2, 4, 5)                # (Q, B, D, Z, m, s), a view
        else:
            lead = torch.broadcast_shapes(lead, w.shape[:-2])
            y = torch.matmul(a, w).view(*lead, rows, done, rest, m, s)
        if k == len(cores) - 1:
            y = y.reshape(*lead, rows, done * m)                             # Z = 1, s = 1
            if bias is not None:
                y = y + _shared(bias, 1).to(step.dtype).unsqueeze(-2)
        y, over = _requantize(y, step, spec)
        if k == len(cores) - 1:
            y = y.expand(*queries, *y.shape[-2:])              # all operands shared: still (Q, B, M)
            if on_step is not None:
                on_step(k, y, over)
            return y
        if on_step is not None:
            on_step(k, y.transpose(-3, -2).reshape(*lead, rows, done * m, rest, s), over)
        n_next = cores[k + 1].shape[-3]
        rest //= n_next
        y = y.reshape(*lead, rows, done, n_next, rest, m, s)                 # (q?, B, D, n', Z', m, s)
        t = y.permute(*range(len(lead)), *(len(lead) + d for d in (0, 1, 4, 3, 2, 5)))
        done *= m                                                            # t: (q?, B, D m, Z', n' s)


def _shared(t: torch.Tensor, core_dims: int) -> torch.Tensor:
    """Drop a leading axis made by expand (stride 0): the same tensor for every query."""
    return t[0] if t.dim() > core_dims and t.stride(0) == 0 else t


def _requantize(y: torch.Tensor, step: Step, spec: LayerSpec) -> tuple[torch.Tensor, int]:
    """Requantize an exact accumulator of ``step`` (in place for float accumulators)."""
    if not y.dtype.is_floating_point:
        return requantize_exact(y, step.shift, step.out_fmt, spec.rounding, spec.overflow)
    if step.shift:
        y.mul_(2.0 ** -step.shift)                          # exact: a power of two
    if step.shift > 0:
        if spec.rounding == "half_up":
            y.add_(0.5).floor_()
        elif spec.rounding == "floor":
            y.floor_()
        else:
            y.round_()                                      # half to even
    return requantize_exact(y, 0, step.out_fmt, spec.rounding, spec.overflow)


def macs(core_shapes: Sequence[tuple[int, int, int, int]], rows: int) -> list[int]:
    """Multiply-accumulates of every core step for ``rows`` input rows (per query)."""
    out, done_out, rest_in = [], 1, math.prod(s[1] for s in core_shapes)
    for (r, n, m, s) in core_shapes:
        rest_in //= n
        out.append(rows * done_out * r * n * m * s * rest_in)
        done_out *= m
    return out
