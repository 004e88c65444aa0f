"""The ``photonic`` backend: every linear layer runs on simulated MZI-mesh blocks (chip.py) with the
non-idealities of noise.py.

Two ways to train (option ``params``):
- ``weights``: the host trains float TT cores; whenever a layer runs, each core is cut into blocks,
  decomposed into phases (SVD + Clements) and programmed, so the noise acts on the chip only;
- ``phases``: in-situ training: the trainable parameters *are* the block phases (n^2 per block, see
  :meth:`param_space`); the host never sees a weight. Gains and output signs are fixed when the start
  weights are programmed (:meth:`encode`).
The chip runs the mapping of its architecture (hwsim.arch; docs/photonic.md): a TT layer's cores (the
tensorized optical NN of Zhao et al., arXiv:2401.00413) run one after another on their own blocks, every
core's inputs converted by the modulators' DACs and its outputs read by detectors and ADCs (with the
partial sums of a core's block columns added as photocurrents or digitally); biases are added
electronically after the last core.
"""
from __future__ import annotations

import concurrent.futures
import functools
import math
import os
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import torch

from hwsim.backends.base import Backend, Capabilities, DeviceChoice
from hwsim.backends.fixed.layer import dense_as_core
from hwsim.backends.photonic import calibration
from hwsim.backends.photonic.architecture import PHOTONIC, PhotonicChip, map_photonic
from hwsim.backends.photonic.chip import (ChipState, Tiling, commanded, core_matrix, encode_blocks, matrix_core, optics,
                                          realise)
from hwsim.backends.photonic.mesh import layout
from hwsim.backends.photonic.noise import Noise, build_noise
from hwsim.errors import ConfigError
from hwsim.model import Linear, TTLinear
from hwsim.params import ParamSpace
from hwsim.text import excerpt

CALIBRATE = (False, "gain", True)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Region:
    """The blocks of one weight tensor ("<layer>.core<k>" or "<layer>.weight") on the chip."""

    name: str
    core_shape: tuple[int, int, int, int]
    tiling: Tiling
    state: ChipState                          # copies x blocks, copy-major: every copy its own variations
    copies: int = 1                           # physical copies of the blocks (architecture.cores: replicated)
    gains: torch.Tensor | None = None        # (blocks,) fixed in phases mode, set by encode
    signs: torch.Tensor | None = None        # (blocks, 2n)


