"""Persistent simulator sessions: one simulator process per built core stays up and serves many calls.

A one-run-per-call simulation pays a process launch, the embedded Python's start and imports for every
backend call; a session pays them once. The host starts the simulator on the cocotb module
``hwsim.rtl.serve`` with one end of a socket pair, then sends each call (a job file, as the per-call path
writes it) and waits for its answer with a wall-clock timeout that names the call. Sessions are kept per
(simulator, build) in this process and closed at exit; a simulator that dies is detected (its end of the
socket closes) and reported with the tail of its log; if the host dies, the simulator sees its end close
and exits, so no simulator outlives its run.
"""
from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from hwsim.backends.rtl import sim as simulators

SERVE_MODULE = "hwsim.rtl.serve"


class _Captured(Exception):
    """Raised by the runner in place of running the simulator: the command and environment it would use."""

    def __init__(self, cmds, cwd, env):
        super().__init__("captured")
        self.cmds, self.cwd, self.env = cmds, cwd, env


class Session:
    """One simulator process serving job files for the core built in ``build_dir``."""

    def __init__(self, sim: simulators.Simulator, build_dir: Path, toplevel: str):
        self.sim, self.build_dir = sim, build_dir
        self.dir = Path(tempfile.mkdtemp(prefix="hwsim-rtl-session-"))
        self.log = self.dir / "sim.log"
        self.calls = 0
        cmd, cwd, env = _command(sim, build_dir, toplevel, self.dir)
        host, child = socket.socketpair()
        env["HWSIM_RTL_SESSION_FD"] = str(child.fileno())
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, pass_fds=(child.fileno(),), stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        child.close()
        self.channel = host
        self.answers = host.makefile("r")

    def call(self, job: dict, what: str, timeout_s: float | None) -> dict:
        """Run one job dict (hwsim.backends.rtl.run) and return its result arrays; ``what`` names the call
        in errors. A call that takes longer than ``timeout_s`` wall seconds stops the session."""
        self.calls += 1
        job_path, result_path = self.dir / f"job-{self.calls}.npz", self.dir / f"result-{self.calls}.npz"
        np.savez(job_path, **job)
        try:
            self.channel.settimeout(timeout_s)
            self.channel.sendall(f"{job_path} {result_path}\n".encode())
            answer = self.answers.readline().strip()
        except socket.timeout:
            self.close(kill=True)
            raise simulators.RtlError(f"{self.sim.name} session: {what} did not finish within {timeout_s:g} s "
                                      f"(backend.timeout_s); the simulator was stopped") from None
        except OSError as e:
            answer = ""
            reason = str(e)
        else:
            reason = "it closed the session"
        finally:
            job_path.unlink(missing_ok=True)
        if not answer:
            code = self.proc.poll()
            self.close(kill=True)
            raise simulators.RtlError(f"{self.sim.name} session: the simulator died during {what} ({reason}; "
                                      f"exit status {code})\n{simulators._tail(self.log)}")
        if answer != "ok":
            raise simulators.RtlError(f"{self.sim.name} session: {what} failed: {answer.removeprefix('error ')}")
        with np.load(result_path) as r:
            out = {k: r[k] for k in r.files}
        result_path.unlink()
        return out

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self, kill: bool = False) -> None:
        """End the simulator (``quit``, then a kill if it does not exit within 10 s) and remove the files."""
        if self.proc.poll() is None and not kill:
            try:
                self.channel.settimeout(5)
                self.channel.sendall(b"quit\n")
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.answers.close()
        self.channel.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _command(sim: simulators.Simulator, build_dir: Path, toplevel: str, work_dir: Path):
    """The simulator command, its directory and environment that cocotb's runner would run for the
    serve module (taken from the runner, not run by it)."""
    base = type(simulators._runner(sim))

    class Capture(base):
        def _execute(self, cmds, cwd):
            raise _Captured(cmds, cwd, dict(self.env))

    with simulators._environment(sim.env):
        try:
            Capture().test(test_module=SERVE_MODULE, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog",
                           build_dir=str(build_dir), test_dir=str(work_dir), results_xml=str(work_dir / "results.xml"),
                           timescale=("1ns", "1ps"))
        except _Captured as c:
            if len(c.cmds) != 1:
                raise simulators.RtlError(f"{sim.name}: a session needs one simulator command, the runner "
                                          f"gives {len(c.cmds)}") from None
            return list(c.cmds[0]), c.cwd, c.env
    raise simulators.RtlError(f"{sim.name}: cocotb's runner ran nothing for the session")


_SESSIONS: dict[tuple[str, str], Session] = {}


def session(sim: simulators.Simulator, build_dir: Path, toplevel: str) -> Session:
    """The live session of this process for (simulator, build), started on first use (or again after
    one died)."""
    key = (sim.name, str(build_dir))
    current = _SESSIONS.get(key)
    if current is None or not current.alive:
        current = _SESSIONS[key] = Session(sim, build_dir, toplevel)
    return current


def close_all() -> None:
    """Close every session of this process (also run at interpreter exit)."""
    while _SESSIONS:
        _, s = _SESSIONS.popitem()
        s.close()


def live_pids() -> list[int]:
    """Process ids of this process's running simulators (for tests and diagnostics)."""
    return [s.proc.pid for s in _SESSIONS.values() if s.alive]


atexit.register(close_all)
os.register_at_fork(after_in_child=_SESSIONS.clear)   # a forked child must not close its parent's sessions
