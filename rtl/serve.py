"""The cocotb side of a persistent simulator session: one simulator run serves many job files.

The host (hwsim.backends.rtl.session) hands the simulator one end of a socket pair (its descriptor in
$HWSIM_RTL_SESSION_FD) and sends one line per call: ``<job.npz> <result.npz>``. For each line the core
is reset and the job run exactly as a one-run-per-call simulation runs it (hwsim.rtl.cosim.run_jobs); the
answer is one line, ``ok`` or ``error <message>``. ``quit`` or the host's end closing (the host died)
ends the run. Simulated time goes on between calls; each call's cycles are counted from its own start.
"""
from __future__ import annotations

import os
import socket

import cocotb
import numpy as np
from cocotb.clock import Clock

from hwsim.rtl.cosim import PERIOD_NS, run_jobs


@cocotb.test()
async def serve(dut):
    channel = socket.socket(fileno=int(os.environ["HWSIM_RTL_SESSION_FD"]))
    Clock(dut.clk, PERIOD_NS, unit="ns", impl="gpi").start()
    with channel, channel.makefile("r") as requests:
        for line in requests:                      # blocks the simulator until the host sends a call
            if line.strip() == "quit":
                break
            job_path, result_path = line.split()
            try:
                result = await run_jobs(dut, dict(np.load(job_path)), clock=False)
                np.savez(result_path + ".tmp.npz", **result)
                os.replace(result_path + ".tmp.npz", result_path)
                answer = "ok"
            except Exception as e:                 # the call fails, the session serves the next one
                answer = "error " + f"{type(e).__name__}: {e}".replace("\n", " ")
            channel.sendall((answer + "\n").encode())
