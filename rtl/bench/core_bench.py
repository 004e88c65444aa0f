"""Unit bench of tt_core on a small 3-core layer (every value checked against the spec's int_linear):
idle state after reset, two jobs with different cores under random stream backpressure, a reset in
the middle of a job, and the core's counters against the schedule's exact counts."""
from __future__ import annotations

import math

import cocotb
import numpy as np
import torch
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly

from hwsim.backends.fixed import Format, LayerSpec, int_linear
from hwsim.backends.rtl.program import CoreParams, registers, step_shapes
from hwsim.rtl.cosim import PERIOD_NS, reset, run_jobs, write_program

SHAPES = ((1, 3, 2, 2), (2, 4, 3, 3), (3, 2, 2, 1))
SPEC = LayerSpec(Format(7, 6), Format(6, 4), Format(8, 3), Format(10, 4), bias_bits=20, rounding="half_even")
PARAMS = CoreParams.for_layer(SHAPES, SPEC, True, lanes=4)
ROWS = 11


def job(seed: int, jobs: int = 2, backpressure: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    steps = step_shapes(SHAPES, SPEC, True)
    size = sum(math.prod(s) for s in SHAPES)
    return {"lanes": PARAMS.lanes, "in_w": PARAMS.in_w, "mid_w": PARAMS.mid_w, "out_w": PARAMS.out_w,
            "rows": ROWS, "out_len": steps[-1].values, "registers": np.array(registers(SHAPES, SPEC, True, ROWS)),
            "weights": rng.integers(SPEC.weight.lo, SPEC.weight.hi + 1, (jobs, size)),
            "bias": rng.integers(-2 ** 12, 2 ** 12, (jobs, steps[-1].values)),
            "x": rng.integers(SPEC.input.lo, SPEC.input.hi + 1, (1, ROWS, steps[0].terms * steps[0].rest)),
            "budget_cycles": 100_000, "backpressure": int(backpressure), "seed": seed}


def expected(j: dict) -> np.ndarray:
    cores, at = [], 0
    for shape in SHAPES:
        n = math.prod(shape)
        cores.append(torch.from_numpy(j["weights"][:, at:at + n].reshape(-1, *shape)))
        at += n
    return int_linear(cores, torch.from_numpy(j["x"][0]), SPEC, torch.from_numpy(j["bias"])).numpy()


@cocotb.test()
async def idle_after_reset(dut):
    Clock(dut.clk, PERIOD_NS, unit="ns", impl="gpi").start()
    await reset(dut)
    await ReadOnly()
    assert (dut.busy.value, dut.done.value, dut.in_ready.value, dut.out_valid.value) == (0, 0, 0, 0)


@cocotb.test()
async def jobs_under_backpressure(dut):
    j = job(1)
    result = await run_jobs(dut, j)
    np.testing.assert_array_equal(result["y"], expected(j))
    steps = step_shapes(SHAPES, SPEC, True)
    groups = -(-ROWS // PARAMS.lanes)
    counts = dict(zip(result["counter_names"], result["counters"][0]))
    mac_cycles = groups * sum(s.values * s.terms for s in steps)
    assert counts["issue"] == counts["weight_reads"] == counts["state_reads"] == mac_cycles
    assert counts["macs"] == ROWS * sum(s.values * s.terms for s in steps)
    assert counts["state_writes"] == groups * sum(s.values for s in steps)
    assert counts["bias_reads"] == groups * steps[-1].values


@cocotb.test()
async def reset_mid_job_then_clean_job(dut):
    Clock(dut.clk, PERIOD_NS, unit="ns", impl="gpi").start()
    await reset(dut)
    j = job(2, jobs=1, backpressure=False)
    await write_program(dut, j["registers"], j["weights"][0], j["bias"][0])
    dut.start.value = 1
    dut.in_valid.value = 1                          # stream garbage, then reset in the middle
    await ClockCycles(dut.clk, 1)
    dut.start.value = 0
    await ClockCycles(dut.clk, 40)
    j2 = job(3, jobs=1, backpressure=False)
    result = await run_jobs(dut, j2, clock=False)  # run_jobs resets first
    np.testing.assert_array_equal(result["y"], expected(j2))
