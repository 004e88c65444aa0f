"""One linear layer in fixed point, exactly as docs/fixed_point.md specifies: a TT-matrix layer is
contracted core by core (core 0 first), requantizing after every core step; a dense layer is the
one-core case. Vectorised over any leading (query) axes; the emulator's hot path.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from hwsim.backends.fixed.numerics import (MAX_BITS, Format, _check_modes, accumulator_bits, exact_dtype,
                                           requantize_exact)
from hwsim.tt import step_outputs as requantized      # every value a core step produces is requantized

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
    of every core step but the last, one format for all of them or a tuple with one per step (K - 1
    for K cores); output: the layer's output. Bias codes are ``bias_bits`` wide at the scale of the
    last step's accumulator, F_bias = F_in(last step) + F_weight.
    """

    input: Format
    weight: Format
    intermediate: Format | tuple[Format, ...]
    output: Format
    bias_bits: int = BIAS_BITS
    rounding: str = "half_up"
    overflow: str = "saturate"

    def __post_init__(self):
        _check_modes(self.rounding, self.overflow)
        if not 2 <= self.bias_bits <= MAX_BITS:
            raise ValueError(f"bias_bits must be in 2..{MAX_BITS}, got {self.bias_bits}")
        if isinstance(self.intermediate, list):
            object.__setattr__(self, "intermediate", tuple(self.intermediate))

    def intermediates(self, cores: int) -> list[Format]:
        """The format of every core step's result but the last, for a layer of ``cores`` cores."""
        if isinstance(self.intermediate, Format):
            return [self.intermediate] * (cores - 1)
        if len(self.intermediate) != cores - 1:
            raise ValueError(f"{len(self.intermediate)} intermediate formats given for {cores} cores; "
                             f"a layer of {cores} cores has {cores - 1} intermediate results")
        return list(self.intermediate)

    def steps(self, core_shapes: Sequence[tuple[int, int, int, int]], bias: bool) -> list[Step]:
        """The core steps for cores of shapes (r, n, m, r'); step k sums r * n products. ValueError, naming
        the step and its formats, where an accumulator is too wide to emulate or the bias format is invalid."""
        if bias:
            self.bias_format(core_shapes)
        out, fmt = [], self.input
        targets = self.intermediates(len(core_shapes)) + [self.output]
        for k, ((r, n, _, _), target) in enumerate(zip(core_shapes, targets)):
            last = k == len(core_shapes) - 1
            shift = fmt.frac_bits + self.weight.frac_bits - target.frac_bits
            extra = self.bias_bits if last and bias else 0
            acc = accumulator_bits(fmt.bits, self.weight.bits, r * n, extra)
            try:
                dtype = exact_dtype(acc, shift)
            except ValueError as e:
                raise ValueError(f"core step {k} (T = {r * n} products of {fmt} x {self.weight} codes"
                                 + (f", plus a {extra}-bit bias" if extra else "")
                                 + f"): {e}; narrow these formats (docs/fixed_point.md, section 4.4)") from None
            out.append(Step(r * n, fmt, target, shift, acc, dtype))
            fmt = target
        return out

    def bias_format(self, core_shapes: Sequence[tuple[int, int, int, int]]) -> Format:
        """Q(bias_bits, F_in(last step) + F_weight); ValueError when that F is outside the formats' range."""
        last_in = ([self.input] + self.intermediates(len(core_shapes)))[-1]
        try:
            return Format(self.bias_bits, last_in.frac_bits + self.weight.frac_bits)
        except ValueError as e:
            raise ValueError(f"the bias format takes F_in + F_weight = {last_in.frac_bits} + "
                             f"{self.weight.frac_bits} fraction bits of the last core step: {e}") from None


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
    return contract(cores, x, spec, bias)[0].to(torch.int64)


