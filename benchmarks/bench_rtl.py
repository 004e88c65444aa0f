"""Throughput of the RTL core in each simulator: simulated cycles per wall second, vectors per second and
MAC-lane utilisation on the MNIST TT model's two layers (batch of 256 vectors, one simulator run), for
several lane counts; and the build time of each simulator (a cold cache).

    python benchmarks/bench_rtl.py [--sims verilator icarus] [--lanes 8 16 32] [--rows 256]

Writes benchmarks/results/rtl_throughput.json.
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import numpy as np

from common import save
from hwsim.backends.rtl import sim as simulators
from hwsim.backends.rtl.program import CoreParams, cycles_per_group, step_shapes
from hwsim.backends.rtl.run import run_tt_layer
from hwsim.rtl.verify import builtin_cases, job_inputs
from hwsim.rtl import SOURCES, TOPLEVEL


def build_time(sim: str) -> float:
    """Seconds to build the MNIST core from a cold cache."""
    case = builtin_cases()[0]
    params = CoreParams.for_layer(case.core_shapes, case.spec, case.bias, 16)
    with tempfile.TemporaryDirectory() as cache:
        old = os.environ.get("HWSIM_RTL_CACHE")
        os.environ["HWSIM_RTL_CACHE"] = cache
        try:
            t = time.perf_counter()
            simulators.build(simulators.find(sim), params.verilog(), SOURCES, TOPLEVEL)
            return time.perf_counter() - t
        finally:
            if old is None:
                os.environ.pop("HWSIM_RTL_CACHE")
            else:
                os.environ["HWSIM_RTL_CACHE"] = old


def throughput(sim: str, lanes: int, rows: int) -> list[dict]:
    out = []
    for case in builtin_cases()[:2]:
        cores, x, _ = job_inputs(case, "trained", rows, np.random.default_rng(0))
        run_tt_layer(case.core_shapes, case.spec, cores, x[:, :lanes], sim=sim, lanes=lanes)   # build, warm
        res = run_tt_layer(case.core_shapes, case.spec, cores, x, sim=sim, lanes=lanes)
        c = res.counters
        steps = step_shapes(case.core_shapes, case.spec, case.bias)
        out.append({"case": case.name, "simulator": sim, "lanes": lanes, "vectors": rows,
                    "macs_per_vector": sum(s.values * s.terms for s in steps),
                    "cycles": c["cycles"], "formula_cycles": math.ceil(rows / lanes) * cycles_per_group(steps),
                    "sim_cycles": c["sim_cycles"], "sim_wall_s": res.sim_wall_s, "call_wall_s": res.wall_s,
                    "sim_cycles_per_s": c["sim_cycles"] / res.sim_wall_s,
                    "vectors_per_s": rows / res.sim_wall_s, "macs_per_s": c["macs"] / res.sim_wall_s,
                    "lane_utilisation": c["macs"] / (lanes * c["cycles"])})
        r = out[-1]
        print(f"{sim:9s} {lanes:2d} lanes {case.name:20s} {r['sim_cycles_per_s'] / 1e3:7.1f}k cycles/s "
              f"{r['vectors_per_s']:8.1f} vectors/s  util {100 * r['lane_utilisation']:.1f} %", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", nargs="+", default=["verilator", "icarus"])
    ap.add_argument("--lanes", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--rows", type=int, default=256)
    args = ap.parse_args()
    found = []
    for sim in args.sims:
        try:
            simulators.find(sim)
            found.append(sim)
        except simulators.RtlError as e:
            print(f"bench_rtl: skipping {sim}: {e}")
    if not found:
        return
    args.sims = found
    builds = {sim: build_time(sim) for sim in args.sims}
    rows = [r for sim in args.sims for lanes in args.lanes for r in throughput(sim, lanes, args.rows)]
    save("rtl_throughput", {"build_s": builds, "rows": rows})


if __name__ == "__main__":
    main()
