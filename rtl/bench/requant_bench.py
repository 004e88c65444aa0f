"""Unit bench of tt_requant: every rounding x overflow mode, both target widths, shifts from the largest
left shift to beyond the accumulator width, on random accumulators, exact ties and the extremes,
against the emulator's ``requantize_exact`` (hwsim.backends.fixed.numerics)."""
from __future__ import annotations

import random

import cocotb
import torch
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from hwsim.backends.fixed.numerics import Format, requantize_exact

PARAMS = {"ACC_W": 20, "MID_W": 6, "OUT_W": 9, "LSHIFT_MAX": 16}
ROUNDINGS = {"floor": 0, "half_up": 1, "half_even": 2}


def accumulators(shift: int, rng: random.Random) -> list[int]:
    lo, hi = -(1 << (PARAMS["ACC_W"] - 1)), (1 << (PARAMS["ACC_W"] - 1)) - 1
    vals = [lo, hi, 0, -1, 1] + [rng.randint(lo, hi) for _ in range(6)]
    if shift > 0:                                  # exact ties, and one either side
        for _ in range(4):
            q = rng.randint(lo >> shift, hi >> shift)
            tie = q * (1 << shift) + (1 << (shift - 1))
            vals += [v for v in (tie - 1, tie, tie + 1) if lo <= v <= hi]
    return vals


@cocotb.test()
async def requant_matches_spec(dut):
    Clock(dut.clk, 10, unit="ns", impl="gpi").start()
    rng = random.Random(0)
    dut.en.value = 1
    checked = 0
    for shift in range(-PARAMS["LSHIFT_MAX"], PARAMS["ACC_W"] + PARAMS["LSHIFT_MAX"] + 1):
        for acc in accumulators(shift, rng):
            for rounding, code in ROUNDINGS.items():
                for overflow in ("saturate", "wrap"):
                    for last, bits in ((0, PARAMS["MID_W"]), (1, PARAMS["OUT_W"])):
                        await RisingEdge(dut.clk)
                        dut.acc.value = acc
                        dut.shift.value = shift & 0xFF
                        dut.rounding.value = code
                        dut.wrap.value = int(overflow == "wrap")
                        dut.last.value = last
                        await RisingEdge(dut.clk)
                        await ReadOnly()
                        codes, overflows = requantize_exact(torch.tensor([acc]), shift, Format(bits, 0), rounding,
                                                            overflow)
                        want = int(codes[0])
                        got = dut.code.value.to_signed()
                        assert got == want, (f"acc={acc} shift={shift} {rounding} {overflow} bits={bits}: "
                                             f"RTL {got}, spec {want}")
                        assert bool(dut.overflow.value) == (overflows > 0), (
                            f"acc={acc} shift={shift} {rounding} bits={bits}: overflow flag")
                        checked += 1
    dut._log.info("%d requantizations checked", checked)

