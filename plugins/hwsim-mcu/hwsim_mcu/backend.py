"""The ``mcu`` backend: the network trained BP-free on a Cortex-M class micro-controller in int8.

As in "Poor Man's Training on MCUs" (arXiv:2411.05873): weights are int8 codes, biases int32 codes,
activations int8; the parameters the host's zeroth-order optimizer moves *are* the integer codes
(theta in LSB units), so a perturbation of mu = 1 moves a weight by one LSB, forward differences compare
losses, and after every optimizer step the codes are rounded and clamped back to integers (project_).
Every linear layer runs in the integer kernels of hwsim_mcu.kernels (CMSIS-NN style, bit-exact).

Scales (all chosen once, deterministically, and kept in the checkpoint):
- weights: symmetric per tensor, s_w = max|w| / 127 over the float weights the first :meth:`encode` after
  :meth:`bind` receives (the model's initial weights, or the ones a fine-tuning run starts from); codes in
  [-127, 127]; an all-zero tensor gets s_w = 1/127;
- biases: int32 codes at s_in x s_w of the step they are added in (the layer's last core step);
- activations: symmetric int8, zero point 0. The input range R_0 = ``input_range`` (data in [-R_0, R_0],
  1.0 for MNIST's pixels in [0, 1]); every core step k of every layer maps a range R to
  R' = R x sqrt(T_k) x rms(G_k) x ``range_gain`` (T_k = r_k n_k products per value, rms over the initial
  core: the spread of a sum of T_k products grows by sqrt(T_k) rms(w) at the same number of sigmas),
  s = R' / 127; the next layer's input scale is the last step's output scale. A zero core keeps R.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from hwsim.arch.workload import Widths, core_shapes
from hwsim.backends.base import Backend, Capabilities
from hwsim.errors import ConfigError
from hwsim.model import Activation, Linear, TTLinear
from hwsim.text import excerpt
from hwsim.tt import tt_steps
from hwsim_mcu.arch import CORTEX_M, CortexM
from hwsim_mcu.kernels import (INT8_MAX, INT32_MAX, INT32_MIN, linear_s8, quantize_multiplier, saturate_int8,
                               tt_linear_s8)


WEIGHT_MAX = INT8_MAX                            # symmetric int8 weight codes: [-127, 127]


@dataclass
class LayerScales:
    """One linear layer's scales: input s_in, every core's s_w, every step's output scale and its
    requantisation (multiplier, shift), and the bias scale."""

    s_in: float
    s_w: list[float]
    s_out: list[float]
    steps: list[tuple[int, int]]
    s_bias: float


def _round_half_away(t: torch.Tensor) -> torch.Tensor:
    return torch.sign(t) * torch.floor(t.abs() + 0.5)


class McuBackend(Backend):
    """int8 inference and BP-free training on a Cortex-M core (CMSIS-NN style integer kernels)."""

    name = "mcu"
    summary = "Cortex-M micro-controller: int8 CMSIS-NN style kernels, int8 weight codes trained in whole LSBs"
    capabilities = Capabilities(exact=True, differentiable=False, multilinear=False)
    architecture = CORTEX_M

    @dataclass
    class Options:
        """input_range: the input data lie in [-input_range, input_range] (int8 input scale input_range /
        127); range_gain: multiplies the activation range rule of every core step; update_rounding: how
        project_ rounds the codes after an optimizer step (nearest: half away from zero; stochastic:
        floor(code + U[0, 1)))."""

        input_range: float = 1.0
        range_gain: float = 1.0
        update_rounding: Literal["nearest", "stochastic"] = "nearest"

        def check(self, path: str) -> None:
            for key in ("input_range", "range_gain"):
                value = getattr(self, key)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                        or value <= 0:
                    raise ConfigError(f"{path}.{key}: expected a number > 0, got {excerpt(value)}")

    def __init__(self, options: "McuBackend.Options | None" = None):
        super().__init__(options)
        self.options.check("backend")
        self._network = None
        self._arch: CortexM | None = None
        self._layers: dict[int, tuple[int, Linear]] = {}
        self._scales: dict[int, LayerScales] | None = None

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64                      # integer codes, exact

    @property
    def data_dtype(self) -> torch.dtype:
        return torch.float32

    # --- the device -----------------------------------------------------------------------------------
    def bind(self, network, architecture=None) -> None:
        arch = architecture if architecture is not None else CortexM()
        for i, layer in enumerate(network.layers):
            if isinstance(layer, Activation) and layer.kind != "relu":
                raise ConfigError(f"model.layers[{i}]: the mcu backend runs int8 ReLU only, not {layer.kind}")
        weights = sum(math.prod(e.shape) for e in network.space.entries if not e.name.endswith(".bias"))
        biases = sum(math.prod(e.shape) for e in network.space.entries if e.name.endswith(".bias"))
        need = weights + 4 * biases
        if need > arch.flash_bytes:
            raise ConfigError(f"model.layers: the int8 weights and int32 biases need {need:,} B; the {arch.part}'s "
                              f"flash holds {arch.flash_bytes:,} B (architecture.flash_bytes)")
        self._network, self._arch = network, arch
        self._layers = {id(layer): (i, layer) for i, layer in enumerate(network.layers) if isinstance(layer, Linear)}
        self._scales = None

    def storage_bits(self) -> tuple[int, int]:
        """(parameter bits, activation bits) on the device: int8 weights, int8 activations."""
        return 8, 8

    def memory_limit(self) -> int | None:
        """Bytes of on-chip SRAM for the training state (the bound architecture's), None before bind."""
        return self._arch.sram_bytes if self._arch is not None else None

    def live_rows(self, rows: int) -> int:
        """A pass of ``rows`` rows streams through the kernels ``architecture.micro_batch`` rows at a time."""
        return min(rows, self._arch.micro_batch) if self._arch is not None else rows

    def layer_widths(self, index: int, layer) -> Widths:
        return Widths(False, 8, 8, (8,) * len(core_shapes(layer)), 32)

    # --- parametrisation --------------------------------------------------------------------------------
    def _bound(self):
        if self._network is None:
            raise RuntimeError("the mcu backend is not bound to a network: call backend.bind(network) first")
        return self._network

    def _choose_scales(self, theta: torch.Tensor) -> dict[int, LayerScales]:
        """The scales of the module doc from float weights theta (d,)."""
        net = self._bound()
        flat = theta.detach().to("cpu", torch.float64)
        flat = flat.reshape(-1, flat.shape[-1])[0]
        named = net.space.unflatten(flat)
        rng = float(self.options.input_range)
        out = {}
        for i, layer in enumerate(net.layers):
            if not isinstance(layer, Linear):
                continue
            names = list(layer.core_names) if isinstance(layer, TTLinear) else ["weight"]
            s_in = rng / INT8_MAX
            s_ws, s_outs, steps, s_prev = [], [], [], s_in
            for name, (r, n, _, _) in zip(names, core_shapes(layer)):
                w = named[f"{i}.{name}"]
                peak = float(w.abs().max())
                s_w = (peak if peak > 0 else 1.0) / WEIGHT_MAX
                rms = float(w.pow(2).mean().sqrt())
                new = rng * math.sqrt(r * n) * rms * self.options.range_gain
                rng = new if new > 0 else rng
                s_out = rng / INT8_MAX
                steps.append(quantize_multiplier(s_prev * s_w / s_out))
                s_ws.append(s_w)
                s_outs.append(s_out)
                s_prev = s_out
            s_bias = (s_outs[-2] if len(s_outs) > 1 else s_in) * s_ws[-1]
            out[i] = LayerScales(s_in, s_ws, s_outs, steps, s_bias)
        return out

    def _entry_scales(self) -> list[tuple[float, float, float]]:
        """(scale, lowest code, highest code) of every ParamSpace entry, in order."""
        if self._scales is None:
            raise RuntimeError("the mcu backend has no scales yet: encode() the initial weights first")
        out = []
        for e in self._bound().space.entries:
            i, local = e.name.split(".", 1)
            sc = self._scales[int(i)]
            if local == "bias":
                out.append((sc.s_bias, INT32_MIN, INT32_MAX))
            else:
                k = int(local[4:]) if local.startswith("core") else 0
                out.append((sc.s_w[k], -WEIGHT_MAX, WEIGHT_MAX))
        return out

    def _per_entry(self, theta: torch.Tensor, fn) -> torch.Tensor:
        entries = self._bound().space.entries
        parts = [fn(theta[..., e.slice], *s) for e, s in zip(entries, self._entry_scales())]
        return torch.cat(parts, dim=-1)

    def encode(self, theta: torch.Tensor) -> torch.Tensor:
        """Float weights -> integer codes (as float64 values); the first call after bind chooses the scales."""
        if self._scales is None:
            self._scales = self._choose_scales(theta)
        return self._per_entry(theta.to(torch.float64),
                               lambda t, s, lo, hi: _round_half_away(t / s).clamp(lo, hi)).to(theta.dtype)

    def decode(self, theta: torch.Tensor) -> torch.Tensor:
        return self._per_entry(theta, lambda t, s, lo, hi: t * s)

    @torch.no_grad()
    def project_(self, theta: torch.Tensor, generator: torch.Generator | None = None) -> None:
        if self.options.update_rounding == "stochastic":
            noise = torch.rand(theta.shape, generator=generator, dtype=theta.dtype).to(theta.device)
            theta.add_(noise).floor_()
        else:
            theta.copy_(_round_half_away(theta))
        theta.copy_(self._per_entry(theta, lambda t, s, lo, hi: t.clamp(lo, hi)))

    def check_perturbation(self, mu: float) -> str | None:
        if mu < 1 or mu != round(mu):
            return (f"the mcu backend trains int8 weight codes, so mu is in LSBs; mu={mu} is "
                    + ("below one weight LSB: most perturbed codes round back to where they were"
                       if mu < 1 else "not a whole number of LSBs and perturbed codes get rounded")
                    + ": use mu = 1, 2, ...")
        return None

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self._scales is not None:
            state["scales"] = {i: vars(s).copy() for i, s in self._scales.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "scales" in state:
            self._scales = {int(i): LayerScales(**{k: (list(v) if isinstance(v, (list, tuple)) else v)
                                                   for k, v in s.items()}) for i, s in state["scales"].items()}
            for s in self._scales.values():
                s.steps = [tuple(p) for p in s.steps]

    # --- execution ----------------------------------------------------------------------------------------
    def linear(self, layer, params, x, queries):
        if id(layer) not in self._layers:
            raise RuntimeError("the mcu backend is not bound to this network: call backend.bind(network) first")
        index, _ = self._layers[id(layer)]
        if self._scales is None:
            raise RuntimeError("the mcu backend has no scales yet: encode() the initial weights first")
        sc = self._scales[index]
        xc, clipped = saturate_int8(_round_half_away(x.to(torch.float64) / sc.s_in).to(torch.int64))
        if clipped:
            self.count(f"saturations_layer{index}_input", clipped)
        dims = 4 if isinstance(layer, TTLinear) else 2
        if isinstance(layer, TTLinear):
            cores = [_codes(params[n], dims, -WEIGHT_MAX, WEIGHT_MAX) for n in layer.core_names]
        else:
            cores = [_codes(params["weight"], dims, -WEIGHT_MAX, WEIGHT_MAX)]
        bias = _codes(params["bias"], 1, INT32_MIN, INT32_MAX) if layer.bias else None
        if isinstance(layer, TTLinear):
            y, events = tt_linear_s8(xc, cores, bias, sc.steps)
        else:
            y, events = linear_s8(xc, cores[0], bias, *sc.steps[0])
        if queries is not None and y.dim() == 2:
            y = y.expand(queries, *y.shape)
        rows = x.shape[-2] * math.prod(torch.broadcast_shapes(x.shape[:-2], (queries,) if queries else ()))
        st = tt_steps(core_shapes(layer))
        self.count("macs_int8xint8", rows * sum(s.values * s.terms for s in st))
        self.count("requantizations", rows * sum(s.values for s in st))
        self.count(f"saturations_layer{index}", events["saturated"])
        if events["wrapped"]:
            self.count(f"accumulator_wraps_layer{index}", events["wrapped"])
        self.count("linear_calls")
        self.count("rows", rows)
        return (y.to(torch.float64) * sc.s_out[-1]).to(torch.float32)

    def activation(self, kind, x):
        """int8 ReLU: max(code, 0) x s = max(code x s, 0) for s > 0, so the values' ReLU is the codes'."""
        if kind != "relu":
            raise ValueError(f"backend mcu: activation {kind!r} is not modelled (int8 ReLU only)")
        self.count("activation_relu", x.numel())
        return torch.relu(x)


def _codes(t: torch.Tensor, dims: int, lo: int, hi: int) -> torch.Tensor:
    """Integer codes of a parameter tensor (perturbed codes rounded half away from zero and clamped, as the
    device stores them); a leading query axis made by expand stays shared (dropped: the kernels broadcast)."""
    if t.dim() > dims and t.stride(0) == 0:
        t = t[0]
    return _round_half_away(t.to(torch.float64)).clamp(lo, hi).to(torch.int64)
