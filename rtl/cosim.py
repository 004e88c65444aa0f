"""The cocotb side of the RTL backend: one simulator run executes a whole job file.

A job file (npz, path in $HWSIM_RTL_JOB) holds the core's register program and, for each of J jobs
(the queries of one backend call), the TT-core codes (and bias codes) plus the input codes (shared or
per job). For every job the runner writes the registers and RAMs through the configuration port, starts
the core, streams the input beats in and the output beats out concurrently, waits for ``done`` and
reads the core's own counters. Results go to $HWSIM_RTL_RESULT (npz, written to a temp file, then
renamed). Any failure (a timeout in simulated cycles included) fails the cocotb test, which the host
reads from results.xml.
"""
from __future__ import annotations

import os
import random
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge, with_timeout

from hwsim.rtl.beats import group_beats, pack, ungroup, unpack

PERIOD_NS = 10
COUNTERS = ("cycles", "macs", "issue", "weight_reads", "state_reads", "state_writes", "bias_reads",
            "overflows")
SEL_REG, SEL_WEIGHT, SEL_BIAS = 0, 1, 2


@cocotb.test()
async def run_job_file(dut):
    job = dict(np.load(os.environ["HWSIM_RTL_JOB"]))
    result = await run_jobs(dut, job)
    path = os.environ["HWSIM_RTL_RESULT"]
    tmp = path + ".tmp.npz"
    np.savez(tmp, **result)
    os.replace(tmp, path)


async def run_jobs(dut, job: dict, clock: bool = True) -> dict:
    """Reset the core and run every job of a job dict (see the module doc); returns outputs, counters
    and traces. ``clock``: start the clock (False when the caller already has)."""
    started = time.perf_counter()
    if clock:
        Clock(dut.clk, PERIOD_NS, unit="ns", impl="gpi").start()
    await reset(dut)
    first_cycle = cycles_now()         # counted from the end of reset: the same in a session and alone
    lanes, in_w, out_w = int(job["lanes"]), int(job["in_w"]), int(job["out_w"])
    rows, out_len = int(job["rows"]), int(job["out_len"])
    jobs = job["weights"].shape[0]
    rng = random.Random(int(job.get("seed", 0)))
    backpressure = bool(job.get("backpressure", 0))
    trace = bool(job.get("trace", 0))
    budget = int(job["budget_cycles"])
    ys, counters, load_cycles, traces = [], [], [], []
    for j in range(jobs):
        t0 = cycles_now()
        await write_program(dut, job["registers"], job["weights"][j],
                            job["bias"][j] if "bias" in job else None)
        load_cycles.append(cycles_now() - t0)
        x = job["x"][j if job["x"].shape[0] > 1 else 0]
        beats = pack(group_beats(x, lanes), in_w)
        groups = -(-rows // lanes)
        tracer = cocotb.start_soon(record_steps(dut, job, groups)) if trace else None
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0
        sender = cocotb.start_soon(send(dut, beats, rng if backpressure else None))
        got = await with_timeout(receive(dut, groups * out_len, rng if backpressure else None),
                                 budget * PERIOD_NS, "ns")
        await sender
        await with_timeout(wait_done(dut), 1000 * PERIOD_NS, "ns")
        if tracer is not None:
            traces.append(await tracer)
        y = unpack(got, lanes, out_w).reshape(groups, out_len, lanes)
        ys.append(ungroup(y, rows))
        counters.append([getattr(dut, f"cnt_{name}").value.to_unsigned() for name in COUNTERS])
    out = {"y": np.stack(ys), "counters": np.array(counters, dtype=np.int64),
           "counter_names": np.array(COUNTERS), "load_cycles": np.array(load_cycles, dtype=np.int64),
           "sim_cycles": np.int64(cycles_now() - first_cycle), "wall_s": np.float64(time.perf_counter() - started)}
    for k, steps in enumerate(zip(*traces) if traces else []):
        out[f"trace_{k}"] = np.stack(steps)
    return out


def cycles_now() -> int:
    return int(cocotb.utils.get_sim_time("ns")) // PERIOD_NS


async def reset(dut) -> None:
    for name in ("cfg_we", "start", "in_valid", "out_ready"):
        getattr(dut, name).value = 0
    dut.rst.value = 1
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


async def write_program(dut, registers: np.ndarray, weights: np.ndarray, bias: np.ndarray | None) -> None:
    """Registers, then the weight RAM, then the bias RAM: one 32-bit write per cycle."""
    writes = [(SEL_REG, int(a), int(v)) for a, v in registers]
    writes += [(SEL_WEIGHT, a, int(v)) for a, v in enumerate(weights)]
    if bias is not None:
        writes += [(SEL_BIAS, a, int(v)) for a, v in enumerate(bias)]
    dut.cfg_we.value = 1
    for sel, addr, value in writes:
        dut.cfg_sel.value = sel
        dut.cfg_addr.value = addr
        dut.cfg_wdata.value = value & 0xFFFFFFFF
        await RisingEdge(dut.clk)
    dut.cfg_we.value = 0


async def send(dut, beats: list[int], rng: random.Random | None) -> None:
    """Drive the input stream; with ``rng``, valid drops randomly between beats (backpressure test)."""
    for beat in beats:
        if rng is not None and rng.random() < 0.3:
            dut.in_valid.value = 0
            await RisingEdge(dut.clk)
        dut.in_valid.value = 1
        dut.in_data.value = beat
        while True:
            await ReadOnly()
            if dut.in_ready.value:
                await RisingEdge(dut.clk)        # the beat is taken at this edge
                break
            await RisingEdge(dut.in_ready)
    dut.in_valid.value = 0


async def receive(dut, count: int, rng: random.Random | None) -> list[int]:
    """Take ``count`` output beats; with ``rng``, ready drops randomly (backpressure test)."""
    got: list[int] = []
    dut.out_ready.value = 1
    while len(got) < count:
        if rng is not None:
            await RisingEdge(dut.clk)
            ready = rng.random() < 0.6
            dut.out_ready.value = int(ready)
            await ReadOnly()
            if ready and dut.out_valid.value:
                got.append(dut.out_data.value.to_unsigned())
            continue
        await ReadOnly()
        if dut.out_valid.value:
            got.append(dut.out_data.value.to_unsigned())
            await RisingEdge(dut.clk)            # the beat is taken at this edge
        else:
            await RisingEdge(dut.out_valid)
    if rng is not None:
        await RisingEdge(dut.clk)
    dut.out_ready.value = 0
    return got


async def wait_done(dut) -> None:
    while True:
        await ReadOnly()
        if dut.done.value:
            break
        await RisingEdge(dut.done)
    await RisingEdge(dut.clk)


async def record_steps(dut, job: dict, groups: int) -> list[np.ndarray]:
    """Debug: after every intermediate core step, read its result from the state bank it was written
    to (bank_a after steps 0, 2, ..., bank_b after 1, 3, ...). Returns per step (G, V_k, LANES)."""
    lanes, mid_w = int(job["lanes"]), int(job["mid_w"])
    values = [int(v) for v in job["steps_v"][:-1]]
    seen: list[list[np.ndarray]] = [[] for _ in values]
    while min((len(s) for s in seen), default=groups) < groups:
        await RisingEdge(dut.step_done)
        await ReadOnly()
        k = dut.step_index.value.to_unsigned()
        if k >= len(values):
            continue
        bank = dut.bank_a if k % 2 == 0 else dut.bank_b
        words = [bank[i].value.to_unsigned() for i in range(values[k])]
        seen[k].append(unpack(words, lanes, mid_w))
    return [np.stack(s) for s in seen]
