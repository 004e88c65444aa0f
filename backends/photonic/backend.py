"""The ``photonic`` backend: every linear layer runs on simulated MZI-mesh blocks (chip.py) with the
non-idealities of noise.py.

Two ways to train (option ``params``):
- ``weights``: the host trains float TT cores; whenever a layer runs, each core is cut into blocks,
  decomposed into phases (SVD + Clements) and programmed, so the noise acts on the chip only;
- ``phases``: in-situ training: the trainable parameters *are* the block phases (n^2 per block, see
  :meth:`param_space`); the host never sees a weight. Gains and output signs are fixed when the start
  weights are programmed (:meth:`encode`).
A TT layer's cores are cascaded optically (the tensorized optical NN of Zhao et al., arXiv:2401.00413), so light is detected
once per layer: W_eff is assembled from the realised blocks and applied to the rows; detector noise and the
ADC act on the layer output; biases are added electronically.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from hwsim.backends.base import Backend, Capabilities
from hwsim.backends.fixed.layer import dense_as_core
from hwsim.backends.photonic import calibration
from hwsim.backends.photonic.chip import (ChipState, Tiling, commanded, core_matrix, encode_blocks, matrix_core, realise)
from hwsim.backends.photonic.mesh import LAYOUTS, layout
from hwsim.backends.photonic.noise import Noise, build_noise
from hwsim.model import Linear, TTLinear
from hwsim.params import ParamSpace
from hwsim.tt import to_dense

PARAMS = ("weights", "phases")
CALIBRATE = (False, "gain", True)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Region:
    """The blocks of one weight tensor ("<layer>.core<k>" or "<layer>.weight") on the chip."""

    name: str
    core_shape: tuple[int, int, int, int]
    tiling: Tiling
    state: ChipState
    gains: torch.Tensor | None = None        # (blocks,) fixed in phases mode, set by encode
    signs: torch.Tensor | None = None        # (blocks, 2n)


class PhotonicBackend(Backend):
    """A tensorized optical neural network chip: TT cores on n x n MZI-mesh blocks."""

    name = "photonic"
    capabilities = Capabilities(exact=False, differentiable=False, multilinear=False)
    architecture = "photonic"

    @dataclass
    class Options:
        """params: weights | phases; noise: a preset (ideal | typical | pessimistic) or a mapping
        {preset, <noise key>: value} (backends/photonic/noise.py); block: mesh size n; mesh: clements |
        reck; chip_seed: draws the chip's frozen variations; calibrate: false | gain (measure every block's
        loss and cancel it with its electronic gain) | true (measure and cancel the phase biases and the loss)
        before use; dtype: float32 | float64 of the layer GEMM; symbol_rate_hz: modulator rate
        (time counters)."""

        params: str = "weights"
        noise: Any = "ideal"
        block: int = 8
        mesh: str = "clements"
        chip_seed: int = 0
        calibrate: bool | str = False
        dtype: str = "float32"
        symbol_rate_hz: float = 1e10

        def __post_init__(self):
            _check("params", self.params, PARAMS)
            _check("mesh", self.mesh, LAYOUTS)
            _check("dtype", self.dtype, tuple(DTYPES))
            if not isinstance(self.block, int) or not 2 <= self.block <= 64:
                raise ValueError(f"backend.block: {self.block!r} is not allowed; use an integer mesh size in 2..64")
            if self.calibrate not in CALIBRATE or not isinstance(self.calibrate, (bool, str)):
                raise ValueError(f"backend.calibrate: {self.calibrate!r} is not allowed; use false, gain (block "
                                 f"gains only) or true (phase biases and gains)")
            if not self.symbol_rate_hz > 0:
                raise ValueError(f"backend.symbol_rate_hz: {self.symbol_rate_hz!r} is not allowed; use a rate > 0")
            self.noise = build_noise(self.noise)

    def __init__(self, options: "PhotonicBackend.Options | None" = None):
        super().__init__(options)
        self.noise: Noise = self.options.noise
        self.layout = layout(self.options.block, self.options.mesh)
        self._regions: dict[str, Region] = {}
        self._layers: dict[int, int] = {}
        self._network = None
        seed = self.options.chip_seed
        self._drift_gen = torch.Generator().manual_seed(seed + 1)
        self._read_gen = torch.Generator().manual_seed(seed + 2)
        self._held: dict[int, tuple] = {}      # layer -> (its tensors, their key, cores, heat) as last programmed

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.options.dtype]

    def architecture_keys(self) -> dict:
        o = self.options
        return {"block": (o.block, "block"), "mesh": (o.mesh, "mesh"), "symbol_rate_hz": (o.symbol_rate_hz, "symbol_rate_hz")}

    def converter_widths(self) -> tuple[int | None, int | None]:
        """(ADC bits, phase-DAC bits) of the chip's noise model (None: not modelled)."""
        return self.noise.adc_bits, self.noise.dac_bits

    # --- set-up ------------------------------------------------------------------------------------
    def bind(self, network) -> None:
        """Place every weight tensor of ``network`` on its own blocks and draw the chip's variations."""
        self._network = network
        gen = torch.Generator().manual_seed(self.options.chip_seed)
        n = self.options.block
        for i, layer in enumerate(network.layers):
            if not isinstance(layer, Linear):
                continue
            self._layers[id(layer)] = i
            for local, shape in _core_shapes(layer):
                r, k, m, s = shape
                tiling = Tiling(m * s, r * k, n)
                name = f"{i}.{local}"
                self._regions[name] = Region(name, shape, tiling, ChipState(tiling.blocks, n, self.noise, gen))
        if self.options.calibrate:
            self.calibrate(self.options.calibrate)

    def calibrate(self, what: bool | str = True) -> dict:
        """From forward measurements of each block, cancel every block's loss (``what="gain"``) or every
        shifter's phase bias and the loss (True); returns the report of :func:`calibration.calibrate_gains`
        or :func:`calibration.calibrate_biases` (queries are also counted)."""
        routine = calibration.calibrate_gains if what == "gain" else calibration.calibrate_biases
        self._held.clear()
        report = routine(list(self._regions.values()), self.layout, self.noise, self._read_gen, self._read_out)
        self.count("calibration_queries", report["queries"])
        return report

    def param_space(self, network) -> ParamSpace:
        if self.options.params == "weights":
            return network.space
        phases = self.options.block ** 2
        shapes = []
        for e in network.space.entries:
            region = self._regions.get(e.name)
            shapes.append((e.name, (region.tiling.blocks, phases) if region else e.shape))
        return ParamSpace(shapes)

    def encode(self, theta: torch.Tensor) -> torch.Tensor:
        """Float weights (d,) -> phases (phases mode; fixes every block's gain and output signs). The phases
        are the DAC settings programmed (wrapped, on the DAC grid), so that training starts in the middle of
        a DAC level, not on a rounding edge where the smallest step flips the level."""
        if self.options.params == "weights":
            return theta
        self._held.clear()
        space = self._bound().space
        tensors = space.unflatten(theta)
        for name, region in self._regions.items():
            phases, region.gains, region.signs = encode_blocks(region.tiling.split(
                core_matrix(_as_core(name, tensors[name]))), self.layout)
            tensors[name] = commanded(phases, self.options.block, self.noise).to(theta.dtype)
        return self.param_space(self._network).flatten(tensors)

    def decode(self, theta: torch.Tensor) -> torch.Tensor:
        """Phases -> the float weights they stand for on an ideal chip (identity in weights mode)."""
        if self.options.params == "weights":
            return theta
        tensors = self.param_space(self._bound()).unflatten(theta)
        for name, region in self._regions.items():
            blocks = realise(tensors[name], region.gains, region.signs, self.layout, Noise())
            core = matrix_core(region.tiling.join(blocks), region.core_shape)
            tensors[name] = _from_core(name, core).to(theta.dtype)
        return self._network.space.flatten(tensors)

    def project_(self, theta: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Phases mode: keep attenuator phases in [0, pi] (mesh phases are periodic)."""
        if self.options.params == "weights":
            return
        n = self.options.block
        m = n * (n - 1) // 2
        for e in self.param_space(self._network).entries:
            if self._regions.get(e.name):
                view = theta[e.slice].view(e.shape)
                view[:, m:m + n].clamp_(0.0, math.pi)

    def advance(self, steps: int = 1) -> None:
        """Simulated time passes (optimizer steps): the phases drift."""
        self._held.clear()
        for region in self._regions.values():
            region.state.advance(self.noise, steps, self._drift_gen)

    def check_perturbation(self, mu: float) -> str | None:
        step = self.noise.dac_step
        if self.options.params == "phases" and step is not None and mu < step / 2:
            return (f"mu={mu} rad is below half the phase DAC step {step:.4g} rad ({self.noise.dac_bits} bits): "
                    f"most perturbations round away; use mu >= {step:.3g}")
        return None

    def state_dict(self) -> dict:
        """Counters, the drift and read-noise generators, and per region the drift so far, the calibration
        (bias corrections, gain factors) and, in phases mode, the gains and output signs fixed by encode."""
        regions = {name: {"drift": r.state.drift, "correction": r.state.correction, "gain": r.state.gain,
                          "gains": r.gains, "signs": r.signs} for name, r in self._regions.items()}
        return {**super().state_dict(), "drift_rng": self._drift_gen.get_state(),
                "read_rng": self._read_gen.get_state(), "regions": regions}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._held.clear()
        if set(state["regions"]) != set(self._regions):
            raise ValueError(f"photonic state: regions {sorted(state['regions'])} do not match the chip's "
                             f"{sorted(self._regions)}")
        self._drift_gen.set_state(state["drift_rng"])
        self._read_gen.set_state(state["read_rng"])
        for name, saved in state["regions"].items():
            region = self._regions[name]
            for key in ("drift", "correction", "gain"):
                getattr(region.state, key).copy_(saved[key])
            region.gains, region.signs = saved["gains"], saved["signs"]

    # --- execution ---------------------------------------------------------------------------------
    def linear(self, layer, params, x, queries):
        i = self._layers.get(id(layer))
        if i is None:
            raise RuntimeError("the photonic backend is not bound to this network: call backend.bind(network) first")
        cores, heat = self._programmed(i, layer, params)
        precision = self.dtype if not cores[0].is_complex() else self.dtype.to_complex()
        weight = to_dense([c.to(precision) for c in cores])                          # W in the GEMM's precision
        weight = weight.real if weight.is_complex() else weight     # coherent detection reads the real part
        y = torch.matmul(x.to(self.dtype), weight.transpose(-1, -2))
        if queries is not None and y.dim() == 2:     # one setting shared by the queries, each run on its own
            y = y.expand(queries, *y.shape)
        q = math.prod(y.shape[:-2])
        rows = x.shape[-2]
        y = self._read_out(y, i)
        if layer.bias:
            b = params["bias"].to(self.dtype)
            y = y + (b.unsqueeze(-2) if b.dim() > 1 else b)
        for name, load in heat.items():       # the load held while the q evaluations' rows pass, row-weighted
            self.count(f"held_pi_rows:{name}", load * q * rows)
        self.count("linear_calls")
        self.count("rows", q * rows)
        return y

    def _programmed(self, i: int, layer, params: dict) -> tuple[list[torch.Tensor], dict[str, float]]:
        """The cores layer i realises for ``params`` (float64 / complex128) and the heaters' load per region
        (see :meth:`_program`). A call with the tensors of the layer's previous call, unchanged (the next
        block of rows of the same queries, or the next queries sharing the layer), reuses them: a simulation
        shortcut; what the device is charged for programming is counted above the seam
        (``Backend.count_programs``)."""
        regions = [self._regions[f"{i}.{local}"] for local, _ in _core_shapes(layer)]
        dims = self._dims(regions)
        tensors = [_shared(params[r.name.split(".", 1)[1]], d) for r, d in zip(regions, dims)]
        # Same storage, layout and version counter = same values, since the held tensors stay alive; and the
        # same keyed stream (a training step's queries never reuse a setting held from outside the step, so
        # a run resumed from a checkpoint draws what an uninterrupted one does).
        key = [self._keys[0] if self._keys else None] + [(t.data_ptr(), t.shape, t.stride(), t._version) for t in tensors]
        held = self._held.get(i)
        if held is not None and held[1] == key:
            return held[2], held[3]
        cores, heat = self._program(regions, tensors)
        self._held[i] = (tensors, key, cores, heat)
        return cores, heat

    def _dims(self, regions: list[Region]) -> list[int]:
        """Dimensions of each region's parameter tensor without a query axis."""
        return [2 if self.options.params == "phases" else _param_dims(r.name) for r in regions]

    def _program(self, regions: list[Region], tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], dict[str, float]]:
        """The cores (..., r, n, m, r') the chip realises for a layer's parameter tensors (weights or
        phases), and per region the sum of |commanded phase| / pi over its shifters (the heaters' load,
        mean over queries). Tensors with the same leading (query) axes are realised together, in one call."""
        phases_mode = self.options.params == "phases"
        dims = self._dims(regions)
        tensors = [_shared(t, d) for t, d in zip(tensors, dims)]
        groups: dict[tuple, list[int]] = {}
        for k, (tensor, d) in enumerate(zip(tensors, dims)):
            groups.setdefault(tuple(tensor.shape[:tensor.dim() - d]), []).append(k)
        cores: list[torch.Tensor | None] = [None] * len(regions)
        heat: dict[str, float] = {}
        for lead, group in groups.items():
            members = [regions[k] for k in group]
            if phases_mode:
                if any(r.gains is None for r in members):
                    raise RuntimeError("params: phases needs the start weights programmed first: call backend.encode(theta)")
                phases = torch.cat([tensors[k] for k in group], -2)
                gains = torch.cat([r.gains for r in members])
                signs = torch.cat([r.signs for r in members])
            else:
                phases, gains, signs = encode_blocks(torch.cat([r.tiling.split(core_matrix(_as_core(r.name, tensors[k])))
                                                                for k, r in zip(group, members)], -3), self.layout)
            load = commanded(phases, self.options.block, self.noise).abs().sum(-1).reshape(-1, phases.shape[-2]).sum(0)
            for r, part in zip(members, load.split([r.tiling.blocks for r in members])):
                heat[r.name] = float(part.sum()) / (math.pi * math.prod(lead))
            state = members[0].state if len(members) == 1 else ChipState.concat([r.state for r in members])
            blocks = realise(phases, gains, signs, self.layout, self.noise, state)
            for k, r, part in zip(group, members, blocks.split([r.tiling.blocks for r in members], -3)):
                cores[k] = matrix_core(r.tiling.join(part), r.core_shape)
        return cores, heat

    def _read_out(self, y: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Photodetection and ADC of outputs (..., B, out) of linear layer ``layer``; the full scale is each
        query's largest |y|."""
        nz = self.noise
        if not (nz.shot_noise or nz.thermal_noise or nz.adc_bits):
            return y
        magnitude = y.abs()
        fs = magnitude.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
        if nz.shot_noise or nz.thermal_noise:        # std = sqrt((thermal fs)^2 + shot^2 fs |y|), in place
            std = magnitude.mul_(nz.shot_noise ** 2 * fs).add_((nz.thermal_noise * fs) ** 2).sqrt_()
            y = y + std.mul_(self._standard_normal(y.shape, y.dtype, layer))
        if nz.adc_bits:
            top = 2 ** (nz.adc_bits - 1) - 1
            step = fs / top
            y = y.div(step).round_().clamp_(-top, top).mul_(step)
        return y

    def _standard_normal(self, shape: torch.Size, dtype: torch.dtype, layer: int) -> torch.Tensor:
        """Read-out noise of shape (..., B, out). Inside :meth:`keyed` each query's (B, out) comes from its
        own stream (chip seed, step, query, layer), consumed in order by the calls of that query (blocks of
        rows); outputs without a query axis (a prefix the host caches for all queries) use query -1.
        Outside, from the chip's read-noise generator in call order (evaluation, calibration)."""
        if self._keys is None:
            return torch.randn(shape, generator=self._read_gen, dtype=dtype)
        stream, queries = self._keys
        ids = queries.tolist() if len(shape) > 2 else [-1]
        if len(shape) > 2 and math.prod(shape[:-2]) != len(ids):
            raise RuntimeError(f"keyed read-out: {math.prod(shape[:-2])} queries in the output, {len(ids)} keys")
        draws = [torch.randn(shape[-2:], generator=self.noise_stream(stream, q, layer, self.options.chip_seed), dtype=dtype) for q in ids]
        return torch.stack(draws).reshape(shape)

    # --- reporting ---------------------------------------------------------------------------------
    def mzi_counts(self) -> dict[str, int]:
        """MZIs of every weight tensor's blocks (n^2 per block), and the total."""
        per = {name: r.tiling.blocks * self.layout.n ** 2 for name, r in self._regions.items()}
        return {**per, "total": sum(per.values())}

    def _bound(self):
        if self._network is None:
            raise RuntimeError("the photonic backend is not bound to a network: call backend.bind(network) first")
        return self._network


def _core_shapes(layer) -> list[tuple[str, tuple[int, int, int, int]]]:
    """(local tensor name, core shape) of every weight tensor of a linear layer; a dense weight is one core."""
    if isinstance(layer, TTLinear):
        return list(zip(layer.core_names, layer.tt.core_shapes))
    return [("weight", (1, layer.in_features, layer.out_features, 1))]


def _param_dims(name: str) -> int:
    return 2 if name.endswith(".weight") else 4


def _as_core(name: str, t: torch.Tensor) -> torch.Tensor:
    return dense_as_core(t) if name.endswith("weight") else t


def _from_core(name: str, core: torch.Tensor) -> torch.Tensor:
    return core[..., 0, :, :, 0].transpose(-1, -2) if name.endswith("weight") else core


def _shared(t: torch.Tensor, dims: int) -> torch.Tensor:
    """Drop a leading query axis made by expand (stride 0): program once for all queries."""
    return t[0] if t.dim() > dims and t.stride(0) == 0 else t


def _check(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"backend.{key}: {value!r} is not allowed; use one of {', '.join(allowed)}")
