"""The simulators found on this machine, for tests that run the Verilog core (skipped where one is missing)."""
import pytest

from hwsim.backends.rtl import sim as simulators


def found(name: str) -> bool:
    try:
        simulators.find(name)
        return True
    except simulators.RtlError:
        return False


SIMS = [pytest.param(s, marks=pytest.mark.skipif(not found(s), reason=f"{s} not installed"))
        for s in simulators.SIMULATORS]
VERILATOR = SIMS[0]
