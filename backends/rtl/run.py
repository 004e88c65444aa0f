"""Run TT layers on the Verilog core for a batch of jobs (queries): in a persistent simulator session
(hwsim.backends.rtl.session, the default) or in one simulator run per call (``session=False``: slower,
for debugging; the same results).

    result = run_tt_layer(shapes, spec, cores, x, bias=None, sim="verilator", lanes=16)
    result.y          # (J, B, M) int64 output codes
    result.counters   # the core's own counters summed over jobs, plus load and simulated cycles
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hwsim.backends.fixed.layer import LayerSpec
from hwsim.backends.rtl import session as sessions
from hwsim.backends.rtl import sim as simulators
from hwsim.backends.rtl.program import CoreParams, cycles_per_group, registers, step_shapes
from hwsim.rtl import SOURCES, TOPLEVEL

COSIM_MODULE = "hwsim.rtl.cosim"


@dataclass
class RtlResult:
    y: np.ndarray                                   # (J, B, M) output codes
    counters: dict[str, int]                        # summed over the jobs
    traces: list[np.ndarray] = field(default_factory=list)   # step k < K-1: (J, G, V_k, LANES)
    wall_s: float = 0.0                             # the whole call: build lookup, simulator, I/O
    sim_wall_s: float = 0.0                         # inside the simulator process


def run_tt_layer(core_shapes, spec: LayerSpec, cores: np.ndarray, x: np.ndarray,
                 bias: np.ndarray | None = None, sim: str = "verilator", lanes: int = 16,
                 params: CoreParams | None = None, trace: bool = False, backpressure: bool = False,
                 timeout_s: float | None = 600, seed: int = 0, budget_cycles: int | None = None,
                 sources: list[Path] | None = None, session: bool = True, waves: Path | None = None) -> RtlResult:
    """Evaluate a TT layer on the RTL core for J jobs.

    core_shapes: K tuples (r, n, m, r'); cores: (J, sum of core sizes) int codes, each core flattened
    row-major (r, n, m, r') and concatenated in core order; x: (J or 1, B, P) input codes; bias: (J, M)
    codes or None. ``params`` picks the build (default: the smallest that fits, see CoreParams.for_layer).
    ``trace`` also returns every intermediate step's result as the core wrote it; ``backpressure``
    drives the streams with random gaps (tests). The simulation fails when a job takes more than
    ``budget_cycles`` simulated cycles (default: twice the cycle formula of docs/rtl.md plus margin).
    ``sources`` replaces the core's Verilog files (fault-injection tests). ``session``: run in this
    process's persistent simulator session for the build (else a simulator run of its own). ``waves``:
    run alone on a build that traces, and write the call's FST waveform to this path.
    """
    started = time.perf_counter()
    has_bias = bias is not None
    params = params or CoreParams.for_layer(core_shapes, spec, has_bias, lanes)
    params.check(core_shapes, spec, has_bias)
    steps = step_shapes(core_shapes, spec, has_bias)
    cores, x = np.asarray(cores, dtype=np.int64), np.asarray(x, dtype=np.int64)
    size = sum(math.prod(c) for c in core_shapes)
    if cores.ndim != 2 or cores.shape[1] != size:
        raise ValueError(f"cores: expected (jobs, {size}) codes, got {cores.shape}")
    jobs, rows = cores.shape[0], x.shape[1]
    if x.ndim != 3 or x.shape[0] not in (1, jobs) or x.shape[2] != steps[0].terms * steps[0].rest:
        raise ValueError(f"x: expected (1 or {jobs}, B, {steps[0].terms * steps[0].rest}) codes, got {x.shape}")
    groups = -(-rows // params.lanes)
    budget = budget_cycles or 2 * groups * (cycles_per_group(steps) + x.shape[2] + steps[-1].values) + 10_000
    job = {"lanes": params.lanes, "in_w": params.in_w, "mid_w": params.mid_w, "out_w": params.out_w,
           "rows": rows, "out_len": steps[-1].values, "registers": np.array(registers(core_shapes, spec, has_bias, rows)),
           "weights": cores, "x": x, "budget_cycles": budget, "trace": int(trace), "backpressure": int(backpressure),
           "seed": seed, "steps_v": np.array([s.values for s in steps])}
    if has_bias:
        job["bias"] = np.broadcast_to(np.asarray(bias, dtype=np.int64), (jobs, steps[-1].values))
    simulator = simulators.find(sim)
    build_dir = simulators.build(simulator, params.verilog(), sources or SOURCES, TOPLEVEL, waves=waves is not None)
    if session and waves is None:
        what = f"a TT layer call ({jobs} jobs x {rows} rows)"
        out = sessions.session(simulator, build_dir, TOPLEVEL).call(job, what, timeout_s)
    else:
        with tempfile.TemporaryDirectory(prefix="hwsim-rtl-") as tmp:
            work = Path(tmp)
            np.savez(work / "job.npz", **job)
            simulators.run(simulator, build_dir, TOPLEVEL, COSIM_MODULE,
                           {"HWSIM_RTL_JOB": str(work / "job.npz"), "HWSIM_RTL_RESULT": str(work / "result.npz")},
                           work, timeout_s, waves=waves is not None)
            with np.load(work / "result.npz") as r:
                out = {k: r[k] for k in r.files}
            if waves is not None:
                Path(waves).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(work / simulators.WAVES_FILE, waves)
    names = [str(n) for n in out["counter_names"]]
    counters = dict(zip(names, (int(v) for v in out["counters"].sum(axis=0))))
    counters["load_cycles"] = int(out["load_cycles"].sum())
    counters["sim_cycles"] = int(out["sim_cycles"])
    traces = [out[f"trace_{k}"] for k in range(len(steps) - 1) if f"trace_{k}" in out]
    return RtlResult(out["y"], counters, traces, time.perf_counter() - started, float(out["wall_s"]))