class PhotonicBackend(Backend):
    """A tensorized optical neural network chip: TT cores on n x n MZI-mesh blocks."""

    name = "photonic"
    summary = "noisy MZI-mesh blocks (SVD + Clements), converters, drift and calibration: a tensorized optical chip"
    capabilities = Capabilities(exact=False, differentiable=False, multilinear=False, chip_instances=True,
                                devices=("cpu", "cuda"))
    architecture = PHOTONIC

    @dataclass
    class Options:
        """params: weights | phases; noise: a preset (ideal | typical | pessimistic) or a mapping
        {preset, <noise key>: value} (backends/photonic/noise.py); block: mesh size n; mesh: clements |
        reck; chip_seed: draws the chip's frozen variations; calibrate: false | gain (measure every block's
        loss and cancel it with its electronic gain) | true (measure every shifter's offset and
        power-to-phase response and every block's scale through the chip's DACs and detectors, and program
        through them: calibration.calibrate_mesh) before use; recalibrate_every: optimizer steps between
        recalibrations (drift), null: never; recalibrate_threshold: recalibrate when the monitor's relative
        rms deviation (a reading at one reference setting vs the calibrated model's prediction) exceeds it,
        checked every monitor_every steps; dtype: float32 | float64 of the contractions; symbol_rate_hz:
        modulator rate (the architecture's, for the optical time); device: cpu | cuda | auto, where the
        optical data path runs (modulators, core passes, read-out); the chip's model (its variations,
        calibration, the blocks a programming realises) and every noise draw stay on the host, so a chip
        is the same chip, with the same noise, on every device."""

        params: Literal["weights", "phases"] = "weights"
        noise: Any = "ideal"
        block: int = 8
        mesh: Literal["clements", "reck"] = "clements"
        chip_seed: int = 0
        calibrate: Union[bool, Literal["gain"]] = False
        recalibrate_every: Optional[int] = None
        recalibrate_threshold: Optional[float] = None
        monitor_every: int = 50
        dtype: Literal["float32", "float64"] = "float32"
        symbol_rate_hz: float = 1e10
        device: DeviceChoice = "cpu"

        def __post_init__(self):
            if not isinstance(self.block, int) or not 2 <= self.block <= 64:
                raise ConfigError(f"backend.block: {excerpt(self.block)} is not allowed; use an integer mesh size in 2..64")
            if self.calibrate not in CALIBRATE or not isinstance(self.calibrate, (bool, str)):
                raise ConfigError(f"backend.calibrate: {excerpt(self.calibrate)} is not allowed; use false, gain (block "
                                 f"gains only) or true (phase offsets, responses and gains)")
            for key in ("recalibrate_every", "monitor_every"):
                value = getattr(self, key)
                if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                    raise ConfigError(f"backend.{key}: {excerpt(value)} is not allowed; use an integer >= 1 (optimizer steps)")
            threshold = self.recalibrate_threshold
            if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                          or not 0 < threshold < math.inf):
                raise ConfigError(f"backend.recalibrate_threshold: {excerpt(threshold)} is not allowed; use a relative "
                                 f"deviation > 0 (e.g. 0.02)")
            if (self.recalibrate_every is not None or threshold is not None) and self.calibrate is not True:
                key = "recalibrate_every" if self.recalibrate_every is not None else "recalibrate_threshold"
                raise ConfigError(f"backend.{key}: needs backend.calibrate: true (a recalibration refines a phase "
                                 f"calibration), got calibrate: {excerpt(self.calibrate)}")
            if not (isinstance(self.symbol_rate_hz, (int, float)) and math.isfinite(self.symbol_rate_hz)
                    and self.symbol_rate_hz > 0):
                raise ConfigError(f"backend.symbol_rate_hz: {excerpt(self.symbol_rate_hz)} is not allowed; use a rate > 0")
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
        self._raw: dict[str, torch.Tensor] = {}  # region -> raw commands a calibration set (units, n^2)
        self._since_calibration = 0              # optimizer steps since the last (re)calibration
        self._monitor_gen = torch.Generator().manual_seed(seed + 3)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.options.dtype]

    def architecture_keys(self) -> dict:
        o = self.options
        return {"block": (o.block, "block"), "mesh": (o.mesh, "mesh"), "symbol_rate_hz": (o.symbol_rate_hz, "symbol_rate_hz")}

    def storage_bits(self) -> tuple[int, int]:
        """In-situ (``params: phases``): phases at the phase DACs' width, activations at the ADCs'; else
        the host's floats."""
        if self.options.params == "phases":
            return self.noise.dac_bits or 32, self.noise.adc_bits or 32
        return super().storage_bits()

    def converter_widths(self) -> tuple[int | None, int | None, int | None]:
        """(ADC, phase-DAC, modulator-DAC bits) of the chip's noise model (None: not modelled)."""
        return self.noise.adc_bits, self.noise.dac_bits, self.noise.input_bits

    # --- set-up ------------------------------------------------------------------------------------
    def bind(self, network, architecture=None) -> None:
        """Map ``network`` onto the chip of ``architecture`` (hwsim.arch.spec.PhotonicChip; default: the
        shipped one with this backend's options): every weight tensor on its own blocks, a copy per
        sub-vector when the cores are replicated; then draw the chip's variations, every copy its own."""
        self._network = network
        arch = architecture or PhotonicChip(block=self.options.block, mesh=self.options.mesh,
                                            symbol_rate_hz=self.options.symbol_rate_hz)
        self.mapping = map_photonic(network, arch, *self.converter_widths())
        placed = {c.region: c for layer in self.mapping.layers for c in layer.cores}
        gen = torch.Generator().manual_seed(self.options.chip_seed)
        n = self.options.block
        for i, layer in enumerate(network.layers):
            if not isinstance(layer, Linear):
                continue
            self._layers[id(layer)] = i
            for local, shape in _core_shapes(layer):
                r, k, m, s = shape
                tiling, name = Tiling(m * s, r * k, n), f"{i}.{local}"
                copies = placed[name].copies
                self._regions[name] = Region(name, shape, tiling, ChipState(tiling.blocks * copies, n, self.noise, gen),
                                             copies)
        if self.options.calibrate:
            self.calibrate(self.options.calibrate)

    def calibrate(self, what: bool | str = True, fresh: bool = True) -> dict:
        """Calibrate the chip through :meth:`port` (its DACs and detectors only): ``what="gain"`` every
        block's gain (calibration.calibrate_gains), True every shifter's offset and power-to-phase response
        and every block's scale (calibration.calibrate_mesh; ``fresh`` False: a recalibration from the
        current estimate). Installs the result and returns a report: what the calibration cost
        (``calibration_*`` counters, also added to the backend's) and, from the simulator's truth (never
        seen by the calibration), the rms offset error before and after (rad; it counts gauge-equivalent
        offsets, which program the same matrices, as errors) and the gauge-aware ``matrix_error`` before and
        after (:meth:`matrix_error`: rms and max over blocks)."""
        self._held.clear()
        before = self.counters()
        port = self.port()
        regions = list(self._regions.values())
        truth = lambda: torch.cat([(r.state.bias + r.state.drift).flatten() for r in regions])     # noqa: E731
        error_before = calibration._wrap(truth())                            # an uncalibrated chip's
        matrix_before = self.matrix_error()
        if what == "gain":
            found = calibration.calibrate_gains(port, self._read_gen)
            for r in regions:
                r.state.correction.zero_()
                r.state.response.fill_(1.0)
                r.state.gain.copy_(found["gains"][r.name])
            report = {"loss_db": found["loss_db"]}
        else:
            previous = None if fresh else {r.name: calibration.Estimate(r.state.correction, r.state.response,
                                                                           None, r.state.transmission, None)
                                           for r in regions}
            found = calibration.calibrate_mesh(port, self._read_gen, previous)
            for r in regions:
                est = found[r.name]
                r.state.correction.copy_(est.offset)
                r.state.response.copy_(est.response)
                r.state.transmission.copy_(est.transmission)
                r.state.gain.copy_(1.0 / (est.scale * calibration.path_loss(est.transmission, self.layout)))
            error_after = calibration._wrap(truth() - torch.cat([r.state.correction.flatten() for r in regions]))
            report = {"rms_before": float(error_before.pow(2).mean().sqrt()),
                      "rms_after": float(error_after.pow(2).mean().sqrt()),
                      "fit_residual": float(torch.cat([found[r.name].residual for r in regions]).mean())}
            (report["matrix_error_before"], _), (report["matrix_error"], report["matrix_error_max"]) = \
                matrix_before, self.matrix_error()
        self._raw.clear()
        self._since_calibration = 0
        self.count("calibration_runs")
        spent = {k: v - before.get(k, 0) for k, v in self.counters().items() if k.startswith("calibration_")}
        return {**report, **spent}

    def matrix_error(self, settings: int = 4) -> tuple[float, float]:
        """The gauge-aware calibration error, from the simulator's truth (never seen by a calibration): every
        block programmed through its calibration at ``settings`` random phase settings (mesh angles in
        [-pi/2, pi/2], attenuators in [0, pi/2]; its own generator, chip_seed + 5) vs the ideal block at those
        phases; per block the relative Frobenius error ||W_chip - W_ideal|| / ||W_ideal|| over the settings
        (W_chip: real part, no read-out noise; DAC steps, crosstalk, imbalance and loss stay in it). Returns
        (rms, max) over all blocks of all regions."""
        gen = torch.Generator().manual_seed(self.options.chip_seed + 5)
        n, errors = self.options.block, []
        for r in self._regions.values():
            units = r.state.gain.shape[0]
            target = calibration._random_settings(settings, units, self.layout, gen)      # (S, units, n^2)
            ones, signs = torch.ones(units, dtype=torch.float64), torch.ones(units, 2 * n, dtype=torch.float64)
            chip = realise(target, ones, signs, self.layout, self.noise, r.state)
            chip = chip.real if chip.is_complex() else chip
            ideal = optics(target, ones, signs, self.layout, Noise())                     # (S, units, n, n)
            errors.append(((chip - ideal).pow(2).sum((0, 2, 3)) / ideal.pow(2).sum((0, 2, 3))).sqrt())
        err = torch.cat(errors)
        return float(err.pow(2).mean().sqrt()), float(err.max())

    def port(self) -> calibration.ChipPort:
        """The chip as a lab sees it (calibration.ChipPort): set raw phase commands through the DACs and read
        the detectors, through this chip's mapping (modulators, partial sums, read-out noise and ADCs); every
        setting and probe is counted (``calibration_*``: settings, phase writes, the heaters' load per
        setting, symbols, modulations, detections). Every block is assumed to have its n modulators and n
        detectors, also where the mapping leaves padding unused."""
        n = self.options.block
        cores = {c.region: c for layer in self.mapping.layers for c in layer.cores}
        infos = [calibration.RegionInfo(name, r.tiling.grid, r.copies) for name, r in self._regions.items()]

        def set_phases(name: str, commands: torch.Tensor) -> None:
            region = self._regions[name]
            raw = commands.to(torch.float64).reshape(region.state.gain.shape[0], n * n).clone()
            ones = torch.ones(raw.shape[0], dtype=torch.float64)
            w = realise(raw, ones, torch.ones(raw.shape[0], 2 * n, dtype=torch.float64), self.layout, self.noise,
                        region.state, calibrated=False)
            self._raw[name] = w.real if w.is_complex() else w                  # what the settled blocks do
            self._held.clear()
            self.count("calibration_settings")
            self.count("calibration_phase_writes", raw.numel())
            self.count("calibration_held_pi", float(commanded(raw, n, self.noise).abs().sum()) / math.pi)

        def read(name: str, x: torch.Tensor) -> torch.Tensor:
            region, core = self._regions[name], cores[name]
            (gr, gc), copies = region.tiling.grid, region.copies
            w = self._raw[name].reshape(copies, gr, gc, n, n)
            x = x.to(torch.float64)
            if self.noise.input_bits:
                x = _quantize(x, self.noise.input_bits, _largest(x, 1))
            k = x.shape[1]
            if core.digital and gc > 1:                   # every block read on its own, then added
                y = torch.einsum("pkjc,pijoc->pkijo", x.reshape(copies, k, gc, n), w)
                y = self._read_out(y, scale_dims=3).sum(-2).flatten(-2)
            else:
                y = torch.einsum("pkjc,pijoc->pkio", x.reshape(copies, k, gc, n), w).flatten(-2)
                y = self._read_out(y, scale_dims=1)               # photocurrents added, one read per output
            self.count("calibration_symbols", k)
            self.count("calibration_modulations", copies * k * gc * n)
            self.count("calibration_detections", copies * k * gr * n * (gc if core.digital and gc > 1 else 1))
            return y

        return calibration.ChipPort(infos, n, self.options.mesh, self.noise.dac_bits, set_phases, read)

    def monitor(self) -> float:
        """The drift monitor: every unit read at one random setting programmed through the calibration,
        compared with the calibrated model's prediction; returns the relative rms deviation (counted like
        the calibration's readings)."""
        port, lay = self.port(), self.layout
        num, den = 0.0, 0.0
        for info in port.regions:
            state = self._regions[info.name].state
            target = calibration._random_settings(1, info.units, lay, self._monitor_gen)[0]
            cmd = calibration._dac((target - state.correction) / state.response, port)
            read = calibration.measure(port, [info], cmd)
            scale = 1 / (state.gain * calibration.path_loss(state.transmission, lay))    # the fitted scale
            params = torch.cat([state.correction, state.response, scale.log()[:, None], state.transmission[:, None]], -1)
            want = calibration.model(params, cmd[None], lay)[0]
            num += float((read - want).pow(2).sum())
            den += float(read.pow(2).sum())
        self._raw.clear()
        self._held.clear()
        self.count("calibration_monitor_reads")
        return math.sqrt(num / max(den, 1e-30))

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
        tensors = space.unflatten(self._host(theta))
        for name, region in self._regions.items():
            phases, region.gains, region.signs = encode_blocks(region.tiling.split(
                core_matrix(_as_core(name, tensors[name]))), self.layout)
            tensors[name] = commanded(phases, self.options.block, self.noise).to(theta.dtype)
        return self.param_space(self._network).flatten(tensors).to(theta.device)

    def decode(self, theta: torch.Tensor) -> torch.Tensor:
        """Phases -> the float weights they stand for on an ideal chip (identity in weights mode)."""
        if self.options.params == "weights":
            return theta
        tensors = self.param_space(self._bound()).unflatten(self._host(theta))
        for name, region in self._regions.items():
            blocks = realise(tensors[name], region.gains, region.signs, self.layout, Noise())
            core = matrix_core(region.tiling.join(blocks), region.core_shape)
            tensors[name] = _from_core(name, core).to(theta.dtype)
        return self._network.space.flatten(tensors).to(theta.device)

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
        """Simulated time passes (optimizer steps): the phases drift; a recalibration runs when it is due
        (``recalibrate_every``) or when the monitor, read every ``monitor_every`` steps, deviates by more
        than ``recalibrate_threshold``."""
        self._held.clear()
        for region in self._regions.values():
            region.state.advance(self.noise, steps, self._drift_gen)
        o = self.options
        if o.recalibrate_every is None and o.recalibrate_threshold is None:
            return
        before = self._since_calibration
        self._since_calibration += steps
        if o.recalibrate_every is not None and self._since_calibration >= o.recalibrate_every:
            self.calibrate(True, fresh=False)
        elif (o.recalibrate_threshold is not None
              and self._since_calibration // o.monitor_every > before // o.monitor_every
              and self.monitor() > o.recalibrate_threshold):
            self.calibrate(True, fresh=False)

    def check_perturbation(self, mu: float) -> str | None:
        step = self.noise.dac_step
        if self.options.params == "phases" and step is not None and mu < step / 2:
            return (f"mu={mu} rad is below half the phase DAC step {step:.4g} rad ({self.noise.dac_bits} bits): "
                    f"most perturbations round away; use mu >= {step:.3g}")
        return None

    def state_dict(self) -> dict:
        """Counters, the drift and read-noise generators, and per region the drift so far, the calibration
        (bias corrections, responses, gain factors, transmissions) and, in phases mode, the gains and output signs fixed by encode."""
        regions = {name: {"drift": r.state.drift, "correction": r.state.correction, "response": r.state.response,
                          "gain": r.state.gain, "transmission": r.state.transmission, "gains": r.gains, "signs": r.signs}
                   for name, r in self._regions.items()}
        return {**super().state_dict(), "drift_rng": self._drift_gen.get_state(),
                "read_rng": self._read_gen.get_state(), "monitor_rng": self._monitor_gen.get_state(),
                "since_calibration": self._since_calibration, "regions": regions}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._held.clear()
        if set(state["regions"]) != set(self._regions):
            raise ValueError(f"photonic state: regions {sorted(state['regions'])} do not match the chip's "
                             f"{sorted(self._regions)}")
        self._drift_gen.set_state(state["drift_rng"])
        self._read_gen.set_state(state["read_rng"])
        if "monitor_rng" in state:
            self._monitor_gen.set_state(state["monitor_rng"])
        self._since_calibration = state.get("since_calibration", 0)
        for name, saved in state["regions"].items():
            region = self._regions[name]
            for key in ("drift", "correction", "gain"):
                getattr(region.state, key).copy_(saved[key])
            region.state.transmission.copy_(saved.get("transmission", torch.ones_like(region.state.transmission)))
            region.state.response.copy_(saved.get("response", torch.ones_like(region.state.response)))
            region.gains, region.signs = saved["gains"], saved["signs"]

    # --- execution ---------------------------------------------------------------------------------
    def linear(self, layer, params, x, queries):
        """The layer core after core, as the chip's mapping runs it: each core's sub-vectors (r_k n_k values)
        are converted by the modulators' DACs, pass the core's blocks (one sub-vector per block set and
        symbol; a replicated core: sub-vector j on copy j), every block's outputs are detected (noise,
        ADC), the block columns' partial sums added (``architecture.partial_sums``); the bias is added after
        the last core."""
        i = self._layers.get(id(layer))
        if i is None:
            raise RuntimeError("the photonic backend is not bound to this network: call backend.bind(network) first")
        blocks, heat = self._programmed(i, layer, params)
        t = x.to(self.dtype)
        if queries is not None and t.dim() == 2:      # a setting shared by the queries: each runs on its own
            t = t.expand(queries, *t.shape)
        queried = t.dim() == 3 or any(b.dim() == 4 for b in blocks.values())
        q = math.prod(torch.broadcast_shapes(t.shape[:-2], *(b.shape[:-3] for b in blocks.values())))
        rows, n_rest = x.shape[-2], layer.in_features
        t = t.reshape(*t.shape[:-1], 1, 1, n_rest)                               # (Q?, B, Md, r, Nr)
        for (local, (r, n, m, s)), core in zip(_core_shapes(layer), self.mapping.layer(i).cores):
            n_rest //= n
            t = t.reshape(*t.shape[:-2], r, n, n_rest)                           # (Q?, B, Md, r, n, Nr)
            d = t.shape[-4]
            v = t.movedim(-1, -3).reshape(*t.shape[:-5], rows, d * n_rest, r * n)   # sub-vectors (Q?, B, S, r n)
            y = self._core_pass(self._modulate(v, queried), blocks[f"{i}.{local}"], core, i, queried)
            t = y.reshape(*y.shape[:-2], d, n_rest, m, s).movedim(-3, -1).reshape(*y.shape[:-2], d * m, s, n_rest)
        y = t[..., 0, 0]
        if layer.bias:
            b = params["bias"].to(self.dtype)
            y = y + (b.unsqueeze(-2) if b.dim() > 1 else b)
        for name, load in heat.items():       # the load held while the q evaluations' rows pass, row-weighted
            self.count(f"held_pi_rows:{name}", load * q * rows)
        self.count("linear_calls")
        self.count("rows", q * rows)
        return y

    def _modulate(self, v: torch.Tensor, queried: bool) -> torch.Tensor:
        """The modulators' DACs: values (Q?, B, S, L) on ``noise.input_bits`` signed levels of each query's
        largest |value| (continuous when None)."""
        bits = self.noise.input_bits
        if not bits:
            return v
        return _quantize(v, bits, _largest(v, v.dim() - 1 if queried else v.dim()))

    def _core_pass(self, v: torch.Tensor, blocks: torch.Tensor, core, layer: int, queried: bool) -> torch.Tensor:
        """Sub-vectors v (Q?, B, S, r n) through a core's realised blocks (Q?, copies x grid, n, n) ->
        detected, digitised, the block columns' partial sums added: (Q?, B, S, m r'). Photocurrent partial
        sums (``architecture.partial_sums``): the core's blocks joined into its (m r') x (r n) matrix, one
        read-out per output; digital: every block's n outputs read on their own, then added."""
        n, (gr, gc), copies = self.options.block, core.grid, core.copies
        w = blocks.reshape(*blocks.shape[:-3], copies, gr * gc, n, n)
        per_query = v.dim() - 1 if queried else v.dim()
        if core.digital and gc > 1:
            v = torch.nn.functional.pad(v, (0, gc * n - v.shape[-1])).reshape(*v.shape[:-1], gc, n)
            w = w.reshape(*w.shape[:-3], gr, gc, n, n)
            y = (torch.einsum("...bsjc,...ijoc->...bsijo", v, w[..., 0, :, :, :, :]) if copies == 1 else
                 torch.einsum("...bsjc,...sijoc->...bsijo", v, w))                # (Q?, B, S, gr, gc, n)
            y = self._read_out(y, layer, per_query + 2).sum(-2).flatten(-2)[..., :core.step.mr]
            return y
        w = Tiling(core.step.mr, core.step.terms, n).join(w)                      # (Q?, copies, m r', r n)
        y = (torch.einsum("...bsk,...ok->...bso", v, w[..., 0, :, :]) if copies == 1 else
             torch.einsum("...bsk,...sok->...bso", v, w))
        return self._read_out(y, layer, per_query)

    def _programmed(self, i: int, layer, params: dict) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The blocks layer i realises for ``params`` and the heaters' load, per region
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
        blocks, heat = self._program(regions, tensors)
        self._held[i] = (tensors, key, blocks, heat)
        return blocks, heat

    def _dims(self, regions: list[Region]) -> list[int]:
        """Dimensions of each region's parameter tensor without a query axis."""
        return [2 if self.options.params == "phases" else _param_dims(r.name) for r in regions]

    def _program(self, regions: list[Region], tensors: list[torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """What the chip realises for a layer's parameter tensors (weights or phases): per region its blocks
        (..., copies x blocks, n, n) as the detectors read them (the real part; copy-major, row-major grid),
        and the sum of |commanded phase| / pi over one copy's shifters (the heaters' load, mean over
        queries). Tensors with the same leading (query) axes are realised together, in one call, by the
        chip's model on the host; the blocks go to the backend's device."""
        phases_mode = self.options.params == "phases"
        dims = self._dims(regions)
        tensors = [self._host(_shared(t, d)) for t, d in zip(tensors, dims)]
        groups: dict[tuple, list[int]] = {}
        for k, (tensor, d) in enumerate(zip(tensors, dims)):
            groups.setdefault(tuple(tensor.shape[:tensor.dim() - d]), []).append(k)
        out: dict[str, torch.Tensor] = {}
        heat: dict[str, float] = {}
        for lead, group in groups.items():
            members = [regions[k] for k in group]
            if phases_mode:
                if any(r.gains is None for r in members):
                    raise RuntimeError("params: phases needs the start weights programmed first: call backend.encode(theta)")
                parts = [(tensors[k], r.gains, r.signs) for k, r in zip(group, members)]
            else:
                parts = [encode_blocks(r.tiling.split(core_matrix(_as_core(r.name, tensors[k]))), self.layout)
                         for k, r in zip(group, members)]
            for r, (phases, _, _) in zip(members, parts):
                heat[r.name] = float(commanded(phases, self.options.block, self.noise).abs().sum()) / (math.pi * math.prod(lead))
            phases = torch.cat([_copies(p, r.copies, 2) for r, (p, _, _) in zip(members, parts)], -2)
            gains = torch.cat([_copies(g, r.copies, 1) for r, (_, g, _) in zip(members, parts)], -1)
            signs = torch.cat([_copies(sg, r.copies, 2) for r, (_, _, sg) in zip(members, parts)], -2)
            state = members[0].state if len(members) == 1 else ChipState.concat([r.state for r in members])
            blocks = realise(phases, gains, signs, self.layout, self.noise, state)
            blocks = (blocks.real if blocks.is_complex() else blocks).to(self.device, self.dtype, non_blocking=True)   # coherent detection
            for r, part in zip(members, blocks.split([r.tiling.blocks * r.copies for r in members], -3)):
                out[r.name] = part
        return out, heat

    def _read_out(self, y: torch.Tensor, layer: int = -1, scale_dims: int = 2) -> torch.Tensor:
        """Photodetection and ADC of detector outputs y; the full scale is the largest |y| over the last
        ``scale_dims`` dimensions (a query's outputs of a core pass; a block's response in calibration)."""
        nz = self.noise
        if not (nz.shot_noise or nz.thermal_noise or nz.adc_bits):
            return y
        fs = _largest(y, scale_dims)
        if nz.shot_noise or nz.thermal_noise:        # std = sqrt((thermal fs)^2 + shot^2 fs |y|)
            std = y.abs().mul_(nz.shot_noise ** 2 * fs).add_((nz.thermal_noise * fs) ** 2).sqrt_()
            y = std.mul_(self._standard_normal(y.shape, y.dtype, layer, scale_dims).to(y.device, non_blocking=True)).add_(y)
        if nz.adc_bits:
            y = _quantize(y, nz.adc_bits, fs)
        return y

    def _standard_normal(self, shape: torch.Size, dtype: torch.dtype, layer: int, per: int = 2) -> torch.Tensor:
        """Read-out noise of ``shape``, whose last ``per`` dimensions belong to one query. Inside
        :meth:`keyed` each query's part comes from its own stream (chip seed, step, query, layer), consumed in
        order by the calls of that query (its cores, blocks of rows); outputs without a query axis (a prefix
        the host caches for all queries) use query -1. Outside, from the chip's read-noise generator in
        call order (evaluation, calibration)."""
        if self._keys is None:
            return torch.randn(shape, generator=self._read_gen, dtype=dtype)
        stream, queries = self._keys
        lead = shape[:len(shape) - per]
        ids = queries.tolist() if lead else [-1]
        if lead and math.prod(lead) != len(ids):
            raise RuntimeError(f"keyed read-out: {math.prod(lead)} queries in the output, {len(ids)} keys")
        out = torch.empty(len(ids), *shape[len(lead):], dtype=dtype)
        gens = [self.noise_stream(stream, q, layer, self.options.chip_seed) for q in ids]

        def draw(k: int) -> None:
            torch.randn(shape[len(lead):], generator=gens[k], dtype=dtype, out=out[k])
        # every query its own generator: drawn side by side on the intra-op threads (a CPU generator draws
        # serially; the draws are a large share of a step), the same numbers in any order
        if len(ids) > 1 and torch.get_num_threads() > 1:
            list(_draw_pool(torch.get_num_threads(), os.getpid()).map(draw, range(len(ids))))
        else:
            for k in range(len(ids)):
                draw(k)
        return out.reshape(shape)

    @staticmethod
    def _host(t: torch.Tensor) -> torch.Tensor:
        """Parameters brought to the host, where the chip's model programs them (their values are read)."""
        return t.to("cpu")

    def _bound(self):
        if self._network is None:
            raise RuntimeError("the photonic backend is not bound to a network: call backend.bind(network) first")
        return self._network


@functools.lru_cache(maxsize=None)
def _draw_pool(threads: int, pid: int) -> concurrent.futures.ThreadPoolExecutor:
    """Threads for the keyed read-out draws (torch releases the GIL while it draws); one pool per process
    (``pid``: a forked child gets its own, its parent's threads do not exist there)."""
    return concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="hwsim-noise")


def _copies(t: torch.Tensor, copies: int, dims: int) -> torch.Tensor:
    """t (..., blocks, *rest) whose last ``dims`` dimensions are the block axis and its own -> (..., copies x
    blocks, *rest), copy-major (every physical copy commanded alike)."""
    if copies == 1:
        return t
    lead = t.dim() - dims
    return t.unsqueeze(lead).expand(*t.shape[:lead], copies, *t.shape[lead:]).flatten(lead, lead + 1)


def _largest(v: torch.Tensor, dims: int) -> torch.Tensor:
    """The largest |value| over the last ``dims`` dimensions (> 0), broadcastable against v."""
    flat = v.reshape(*v.shape[:v.dim() - dims], -1)
    largest = torch.maximum(flat.amax(-1), flat.amin(-1).neg_())        # faster than abs() or aminmax on CPU
    return largest.clamp_min(1e-30).reshape(*flat.shape[:-1], *([1] * dims))


def _quantize(y: torch.Tensor, bits: int, fs: torch.Tensor) -> torch.Tensor:
    """Signed converter levels k fs / (2^(bits-1) - 1), |k| <= 2^(bits-1) - 1."""
    top = 2 ** (bits - 1) - 1
    return (y * (top / fs)).round_().clamp_(-top, top).mul_(fs / top)


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
