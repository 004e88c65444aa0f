"""Host side of the RTL core: the build parameters a layer needs and the register program that runs it
(docs/rtl.md, "Registers"). Pure functions of core shapes and the fixed-point spec.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from hwsim.backends.fixed.layer import LayerSpec
from hwsim.backends.fixed.numerics import Format
from hwsim.tt import Step, tt_steps

REG_NUM_CORES, REG_ROWS, REG_MODE, REG_IN_LEN, REG_OUT_LEN = 0, 1, 2, 3, 4
REG_STEP_BASE, REG_STEP_STRIDE = 8, 8          # + {0 T, 1 MR, 2 R, 3 D, 4 SHIFT, 5 WBASE}
ROUNDING_CODES = {"floor": 0, "half_up": 1, "half_even": 2}
LSHIFT_MAX = 16
MAX_CORES = 8
ADDR_LIMIT = 1 << 16                           # the configuration port's 16-bit address


@dataclass(frozen=True)
class StepShape(Step):
    """Core step k (hwsim.tt.Step: T terms per value, MR = m_k r_k+1, R = inputs left, D = outputs done,
    V values) with the core's register settings: its requantization shift and weight RAM base address."""

    shift: int
    wbase: int


def step_shapes(core_shapes: Sequence[tuple[int, int, int, int]], spec: LayerSpec, bias: bool) -> list[StepShape]:
    """The step descriptors of a TT layer with cores (r, n, m, r'), in the spec's order (core 0 first)."""
    out, wbase = [], 0
    for shape, step, fixed in zip(core_shapes, tt_steps(core_shapes), spec.steps(core_shapes, bias)):
        out.append(StepShape(step.terms, step.mr, step.rest, step.done, fixed.shift, wbase))
        wbase += math.prod(shape)
    return out


@dataclass(frozen=True)
class CoreParams:
    """Build parameters of tt_core (Verilog names in :meth:`verilog`). Widths are hardware widths: the
    intermediate and output widths must equal the spec's (saturation happens at them), the input,
    weight and bias widths may be wider than the codes they hold."""

    lanes: int = 16
    in_w: int = 8
    w_w: int = 8
    mid_w: int = 8
    out_w: int = 8
    bias_w: int = 32
    acc_w: int = 40
    w_depth: int = 2048
    s_depth: int = 4096
    in_depth: int = 1024
    out_depth: int = 1024

    def verilog(self) -> dict[str, int]:
        names = {"lanes": "LANES", "in_w": "IN_W", "w_w": "W_W", "mid_w": "MID_W", "out_w": "OUT_W",
                 "bias_w": "BIAS_W", "acc_w": "ACC_W", "w_depth": "W_DEPTH", "s_depth": "S_DEPTH",
                 "in_depth": "IN_DEPTH", "out_depth": "OUT_DEPTH"}
        return {names[k]: v for k, v in asdict(self).items()} | {"MAX_CORES": MAX_CORES, "LSHIFT_MAX": LSHIFT_MAX}

    @property
    def max_rshift(self) -> int:
        return self.acc_w + LSHIFT_MAX              # XW - 2 in tt_requant

    @classmethod
    def for_layer(cls, core_shapes, spec: LayerSpec, bias: bool, lanes: int) -> "CoreParams":
        """The smallest core (depths rounded up to powers of two) that runs this layer."""
        steps = step_shapes(core_shapes, spec, bias)
        pow2 = lambda v: 1 << max(1, math.ceil(math.log2(max(v, 1))))  # noqa: E731
        params = cls(lanes=lanes, in_w=spec.input.bits, w_w=spec.weight.bits, mid_w=_mid_width(spec, core_shapes) or _any_width(spec),
                     out_w=spec.output.bits, bias_w=spec.bias_bits if bias else 2,
                     acc_w=max(s.acc_bits for s in spec.steps(core_shapes, bias)),
                     w_depth=pow2(sum(math.prod(c) for c in core_shapes)),
                     s_depth=pow2(max([s.values for s in steps[:-1]], default=1)),
                     in_depth=pow2(steps[0].terms * steps[0].rest),
                     out_depth=pow2(steps[-1].values))
        params.check(core_shapes, spec, bias)
        return params

    def merge(self, other: "CoreParams") -> "CoreParams":
        """One core that runs the layers of both (same intermediate and output widths): every other
        width and depth is the larger of the two."""
        if (self.lanes, self.mid_w, self.out_w) != (other.lanes, other.mid_w, other.out_w):
            raise ValueError("rtl: layers with different lanes, intermediate or output widths need separate cores")
        return CoreParams(**{k: max(v, getattr(other, k)) for k, v in asdict(self).items()})

    def check(self, core_shapes, spec: LayerSpec, bias: bool) -> None:
        """Raise ValueError naming what does not fit this core."""
        steps = step_shapes(core_shapes, spec, bias)
        if len(core_shapes) > MAX_CORES:
            raise ValueError(f"rtl: {len(core_shapes)} cores exceed the core's limit {MAX_CORES}")
        if not 1 <= self.lanes <= 64:
            raise ValueError(f"rtl: lanes must be in 1..64, got {self.lanes}")
        mid_w = _mid_width(spec, core_shapes)
        if mid_w not in (None, self.mid_w) or spec.output.bits != self.out_w:
            raise ValueError(f"rtl: the core saturates at MID_W={self.mid_w}, OUT_W={self.out_w}; the layer "
                             f"needs {mid_w or self.mid_w} and {spec.output.bits}")
        widths = {"input": (spec.input.bits, self.in_w), "weight": (spec.weight.bits, self.w_w),
                  "bias": (spec.bias_bits if bias else 2, min(self.bias_w, 32)),
                  "accumulator": (max(s.acc_bits for s in spec.steps(core_shapes, bias)), self.acc_w)}
        for what, (bits, hw) in widths.items():
            if bits > hw:
                raise ValueError(f"rtl: {what} codes need {bits} bits, the core has {hw}")
        depths = {"weight RAM": (sum(math.prod(c) for c in core_shapes), self.w_depth),
                  "state RAM": (max([s.values for s in steps[:-1]], default=0), self.s_depth),
                  "input buffer": (steps[0].terms * steps[0].rest, self.in_depth),
                  "output buffer": (steps[-1].values, self.out_depth)}
        for what, (words, depth) in depths.items():
            if words > depth:
                raise ValueError(f"rtl: the {what} needs {words} words, the core has {depth}")
        if max(self.w_depth, self.out_depth) > ADDR_LIMIT:     # written through the 16-bit cfg_addr
            raise ValueError(f"rtl: weight RAM and output buffer (bias RAM) are limited to {ADDR_LIMIT} words")
        for k, s in enumerate(steps):
            if not -LSHIFT_MAX <= s.shift <= self.max_rshift:
                raise ValueError(f"rtl: core step {k} shifts by {s.shift}; the core supports "
                                 f"{-LSHIFT_MAX}..{self.max_rshift} (formats {spec})")


