"""The ``fixed`` backend: every linear layer runs in the integer spec of docs/fixed_point.md.

Two ways to hold the trained parameters (option ``master``):
- ``float``: the host keeps float parameters and the chip quantizes them at every forward, so a
  perturbation moves a code only when it crosses a rounding boundary (mu should be >= 1 LSB);
- ``integer``: the parameters *are* the integer codes (theta in LSB units): perturbations of whole
  LSBs, and after every optimizer step the host rounds and clamps them back (as in the quantized on-MCU training of arXiv:2411.05873).
Activations flow between layers as float values that lie exactly on their format's grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from hwsim.arch.workload import Widths
from hwsim.backends.base import Backend, Capabilities, DeviceChoice
from hwsim.backends.fixed.layer import BIAS_BITS, LayerSpec, contract, dense_as_core, macs, requantized
from hwsim.backends.fixed.numerics import (MAX_BITS, MAX_FRAC, Format, code_dtype,
                                           grid_codes, quantize, round_half_up)
from hwsim.errors import ConfigError
from hwsim.model import Linear, TTLinear
from hwsim.text import excerpt

ROLES = ("input", "weight", "intermediate", "activation", "output")
# Integer bits (sign included, W - F) of every role when only ``bits`` is given: chosen from the value
# ranges of the MNIST TT model (docs/fixed_point.md, "Default formats").
DEFAULT_INT_BITS = {"input": 1, "weight": 2, "intermediate": 5, "activation": 5, "output": 6}
LAYER_ROLES = ("weight", "intermediate")       # the roles one layer may override (backend.layers)
# Row blocks of a layer's contraction: at most this many values in its widest core-step result (16 MiB of
# float32, within a CPU's last-level cache; benchmarks/bench_backend_step.py), and at least ROW_BLOCK_MIN rows.
ROW_BLOCK_ELEMENTS = 2 ** 22
ROW_BLOCK_MIN = 16
GRID_MEMORY = 4              # layer outputs / activations remembered as on their format's grid


class FixedBackend(Backend):
    """Bit-exact integer emulation of a TT-contraction accelerator (the RTL core's golden model)."""

    name = "fixed"
    summary = "bit-exact integer spec of a TT-contraction accelerator (docs/fixed_point.md)"
    capabilities = Capabilities(exact=True, differentiable=False, multilinear=False, devices=("cpu", "cuda"))

    @dataclass
    class Options:
        """master: float | integer; bits: width of every role; int_bits: {role: W - F} overriding the
        defaults; formats: {role: [bits, frac_bits]} overriding both; layers: {network layer index:
        {int_bits: ..., formats: ...}} overriding the weight and intermediate formats of one layer, the
        intermediate one per core step if given as a list; bias_bits; rounding; overflow;
        update_rounding (integer master): nearest | stochastic; device: cpu | cuda | auto (the same codes
        on every device; on CUDA every accumulator must be exact in float64, which has no int64 GEMM)."""

        master: Literal["float", "integer"] = "float"
        bits: int = 8
        int_bits: dict = field(default_factory=dict)
        formats: dict = field(default_factory=dict)
        layers: dict = field(default_factory=dict)
        bias_bits: int = BIAS_BITS
        rounding: Literal["floor", "half_up", "half_even"] = "half_up"
        overflow: Literal["saturate", "wrap"] = "saturate"
        update_rounding: Literal["nearest", "stochastic"] = "nearest"
        device: DeviceChoice = "cpu"

        def __post_init__(self):
            if not isinstance(self.bits, int) or not 2 <= self.bits <= MAX_BITS:
                raise ConfigError(f"backend.bits: {excerpt(self.bits)} is not allowed; use an integer in 2..{MAX_BITS}")
            if not isinstance(self.bias_bits, int) or not 2 <= self.bias_bits <= MAX_BITS:
                raise ConfigError(f"backend.bias_bits: {excerpt(self.bias_bits)} is not allowed; use an integer in 2..{MAX_BITS}")
            for key in ("int_bits", "formats"):
                table = getattr(self, key)
                if not isinstance(table, dict):
                    raise ConfigError(f"backend.{key}: expected a mapping of role -> value, got {excerpt(table)}")
                for role in table:
                    _check(f"{key}.{role}", role, ROLES, what="role")
            self.resolved = {role: self._format(role, self.formats, self.int_bits, "backend") for role in ROLES}
            if not isinstance(self.layers, dict):
                raise ConfigError(f"backend.layers: expected a mapping of layer index -> {{int_bits, formats}}, "
                                 f"got {excerpt(self.layers)}")
            self.per_layer = {}
            for index, table in self.layers.items():
                where = f"backend.layers.{index}"
                if not (isinstance(index, int) or str(index).isdigit()):
                    raise ConfigError(f"{where}: the key must be a layer index (an integer >= 0)")
                if not isinstance(table, dict) or not set(table) <= {"int_bits", "formats"}:
                    raise ConfigError(f"{where}: {excerpt(table)} is not allowed; use {{int_bits: {{role: ..}}, "
                                     f"formats: {{role: ..}}}} with roles {', '.join(LAYER_ROLES)}")
                formats, int_bits = table.get("formats", {}), table.get("int_bits", {})
                for key, roles in (("formats", formats), ("int_bits", int_bits)):
                    if not isinstance(roles, dict):
                        raise ConfigError(f"{where}.{key}: expected a mapping of role -> value, got {excerpt(roles)}")
                    for role in roles:
                        _check(f"layers.{index}.{key}.{role}", role, LAYER_ROLES, what="role")
                self.per_layer[int(index)] = {
                    role: self._format(role, formats, int_bits, where, self.resolved[role])
                    for role in LAYER_ROLES if role in formats or role in int_bits}

        def _format(self, role: str, formats: dict, int_bits: dict, where: str, default: Format | None = None):
            """The Format of ``role`` from a formats / int_bits table (a tuple of Formats for a per-step
            list of intermediates); ``default`` (else the role's default int bits) if neither has it."""
            steps = role == "intermediate"
            if role in formats:
                where, value = f"{where}.formats.{role}", formats[role]
                if steps and value and _is_list_of(value, list):
                    return tuple(_format_of(v, f"{where}[{k}]", steps) for k, v in enumerate(value))
                return _format_of(value, where, steps)
            if role not in int_bits and default is not None:
                return default
            where, ib = f"{where}.int_bits.{role}", int_bits.get(role, DEFAULT_INT_BITS[role])
            if steps and ib and _is_list_of(ib, int):
                return tuple(self._int_bits_format(v, f"{where}[{k}]") for k, v in enumerate(ib))
            if not isinstance(ib, int):
                raise ConfigError(f"{where}: {excerpt(ib)} is not allowed; use an integer"
                                 + (" or a list of them, one per core step" if steps else ""))
            return self._int_bits_format(ib, where)

        def _int_bits_format(self, int_bits: int, where: str) -> Format:
            """Format(bits, bits - int_bits), the range of int_bits named in the error (F in -64..64)."""
            if abs(self.bits - int_bits) > MAX_FRAC:
                raise ConfigError(f"{where}: {excerpt(int_bits)} is not allowed; at bits {self.bits} use an integer in "
                                 f"{self.bits - MAX_FRAC}..{self.bits + MAX_FRAC} (frac_bits = bits - int_bits "
                                 f"in -{MAX_FRAC}..{MAX_FRAC})")
            return Format(self.bits, self.bits - int_bits)

    def __init__(self, options: "FixedBackend.Options | None" = None):
        super().__init__(options)
        self._layers: dict[int, tuple[int, LayerSpec]] = {}
        self._param_formats: dict[str, Format] = {}
        self._cache: dict[int, tuple] = {}
        self._grid: dict[int, tuple] = {}          # id -> (tensor, version, format) of values known on a grid
        self._workspace: dict = {}                 # contract()'s reusable buffers
        self._network = None

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64          # parameters: float master values or integer codes, both exact

    @property
    def data_dtype(self) -> torch.dtype:
        return torch.float32          # inputs get quantized; float32 holds the data loaders' values

    @property
    def formats(self) -> dict[str, Format]:
        return dict(self.options.resolved)

    # --- parametrization ---------------------------------------------------------------------------
    def storage_bits(self) -> tuple[int, int]:
        return self.formats["weight"].bits, self.formats["activation"].bits

    def bind(self, network, architecture=None) -> None:
        fmts, o = self.options.resolved, self.options
        linears = [i for i, layer in enumerate(network.layers) if isinstance(layer, Linear)]
        self._layers.clear()
        self._param_formats.clear()
        self._cache.clear()
        self._grid.clear()
        unknown = sorted(set(o.per_layer) - set(linears))
        if unknown:
            raise ConfigError(f"backend.layers: {unknown[0]} is not a linear layer of the network; "
                             f"its linear layers are {', '.join(map(str, linears))}")
        for j, i in enumerate(linears):
            layer, own = network.layers[i], fmts | o.per_layer.get(i, {})
            spec = LayerSpec(fmts["input"] if j == 0 else fmts["activation"], own["weight"],
                             own["intermediate"], fmts["output"] if j == len(linears) - 1 else fmts["activation"],
                             o.bias_bits, o.rounding, o.overflow)
            try:
                steps = spec.steps(_core_shapes(layer), layer.bias)
            except ValueError as e:
                raise ConfigError(f"backend: layer {i}: {e}") from None
            wide = [k for k, step in enumerate(steps) if not step.dtype.is_floating_point]
            if wide and self.device.type == "cuda":
                raise ConfigError(f"backend.device: layer {i}'s core step {wide[0]} needs a "
                                  f"{steps[wide[0]].acc_bits}-bit accumulator, beyond float64's exact 53 bits, and "
                                  f"CUDA has no int64 matrix product: run this format on the cpu")
            self._layers[id(layer)] = (i, spec)
            for name, _ in layer.param_shapes():
                fmt = spec.bias_format(_core_shapes(layer)) if name == "bias" else spec.weight
                self._param_formats[f"{i}.{name}"] = fmt
        self._network = network

    def layer_specs(self) -> list[tuple[int, object, LayerSpec]]:
        """(index in the network, layer, numerics) of every linear layer of the bound network."""
        if self._network is None:
            raise RuntimeError("the fixed backend is not bound to a network: call backend.bind(network) first")
        return [(i, layer, self._layers[id(layer)][1]) for i, layer in enumerate(self._network.layers)
                if id(layer) in self._layers]

    def layer_widths(self, index: int, layer) -> Widths:
        """The spec's widths: integer MACs of the step's input and the weight codes, results at the
        intermediate formats, then the output format."""
        spec = next(s for i, _, s in self.layer_specs() if i == index)
        results = [f.bits for f in spec.intermediates(len(_core_shapes(layer)))] + [spec.output.bits]
        return Widths(False, spec.input.bits, spec.weight.bits, tuple(results), spec.bias_bits)

    def encode(self, theta: torch.Tensor) -> torch.Tensor:
        if self.options.master == "float":
            return theta
        return self._per_tensor(theta, lambda t, f: quantize(t, f.bits, f.frac_bits, self.options.rounding,
                                                             "saturate").to(theta.dtype))

    def decode(self, theta: torch.Tensor) -> torch.Tensor:
        if self.options.master == "float":
            return theta
        return self._per_tensor(theta, lambda t, f: t * f.lsb)

    @torch.no_grad()
    def project_(self, theta: torch.Tensor, generator: torch.Generator | None = None) -> None:
        if self.options.master == "float":
            return
        if self.options.update_rounding == "stochastic":
            noise = torch.rand(theta.shape, generator=generator, dtype=theta.dtype).to(theta.device)
            theta.add_(noise).floor_()
        else:
            theta.copy_(round_half_up(theta))
        theta.copy_(self._per_tensor(theta, lambda t, f: t.clamp(f.lo, f.hi)))

    def check_perturbation(self, mu: float) -> str | None:
        w = max((f for f in self._param_formats.values()), key=lambda f: f.lsb, default=self.options.resolved["weight"])
        if self.options.master == "integer":
            if mu != round(mu) or mu < 1:
                return (f"master: integer perturbs integer codes, so mu is in LSBs; mu={mu} is not a whole "
                        f"number of LSBs and perturbed codes get rounded: use mu = 1, 2, ...")
            return None
        if mu < w.lsb:
            return (f"mu={mu} is below the weight LSB {w.lsb:g} ({w}): a perturbation changes a code only "
                    f"where it crosses a rounding boundary (about mu/LSB = {mu / w.lsb:.0%} of them), the rest "
                    f"vanish; use mu >= {w.lsb:g}")
        return None

    def _per_tensor(self, theta: torch.Tensor, fn) -> torch.Tensor:
        if not self._param_formats:
            raise RuntimeError("the fixed backend is not bound to a network: call backend.bind(network) first")
        parts = [fn(theta[..., e.slice], self._param_formats[e.name]) for e in self._network.space.entries]
        return torch.cat(parts, dim=-1)

    # --- execution ---------------------------------------------------------------------------------
    def linear(self, layer, params, x, queries):
        if id(layer) not in self._layers:
            raise RuntimeError("the fixed backend is not bound to this network: call backend.bind(network) first")
        index, spec = self._layers[id(layer)]
        xc, over = self._input_codes(index, x, spec.input)
        self.count(f"overflows_layer{index}_input", over)
        shapes = _core_shapes(layer)
        if isinstance(layer, TTLinear):
            cores = [self._param(params[n], spec.weight, 4) for n in layer.core_names]
        else:
            cores = [dense_as_core(self._param(params["weight"], spec.weight, 2))]
        bias = self._param(params["bias"], spec.bias_format(shapes), 1) if layer.bias else None
        steps = spec.steps(shapes, layer.bias)

        y, overflows = self._contract(index, layer, spec, cores, xc, bias)
        rows = x.shape[-2] * math.prod(torch.broadcast_shapes(x.shape[:-2], (queries,) if queries else ()))
        for step, n_macs in zip(steps, macs(shapes, rows)):
            self.count(f"macs_int{step.in_fmt.bits}xint{spec.weight.bits}", n_macs)
        produced = requantized(shapes, rows)
        self.count(f"requantizations_layer{index}", sum(produced))
        self.count(f"overflows_layer{index}", sum(overflows))
        self.count("linear_calls")
        self.count("rows", rows)
        return self._on_grid(_values(y, spec.output), spec.output)

    def _contract(self, index: int, layer, spec: LayerSpec, cores: list[torch.Tensor], x: torch.Tensor,
                  bias: torch.Tensor | None) -> tuple[torch.Tensor, list[int]]:
        """Layer ``index`` on integer codes x (Q?, B, P): (output codes (Q?, B, M), overflow counts per core
        step). The emulator; the rtl backend runs TT layers on the Verilog core instead. Rows go through in
        blocks whose widest step result stays within ROW_BLOCK_ELEMENTS (cache-sized: the core steps are
        memory-bound); rows are independent, so the codes and counts do not depend on the blocks."""
        rows = x.shape[-2]
        queries = math.prod(torch.broadcast_shapes(x.shape[:-2], *(g.shape[:-4] for g in cores)))
        widest = max(requantized(_core_shapes(layer), 1))
        block = max(ROW_BLOCK_MIN, ROW_BLOCK_ELEMENTS // (queries * widest))
        if block >= rows:
            return contract(cores, x, spec, bias, workspace=self._workspace)
        parts = [contract(cores, x[..., s:s + block, :], spec, bias, workspace=self._workspace)
                 for s in range(0, rows, block)]
        return torch.cat([y for y, _ in parts], -2), [sum(step) for step in zip(*(over for _, over in parts))]

    def activation(self, kind, x):
        self.count(f"activation_{kind}", x.numel())
        if kind == "relu":                            # max(0, code): exact on the grid, in range
            known = self._grid.get(id(x))
            y = torch.relu(x)
            return self._on_grid(y, known[2]) if known and known[0] is x and known[1] == x._version else y
        fmt = self.options.resolved["activation"]     # host-evaluated, then back onto the grid
        codes, _ = self._codes(getattr(torch, kind)(x.to(torch.float64)), fmt, 2)
        return self._on_grid(_values(codes, fmt), fmt)

    def _on_grid(self, values: torch.Tensor, fmt: Format) -> torch.Tensor:
        """Remember that ``values`` (made here: a layer output or an activation of one) lie on ``fmt``'s grid
        and inside its range, so the next layer takes their codes without checking them (the last few
        such tensors, held alive so that their identity cannot pass to another tensor)."""
        self._grid[id(values)] = (values, values._version, fmt)
        while len(self._grid) > GRID_MEMORY:
            del self._grid[next(iter(self._grid))]
        return values

    def _param(self, t: torch.Tensor, fmt: Format, dims: int) -> torch.Tensor:
        """Codes of a parameter tensor (a leading query axis made by expand stays shared)."""
        scale_fmt = fmt if self.options.master == "float" else Format(fmt.bits, 0)
        return self._codes(t, scale_fmt, dims)[0]

    def _input_codes(self, index: int, x: torch.Tensor, fmt: Format) -> tuple[torch.Tensor, int]:
        """:meth:`_codes` of layer ``index``'s input; the last one per layer is cached (the objective
        passes the same mini-batch tensor for every query of a step). The cache holds the tensor itself,
        so its identity and version counter cannot be reused by another tensor."""
        c = self._cache.get(index)
        if c is not None and c[0] is x and c[1] == x._version and c[2] == fmt:
            return c[3], c[4]
        known = self._grid.get(id(x))
        if known and known[0] is x and known[1] == x._version and known[2] == fmt:
            codes, over = (x * 2.0 ** fmt.frac_bits).to(code_dtype(fmt.bits)), 0     # exact: a power of two
        else:
            codes, over = self._codes(x, fmt, 2)
        codes = codes.transpose(-1, -2).contiguous().transpose(-1, -2)   # the layout contract() starts from
        self._cache[index] = (x, x._version, fmt, codes, over)
        return codes, over

    def _codes(self, t: torch.Tensor, fmt: Format, dims: int) -> tuple[torch.Tensor, int]:
        """(codes of float values t in ``fmt`` as exact integers in a float tensor, number that overflowed);
        an expanded leading axis stays shared. Values already on the grid and in range skip rounding."""
        shared = t.dim() > dims and t.stride(0) == 0
        unique = t[0] if shared else t
        codes, over = grid_codes(unique, fmt, self.options.rounding, self.options.overflow)
        codes = codes.to(code_dtype(fmt.bits))
        return (codes.expand(t.shape[0], *codes.shape) if shared else codes), over


def _values(codes: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Float values code * 2^-F (float32 while codes fit its 24-bit mantissa, else float64)."""
    return codes.to(code_dtype(fmt.bits)) * fmt.lsb


def _core_shapes(layer) -> list[tuple[int, int, int, int]]:
    return layer.tt.core_shapes if isinstance(layer, TTLinear) else [(1, layer.in_features, layer.out_features, 1)]


def _format_of(value, where: str, steps: bool) -> Format:
    """Format(bits, frac_bits) from a config's [bits, frac_bits], errors naming ``where``."""
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value)):
        raise ConfigError(f"{where}: {excerpt(value)} is not allowed; use [bits, frac_bits] (two integers)"
                         + (" or a list of them, one per core step" if steps else ""))
    try:
        return Format(*value)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _is_list_of(value, kind) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, kind) for v in value)


def _check(key: str, value, allowed, what: str = "value") -> None:
    if value not in allowed:
        raise ConfigError(f"backend.{key}: {what} {excerpt(value)} is not allowed; use one of {', '.join(allowed)}")
