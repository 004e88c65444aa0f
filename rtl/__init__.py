"""The Verilog TT-contraction core (installed as ``hwsim.rtl``): its sources, the numpy helpers that
pack vectors into stream beats, and the cocotb job runner that drives it inside a simulator
(docs/rtl.md)."""
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOPLEVEL = "tt_core"
SOURCES = [HERE / "tt_requant.v", HERE / "tt_core.v"]