def _mid_width(spec: LayerSpec, core_shapes) -> int | None:
    """The one width (MID_W) of every intermediate result of the layer; per-step formats may move the
    binary point (the shifts are run-time registers) but not change the width. None for a one-core
    layer (no intermediate)."""
    widths = {f.bits for f in spec.intermediates(len(core_shapes))}
    if len(widths) > 1:
        raise ValueError(f"rtl: the core has one intermediate width (MID_W); the layer's intermediate "
                         f"formats have widths {sorted(widths)}")
    return widths.pop() if widths else None


def _any_width(spec: LayerSpec) -> int:
    """MID_W of a core built for a one-core layer: the spec's intermediate width if it names one."""
    return spec.intermediate.bits if isinstance(spec.intermediate, Format) else spec.output.bits


def registers(core_shapes, spec: LayerSpec, bias: bool, rows: int) -> list[tuple[int, int]]:
    """(address, value) writes that program a layer for a job of ``rows`` input vectors."""
    steps = step_shapes(core_shapes, spec, bias)
    mode = ROUNDING_CODES[spec.rounding] | (4 if spec.overflow == "wrap" else 0) | (8 if bias else 0)
    out = [(REG_NUM_CORES, len(steps)), (REG_ROWS, rows), (REG_MODE, mode),
           (REG_IN_LEN, steps[0].terms * steps[0].rest), (REG_OUT_LEN, steps[-1].values)]
    for k, s in enumerate(steps):
        base = REG_STEP_BASE + REG_STEP_STRIDE * k
        out += [(base, s.terms), (base + 1, s.mr), (base + 2, s.rest), (base + 3, s.done),
                (base + 4, s.shift & 0xFF), (base + 5, s.wbase)]
    return out


def cycles_per_group(steps: Sequence[StepShape]) -> int:
    """Engine cycles for one group of LANES vectors (docs/rtl.md): V_k T_k MAC cycles per step plus
    the step's setup (1) and pipeline drain (3) cycles, plus 1 to start the group."""
    return 1 + sum(s.values * s.terms + 4 for s in steps)
