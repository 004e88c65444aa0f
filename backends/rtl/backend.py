"""The ``rtl`` backend: the fixed backend's numerics, with every TT layer run on the Verilog core.

Everything but the TT layers (dense layers, activations, parameter handling, both training modes) is
the fixed backend's; a TT layer's forward pass for all queries of a call is one simulator run
(backends/rtl/run.py), and its counters come from the core itself.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch

from hwsim.backends.base import Capabilities
from hwsim.backends.fixed.backend import FixedBackend
from hwsim.backends.fixed.layer import LayerSpec, _shared
from hwsim.backends.rtl.program import CoreParams
from hwsim.backends.rtl.run import run_tt_layer
from hwsim.arch.engine import FPGA
from hwsim.errors import ConfigError
from hwsim.model import TTLinear
from hwsim.text import excerpt

RTL_COUNTERS = ("cycles", "load_cycles", "sim_cycles", "macs", "issue", "weight_reads", "state_reads",
                "state_writes", "bias_reads")


class RtlBackend(FixedBackend):
    """TT layers on the Verilog TT core in a simulator (cocotb), bit-exact with ``fixed``."""

    name = "rtl"
    summary = "the Verilog TT-contraction core (rtl/tt_core.v) co-simulated with cocotb, bit-exact with fixed"
    architecture = FPGA
    capabilities = Capabilities(exact=True, differentiable=False, multilinear=False)   # the simulator: the host

    @dataclass
    class Options(FixedBackend.Options):
        """The fixed backend's options plus: sim: verilator | icarus; lanes: MAC lanes of the core
        (vectors evaluated in parallel, 1..64); timeout_s: wall-clock limit of one call; session: serve
        all calls from one simulator process per build (false: a simulator run per call, for debugging);
        clock_mhz: the core's clock, turning simulated cycles into latency (an assumption: 200 MHz for a
        mid-range FPGA; `hwsim rtl synth` estimates the longest path); waves: the index (from 0) of the TT
        layer call to dump as an FST waveform into ``waves_dir`` (a simulator run of its own)."""

        sim: Literal["verilator", "icarus"] = "verilator"
        lanes: int = 16
        timeout_s: float = 600.0
        session: bool = True
        clock_mhz: float = 200.0
        waves: Optional[int] = None
        waves_dir: str = "waves"

        def __post_init__(self):
            super().__post_init__()
            if self.device != "cpu":
                raise ConfigError(f"backend.device: {excerpt(self.device)} is not allowed; the rtl backend runs its "
                                  "core in a simulator on the host: use cpu")
            if not isinstance(self.lanes, int) or not 1 <= self.lanes <= 64:
                raise ConfigError(f"backend.lanes: {excerpt(self.lanes)} is not allowed; use an integer in 1..64")
            if not _finite_positive(self.timeout_s):
                raise ConfigError(f"backend.timeout_s: {excerpt(self.timeout_s)} is not allowed; use a positive number")
            if not _finite_positive(self.clock_mhz):
                raise ConfigError(f"backend.clock_mhz: {excerpt(self.clock_mhz)} is not allowed; use a clock in MHz > 0")
            if self.waves is not None and (not isinstance(self.waves, int) or isinstance(self.waves, bool) or self.waves < 0):
                raise ConfigError(f"backend.waves: {excerpt(self.waves)} is not allowed; use the index (>= 0) of a layer call, or null")
            if not isinstance(self.session, bool):
                raise ConfigError(f"backend.session: {excerpt(self.session)} is not allowed; use true or false")

    def architecture_keys(self) -> dict:
        return {"lanes": (self.options.lanes, "lanes"), "clock_mhz": (self.options.clock_mhz, "clock_mhz")}

    def bind(self, network, architecture=None) -> None:
        """Also picks the core(s) to build: layers with the same intermediate and output widths share
        one build (the larger of their depths and input widths); a layer that fits no core fails here."""
        super().bind(network, architecture)
        self._calls = 0                               # TT layer calls so far (backend.waves picks one)
        self._cores: dict[int, CoreParams] = {}
        shared: dict[tuple, CoreParams] = {}
        for index, layer, spec in self.layer_specs():
            if isinstance(layer, TTLinear):
                try:
                    params = CoreParams.for_layer(layer.tt.core_shapes, spec, layer.bias, self.options.lanes)
                except ValueError as e:
                    raise ConfigError(f"backend: layer {index}: {e}") from None
                key = (params.mid_w, params.out_w)
                shared[key] = shared[key].merge(params) if key in shared else params
                self._cores[id(layer)] = key
        self._cores = {k: shared[key] for k, key in self._cores.items()}

    def _contract(self, index: int, layer, spec: LayerSpec, cores, x, bias):
        if not isinstance(layer, TTLinear):
            return super()._contract(index, layer, spec, cores, x, bias)
        shapes = layer.tt.core_shapes
        lead = torch.broadcast_shapes(x.shape[:-2], *(g.shape[:-4] for g in cores),
                                      bias.shape[:-1] if bias is not None else ())
        flat = [_jobs(g, 4).flatten(1) for g in cores]
        weights = torch.cat([w.expand(max(f.shape[0] for f in flat), -1) for w in flat], dim=-1)
        b = _jobs(bias, 1) if bias is not None else None
        xs = _jobs(x, 2)
        self._calls += 1
        waves = (Path(self.options.waves_dir) / f"call{self._calls - 1}-layer{index}.fst"
                 if self.options.waves == self._calls - 1 else None)
        if weights.shape[0] == 1 and (b is None or b.shape[0] == 1) and xs.shape[0] > 1:
            # one set of weights for every query: a single job over all queries' rows
            res = run_tt_layer(shapes, spec, weights.numpy(), xs.reshape(1, -1, xs.shape[-1]).numpy(),
                               None if b is None else b.numpy(), **self._run_options(layer), waves=waves)
            y = res.y.reshape(xs.shape[0], xs.shape[1], -1)
        else:
            jobs = max(weights.shape[0], xs.shape[0], 1 if b is None else b.shape[0])
            res = run_tt_layer(shapes, spec, weights.expand(jobs, -1).numpy(), xs.numpy(),
                               None if b is None else b.expand(jobs, -1).numpy(), **self._run_options(layer), waves=waves)
            y = res.y
        if waves is not None:
            print(f"hwsim rtl: waveform of layer call {self._calls - 1} (layer {index}) in {waves}; open it with "
                  f"`gtkwave {waves}`", file=sys.stderr)
        for key in RTL_COUNTERS:
            self.count(f"rtl_{key}", res.counters[key])
        self.count("rtl_sim_runs")
        y = torch.from_numpy(np.ascontiguousarray(y))
        return (y.reshape(*lead, *y.shape[-2:]) if lead else y[0]), [res.counters["overflows"]]

    def _run_options(self, layer) -> dict:
        o = self.options
        return {"sim": o.sim, "params": self._cores[id(layer)], "timeout_s": o.timeout_s, "session": o.session}


def _finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _jobs(t: torch.Tensor, dims: int) -> torch.Tensor:
    """Codes as int64 with exactly one leading job axis: (Q, ...) for a real query axis, (1, ...) for
    none or one made by expand (the same tensor for every query)."""
    t = _shared(t, dims)
    return (t if t.dim() > dims else t[None]).to(torch.int64)