def int_linear_steps(cores: Sequence[torch.Tensor], x: torch.Tensor, spec: LayerSpec,
                     bias: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Like :func:`int_linear` but returns every core step's requantized result as int64 codes:
    step k < K-1 gives t_k (Q?, B, M_0..M_k, N_k+1..N_K-1, r_k+1) (outputs done, inputs left, rank);
    the last entry is the layer output (Q?, B, M)."""
    kept: list[torch.Tensor] = []
    contract(cores, x, spec, bias, trace=kept)
    return [t.to(torch.int64) for t in kept]


def contract(cores: Sequence[torch.Tensor], x: torch.Tensor, spec: LayerSpec,
             bias: torch.Tensor | None = None, trace: list | None = None,
             workspace: dict | None = None) -> tuple[torch.Tensor, list[int]]:
    """The contraction loop of :func:`int_linear`; the result stays in the last step's exact dtype.

    A core, input or bias whose leading query axis was made by ``expand`` (stride 0) counts as shared:
    the steps before the first batched core run once (the result keeps the query axis).
    Returns (y, overflow count of every step). ``trace``, if a list, receives every step's result in the
    canonical layout (q?, B, M_0..M_k, N_k+1..N_K-1, r_k+1), the last one as (q?, B, M).

    Layout (for speed only; values do not depend on it): the state before step k is
    (q?, r_k, n_k, m_k-1, ..., m_0, n_k+1, ..., n_K-1, B), so every step is one GEMM
    core^T (m_k r_k+1, r_k n_k) @ state (r_k n_k, rest) and the permutation back to that layout moves
    only the three leading axes (large contiguous blocks).

    ``workspace``, if a dict, keeps the buffers of the intermediate steps (their GEMM results and the
    re-laid-out inputs of the next step) for the next call of the same shapes: a fresh buffer of many MiB
    costs more in first-touch page faults than the memory-bound GEMM that fills it. Nothing of a workspace
    escapes (the result is a fresh tensor); not with ``trace``.
    """
    if trace is not None:
        workspace = None
    steps = spec.steps([tuple(g.shape[-4:]) for g in cores], bias is not None)
    queries = torch.broadcast_shapes(x.shape[:-2], *(g.shape[:-4] for g in cores),
                                     bias.shape[:-1] if bias is not None else ())
    x = _shared(x, 2)
    lead, rows = x.shape[:-2], x.shape[-2]
    ins = [g.shape[-3] for g in cores]
    outs = [g.shape[-2] for g in cores]
    q, overflows = len(lead), []
    t = x.reshape(*lead, rows, -1).transpose(-1, -2)                   # (q?, n_0 ... n_K-1, B)
    for k, (g, step) in enumerate(zip(cores, steps)):
        g = _shared(g, 4)
        r, n, m, s = g.shape[-4:]
        w = g.to(step.dtype).reshape(*g.shape[:-4], r * n, m * s) * _scale(step)
        a = _laid_out(t.to(step.dtype), (*lead, r * n, -1), workspace, ("in", k))
        done = math.prod(outs[:k])
        if k == len(cores) - 1:                            # s = 1: y^T = a^T w keeps m_K-1 innermost
            # (q?, m_K-2..m_0 B, m_K-1), computed as (w^T a)^T: a GEMM with the few outputs m_K-1 as its rows
            # is several times faster than one with them as its columns; the re-layout below copies anyway
            y = torch.matmul(w.transpose(-1, -2), a).transpose(-1, -2)
            lead = y.shape[:-2]
            q, d = len(lead), len(outs) - 1
            y = y.reshape(*lead, *reversed(outs[:-1]), rows, m)
            y = y.permute(*range(q), q + d, *(q + d - 1 - i for i in range(d)), q + d + 1)
            y = y.reshape(*lead, rows, done * m)
            if bias is not None:
                y = y + _shared(bias, 1).to(step.dtype).unsqueeze(-2) * _scale(step)
            y, over = _requantize(y, step, spec)
            y = y.expand(*queries, *y.shape[-2:])          # all operands shared: still (Q, B, M)
            overflows.append(over)
            if trace is not None:
                trace.append(y)
            return y, overflows
        y = _matmul(w.transpose(-1, -2), a, workspace, ("out", k))   # (q?, m_k r_k+1, m_k-1..m_0, n_k+1.., B)
        lead = y.shape[:-2]
        q = len(lead)
        y, over = _requantize(y, step, spec)
        overflows.append(over)
        if trace is not None:
            trace.append(_canonical(y, lead, outs[:k + 1], math.prod(ins[k + 1:]), s, rows))
        y = y.view(*lead, m, s, done, ins[k + 1], -1)
        t = y.permute(*range(q), q + 1, q + 3, q, q + 2, q + 4)          # (q?, s, n', m, D, rest)


def _buffer(workspace: dict, key, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """The workspace's buffer for ``key``, this shape and dtype (one per combination: a step sees a few)."""
    key = (key, shape, dtype)
    buf = workspace.get(key)
    if buf is None:
        buf = workspace[key] = torch.empty(shape, dtype=dtype)
    return buf


def _matmul(p: torch.Tensor, q: torch.Tensor, workspace: dict | None, key) -> torch.Tensor:
    """p @ q (batched, broadcast), into the workspace's buffer ``key`` when there is a workspace."""
    if workspace is None or p.device.type != "cpu":
        return torch.matmul(p, q)
    shape = (*torch.broadcast_shapes(p.shape[:-2], q.shape[:-2]), p.shape[-2], q.shape[-1])
    return torch.matmul(p, q, out=_buffer(workspace, key, shape, torch.result_type(p, q)))


def _laid_out(t: torch.Tensor, shape: tuple, workspace: dict | None, key) -> torch.Tensor:
    """t.reshape(shape); where that needs a copy (t permuted), the copy goes into the workspace's buffer."""
    if workspace is None or t.device.type != "cpu":
        return t.reshape(shape)
    try:
        return t.view(shape)
    except RuntimeError:
        return _buffer(workspace, key, tuple(t.shape), t.dtype).copy_(t).view(shape)


def _canonical(y: torch.Tensor, lead, outs, rest: int, s: int, rows: int) -> torch.Tensor:
    """A step result (q?, m_k, s, m_k-1..m_0, rest, B) as (q?, B, M_0..M_k, rest, s)."""
    q = len(lead)
    y = y.reshape(*lead, outs[-1], s, *reversed(outs[:-1]), rest, rows)
    digits = [q] + [q + 1 + len(outs) - 1 - i for i in range(len(outs) - 1)]      # m_k, m_k-1, ..
    order = [*range(q), y.dim() - 1, *reversed(digits), y.dim() - 2, q + 1]
    return y.permute(*order).reshape(*lead, rows, math.prod(outs), rest, s)


def _shared(t: torch.Tensor, core_dims: int) -> torch.Tensor:
    """Drop a leading axis made by expand (stride 0): the same tensor for every query."""
    return t[0] if t.dim() > core_dims and t.stride(0) == 0 else t


def _scale(step: Step) -> float:
    """Float accumulators carry the requantization shift in the weights: acc * 2^-shift is exact (a power
    of two), so the GEMM directly yields the scaled accumulator. Integer ones shift afterwards."""
    return 2.0 ** -step.shift if step.dtype.is_floating_point else 1


def _requantize(y: torch.Tensor, step: Step, spec: LayerSpec) -> tuple[torch.Tensor, int]:
    """Requantize an exact accumulator of ``step`` (in place for float accumulators, already scaled)."""
    if not y.dtype.is_floating_point:
        return requantize_exact(y, step.shift, step.out_fmt, spec.rounding, spec.overflow)
    if step.shift > 0:
        if spec.rounding == "half_up":
            y.add_(0.5).floor_()
        elif spec.rounding == "floor":
            y.floor_()
        else:
            y.round_()                                      # half to even
    return requantize_exact(y, 0, step.out_fmt, spec.rounding, spec.overflow, inplace=True)


def macs(core_shapes: Sequence[tuple[int, int, int, int]], rows: int) -> list[int]:
    """Multiply-accumulates of every core step for ``rows`` input rows."""
    return [v * r * n for v, (r, n, _, _) in zip(requantized(core_shapes, rows), core_shapes)]
