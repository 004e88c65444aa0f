"""Persistent RTL simulator sessions: many calls served by one simulator, equal to one run per call,
dead simulators reported, and no simulator left behind after a run, an error or an interrupt."""
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from hwsim.backends.fixed import Format, LayerSpec
from hwsim.backends.rtl import session as sessions
from hwsim.backends.rtl import sim as simulators
from hwsim.backends.rtl.program import CoreParams
from hwsim.backends.rtl.run import run_tt_layer
from processes import gone, marked
from rtl_sims import SIMS, found

SHAPES = ((1, 4, 3, 2), (2, 6, 2, 1))
SPEC = LayerSpec(Format(8, 7), Format(8, 6), Format(9, 3), Format(11, 2))
TINY_TT = ["model.layers=[{type: tt_linear, in_features: 784, out_features: 16, rank: 2}, {type: relu}, "
           "{type: tt_linear, in_features: 16, out_features: 10, rank: 2}]"]
RTL_RUN = ["data.train_limit=256", "data.val_size=32", "data.test_limit=32", "train.batch_size=16",
           "backend.name=rtl"] + TINY_TT


def _job(rng, jobs, rows):
    cores = rng.integers(-128, 128, size=(jobs, 24 + 24))
    x = rng.integers(-128, 128, size=(jobs, rows, 24))
    bias = rng.integers(-1000, 1000, size=(jobs, 6))
    return cores, x, bias


@pytest.mark.parametrize("sim", SIMS)
@pytest.mark.slow
def test_a_session_serves_many_calls_exactly_like_one_run_per_call(sim):
    rng = np.random.default_rng(0)
    params = CoreParams.for_layer(SHAPES, SPEC, True, 16)
    sessions.close_all()
    for jobs, rows in ((1, 5), (3, 40), (2, 17), (1, 1)):
        cores, x, bias = _job(rng, jobs, rows)
        served = run_tt_layer(SHAPES, SPEC, cores, x, bias, sim=sim, params=params)
        alone = run_tt_layer(SHAPES, SPEC, cores, x, bias, sim=sim, params=params, session=False)
        np.testing.assert_array_equal(served.y, alone.y)
        assert served.counters == alone.counters
    assert len(sessions.live_pids()) == 1                 # one simulator served every call
    session = next(iter(sessions._SESSIONS.values()))
    assert session.calls == 4


@pytest.mark.parametrize("sim", SIMS[:1])
def test_a_simulator_that_dies_is_reported_and_the_next_call_starts_a_new_one(sim):
    rng = np.random.default_rng(1)
    params = CoreParams.for_layer(SHAPES, SPEC, True, 16)
    sessions.close_all()
    run_tt_layer(SHAPES, SPEC, *_job(rng, 1, 4), sim=sim, params=params)
    session = next(iter(sessions._SESSIONS.values()))
    os.kill(session.proc.pid, signal.SIGKILL)
    session.proc.wait()
    cores, x, bias = _job(rng, 1, 4)
    with pytest.raises(simulators.RtlError, match=r"the simulator died during a TT layer call \(1 jobs x 4 rows\) "
                                                  r"\(.*exit status -9\)"):
        session.call({"weights": cores}, "a TT layer call (1 jobs x 4 rows)", 10)
    again = run_tt_layer(SHAPES, SPEC, cores, x, bias, sim=sim, params=params)
    alone = run_tt_layer(SHAPES, SPEC, cores, x, bias, sim=sim, params=params, session=False)
    np.testing.assert_array_equal(again.y, alone.y)
    assert sessions.live_pids() and sessions.live_pids()[0] != session.proc.pid


def _hwsim_train(tmp_path, extra, mark):
    sets = [a for k in RTL_RUN + extra for a in ("--set", k)]
    env = {**os.environ, "HWSIM_TEST_MARK": mark}
    # SIGINT as in a terminal: a test run started in the background of a non-interactive shell inherits
    # SIGINT ignored, and a SIGINT before the loop takes it over (during the step-0 evaluation) was lost
    return subprocess.Popen([sys.executable, "-m", "hwsim", "train", "mnist_tt_zo", "--quiet", "--out",
                             str(tmp_path / "run"), *sets], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.skipif(not found("verilator"), reason="verilator not installed")
@pytest.mark.parametrize("ending", ["finished", "error", "interrupt", "killed"])
@pytest.mark.slow
def test_no_simulator_outlives_its_run(tmp_path, ending):
    mark = f"hwsim-test-{uuid.uuid4()}"
    steps = {"finished": "train.steps=2", "error": "train.steps=2", "interrupt": "train.steps=100000",
             "killed": "train.steps=100000"}[ending]
    extra = [steps, "train.eval_every=1"] + (["backend.timeout_s=0.001"] if ending == "error" else [])
    proc = _hwsim_train(tmp_path, extra, mark)
    if ending in ("interrupt", "killed"):
        deadline = time.monotonic() + 120
        while len(marked(mark)) < 2 and time.monotonic() < deadline:   # hwsim + its simulator
            time.sleep(0.2)
        assert len(marked(mark)) >= 2
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT if ending == "interrupt" else signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    expected = {"finished": 0, "error": 1, "interrupt": 130, "killed": -signal.SIGKILL}[ending]
    assert proc.returncode == expected, err[-2000:]
    if ending == "error":                       # one line naming the call and the option, no traceback
        assert err.strip().splitlines()[-1].startswith("hwsim: error: verilator session: a TT layer call (")
        assert "backend.timeout_s" in err and "Traceback" not in err
    assert gone(mark), f"simulators left after a {ending} run: {marked(mark)}"


@pytest.mark.parametrize("sim", SIMS)
def test_a_call_dumps_an_fst_waveform_and_computes_the_same(sim, tmp_path):
    """``waves``: the call runs alone on a tracing build and leaves an FST file (GTKWave's format: it
    starts with a header block, type 0) with the core's ports; its outputs equal the untraced call's."""
    if sim == "verilator" and not Path("/usr/include/lz4.h").is_file():
        pytest.skip("Verilator's FST writer needs liblz4-dev")
    rng = np.random.default_rng(2)
    params = CoreParams.for_layer(SHAPES, SPEC, True, 16)
    cores, x, bias = _job(rng, 1, 6)
    path = tmp_path / "w" / "call.fst"
    traced = run_tt_layer(SHAPES, SPEC, cores, x, bias, sim=sim, params=params, waves=path)
    plain = run_tt_layer(SHAPES, SPEC, cores, x, bias, sim=sim, params=params)
    np.testing.assert_array_equal(traced.y, plain.y)
    data = path.read_bytes()
    assert len(data) > 1000 and data[0] == 0
    if shutil.which("fst2vcd"):
        vcd = subprocess.run(["fst2vcd", str(path)], capture_output=True, text=True, check=True).stdout
        assert "out_valid" in vcd and "$enddefinitions" in vcd
