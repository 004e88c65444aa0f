"""The one training loop: resumed == uninterrupted (every backend, train and pinn), real SIGKILL and
SIGTERM of a child run, non-finite guards, damaged checkpoints, out dirs that cannot be written."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from hwsim import checkpoint
from hwsim.backends.rtl import sim as simulators
from hwsim.build import build_network
from hwsim.cli import main
from hwsim.config import PinnConfig, load_config
from hwsim.loop import NonFiniteError
from hwsim.objective import BatchObjective
from hwsim.pinn.train import pinn
from hwsim.train import evaluate, train

quiet = dict(progress=False, log=lambda s: None)

TRAIN = ["data.train_limit=600", "data.val_size=100", "data.test_limit=200", "train.batch_size=64", "train.steps=9",
         "train.eval_every=4", "optimizer.lr=0.01", "train.checkpoint.every_steps=2", "train.checkpoint.keep=20"]
PINN = ["pde.dim=3", "pde.points=8", "pde.test_points=100", "train.steps=7", "train.eval_every=3",
        "train.smoothed_points=10", "model.layers.0.in_features=4", "model.layers.0.in_factors=[2, 2]",
        "train.checkpoint.every_steps=2", "train.checkpoint.keep=20"]
PHOTONIC = ["backend.name=photonic", "backend.noise={preset: typical, drift: 0.5}", "backend.block=4"]
TINY_TT = ["model.layers=[{type: tt_linear, in_features: 784, out_features: 16, rank: 2}, {type: relu}, "
           "{type: tt_linear, in_features: 16, out_features: 10, rank: 2}]"]


def _has_verilator() -> bool:
    try:
        simulators.find("verilator")
        return True
    except simulators.RtlError:
        return False


needs_verilator = pytest.mark.skipif(not _has_verilator(), reason="verilator not installed")


def _final(run_dir: Path) -> tuple[dict, list[dict], torch.Tensor]:
    """metrics.json and metrics.jsonl without wall times, and the trained parameters as the backend holds them."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("wall_s"), metrics.pop("host_peak_rss_bytes")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        r.pop("wall_s")
    return metrics, records, torch.load(run_dir / "params.pt", weights_only=True)["backend_theta"]


def _resume_from(full: Path, step: int, copy: Path) -> Path:
    """A copy of a finished run directory as it was after ``step``: later checkpoints and the final files gone."""
    shutil.copytree(full, copy)
    for path in checkpoint.list_checkpoints(copy):
        if int(path.stem.split("-")[1]) > step:
            path.unlink()
    for name in ("params.pt", "metrics.json"):
        (copy / name).unlink()
    assert checkpoint.latest(copy).name == f"step-{step:08d}.pt"
    return copy


def _assert_resume_equals_uninterrupted(run, cfg, tmp_path: Path, steps=(2, 4)):
    run(cfg, tmp_path / "full", **quiet)
    expected = _final(tmp_path / "full")
    for step in steps:
        resumed = _resume_from(tmp_path / "full", step, tmp_path / f"from{step}")
        run(cfg, resumed, resume=True, **quiet)
        got = _final(resumed)
        assert got[0] == expected[0] and got[1] == expected[1]
        assert torch.equal(got[2], expected[2])
    return expected[0]


@pytest.mark.parametrize("name, extra", [
    ("mnist_tt_zo", []),
    ("mnist_tt_hybrid", ["train.epochs=null", "estimator.switch_epoch=null", "estimator.patience=1",
                         "estimator.cge.subset=0.05"]),
    ("mnist_tt_fo", []),
    ("mnist_tt_fixed8_int", ["backend.update_rounding=stochastic"]),
    ("mnist_tt_zo", PHOTONIC + ["train.steps=5", "estimator.rge.num_queries=2"]),
    ("mnist_tt_zo", PHOTONIC + ["backend.params=phases", "backend.calibrate=gain", "train.steps=5",
                                "estimator.rge.num_queries=2", "estimator.rge.mu=0.05"]),
])
@pytest.mark.slow
def test_train_resumed_equals_uninterrupted(tmp_path, name, extra):
    cfg = load_config(name, TRAIN + extra)
    metrics = _assert_resume_equals_uninterrupted(train, cfg, tmp_path)
    if name == "mnist_tt_hybrid":
        phases = [json.loads(r)["phase"] for r in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
        assert "cge" in phases                       # the switch happened (its state crossed a checkpoint)
    if "photonic" in str(extra):                  # the heaters' load crossed the checkpoints too
        assert any(k.startswith("held_pi_rows:") and v > 0 for k, v in metrics["counters"].items())


@pytest.mark.parametrize("name, extra", [
    ("hjb20_zo_tt_sg", []),
    ("hjb20_zo_tt_sg", ["pde.derivatives.method=stein_mc", "pde.derivatives.samples=4"]),
    ("hjb20_fo_ad", []),
    ("hjb20_zo_tt_sg", ["backend.name=fixed", "backend.bits=16", "pde.derivatives.method=fd"]),
    ("hjb20_zo_tt_sg", PHOTONIC + ["pde.derivatives.method=fd", "backend.dtype=float64"]),
])
@pytest.mark.slow
def test_pinn_resumed_equals_uninterrupted(tmp_path, name, extra):
    _assert_resume_equals_uninterrupted(pinn, load_config(name, PINN + extra, PinnConfig), tmp_path)


@needs_verilator
@pytest.mark.slow
def test_rtl_resumed_equals_uninterrupted(tmp_path):
    """The Verilog core in the loop (Verilator): a train run and a PINN run, resumed mid-way."""
    small = ["data.train_limit=256", "data.val_size=32", "data.test_limit=32", "train.batch_size=16", "train.steps=3",
             "train.eval_every=3", "estimator.rge.num_queries=2", "estimator.rge.per_tensor=false",
             "train.checkpoint.every_steps=1",
             "backend.name=rtl", "backend.bits=8", "backend.lanes=8"] + TINY_TT
    cfg = load_config("mnist_tt_fixed8", small)
    metrics = _assert_resume_equals_uninterrupted(train, cfg, tmp_path / "train", steps=(1,))
    assert metrics["counters"]["rtl_sim_runs"] > 0
    cfg = load_config("hjb20_zo_tt_sg", PINN[:3] + PINN[5:8] + [
        "train.steps=2", "train.eval_every=2", "train.checkpoint.every_steps=1", "pde.derivatives.method=fd",
        "model.layers.2.in_factors=[8, 8]", "model.layers.2.out_factors=[8, 8]",
        "estimator.rge.num_queries=1", "backend.name=rtl", "backend.bits=12", "backend.lanes=8"], PinnConfig)
    _assert_resume_equals_uninterrupted(pinn, cfg, tmp_path / "pinn", steps=(1,))


def _child(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hwsim", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(run: Path, child: subprocess.Popen, after_step: int) -> None:
    deadline = time.time() + 120
    while not any(int(p.stem.split("-")[1]) >= after_step for p in checkpoint.list_checkpoints(run)):
        assert child.poll() is None, child.communicate()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


SLOW_STEPS = TRAIN[:6] + ["train.steps=40", "train.eval_every=10", "train.checkpoint.every_steps=3",
                          "estimator.rge.num_queries=40"]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_result(tmp_path):
    """A real SIGKILL of a child `hwsim train` after its first checkpoints; --resume finishes the run with
    exactly the metrics of a run that was never interrupted."""
    args = ["train", "mnist_tt_zo", "--quiet"] + sum((["--set", s] for s in SLOW_STEPS), [])
    child = _child(args + ["--out", str(tmp_path / "killed")], tmp_path)
    _wait_for_checkpoint(tmp_path / "killed", child, 3)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (tmp_path / "killed" / "metrics.json").exists()           # it really died mid-run
    last = checkpoint.latest(tmp_path / "killed")
    assert 3 <= int(last.stem.split("-")[1]) < 40
    assert main(["train", "--resume", str(tmp_path / "killed"), "--quiet"]) == 0
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0
    got, expected = _final(tmp_path / "killed"), _final(tmp_path / "whole")
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_says_how_to_resume(tmp_path):
    run = tmp_path / "run"
    child = _child(["pinn", "hjb20_zo_tt_sg", "--quiet", "--out", str(run)]
                   + sum((["--set", s] for s in PINN[:-2] + ["train.steps=400", "train.checkpoint.every_steps=1"]), []),
                   tmp_path)
    _wait_for_checkpoint(run, child, 1)
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 128 + signal.SIGTERM
    last = checkpoint.latest(run)
    step = int(last.stem.split("-")[1])
    assert 1 <= step < 400
    assert f"stopped by SIGTERM after step {step} of 400; checkpoint {last}; resume with: hwsim pinn --resume {run}" in err
    assert "Traceback" not in err
    state = checkpoint.load(last)
    assert state["step"] == step and state["command"] == "pinn"


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once(tmp_path):
    """The first SIGINT asks for a clean stop after the step (about 1 s here), the second ends it mid-step."""
    run = tmp_path / "run"
    child = _child(["pinn", "hjb20_zo_tt_sg", "--quiet", "--out", str(run), "--set", "train.steps=50"], tmp_path)
    _wait_for_checkpoint(run, child, 0)
    time.sleep(0.5)
    child.send_signal(signal.SIGINT)
    assert "SIGINT: finishing this step" in child.stderr.readline() + child.stderr.readline()
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130 and "hwsim: stopped at once" in err and "Traceback" not in err
    assert checkpoint.latest(run).name == "step-00000000.pt"          # the step was not finished


def test_a_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """Fault injection: the objective returns NaN losses from the 6th step on."""
    calls = {"steps": 0}
    real = BatchObjective.losses

    def losses(self, theta, deltas, start=0):
        out = real(self, theta, deltas, start)
        if start == 0:                                 # the first block's call, with the base loss: once per step
            calls["steps"] += 1
        return out * float("nan") if calls["steps"] >= 6 else out

    monkeypatch.setattr(BatchObjective, "losses", losses)
    cfg = load_config("mnist_tt_zo", TRAIN)
    with pytest.raises(NonFiniteError, match=r"step 6: the loss is nan; the run is stopped and the last good "
                                             r"checkpoint is .*step-00000004\.pt"):
        train(cfg, tmp_path, **quiet)
    assert checkpoint.latest(tmp_path).name == "step-00000004.pt"
    assert not (tmp_path / "metrics.json").exists()
    monkeypatch.setattr(BatchObjective, "losses", real)
    assert evaluate(tmp_path)["test_accuracy"] > 0                       # the run is evaluable from it


@pytest.mark.parametrize("where", ["gradient", "parameters"])
def test_a_non_finite_gradient_or_parameter_is_named_with_its_tensor(tmp_path, monkeypatch, where):
    """Fault injection at step 3: an infinite gradient entry (from the estimator) or parameter (after the
    backend's projection) in tensor 0.core1."""
    from hwsim.backends.ideal import IdealBackend
    from hwsim.zo import RGE

    cfg = load_config("mnist_tt_zo", TRAIN)
    offset = build_network(cfg.model).space.entries[1].offset          # the first entry of 0.core1
    steps = {"n": 0}
    if where == "gradient":
        real = RGE.estimate

        def estimate(self, objective, theta, generator):
            est = real(self, objective, theta, generator)
            steps["n"] += 1
            if steps["n"] == 3:
                est.grad[offset] = float("inf")
            return est
        monkeypatch.setattr(RGE, "estimate", estimate)
        what = "the gradient estimate"
    else:
        def project_(self, theta, generator=None):
            steps["n"] += 1
            if steps["n"] == 3:
                theta[offset + 2] = float("-inf")
        monkeypatch.setattr(IdealBackend, "project_", project_)
        what = "the parameters after the optimizer step"
    with pytest.raises(NonFiniteError, match=rf"^step 3: 1 non-finite entries in {what} \(tensors 0\.core1\); the "
                                             r"run is stopped and the last good checkpoint is .*step-00000002\.pt"):
        train(cfg, tmp_path, **quiet)


@pytest.mark.slow
def test_damaged_checkpoints_are_refused_naming_the_file(tmp_path, capsys):
    cfg = load_config("mnist_tt_zo", TRAIN)
    train(cfg, tmp_path, **quiet)
    last = checkpoint.latest(tmp_path)
    data = last.read_bytes()
    for damaged in (data[:len(data) // 2], data[:-1] + bytes([data[-1] ^ 1]), b"garbage"):
        last.write_bytes(damaged)
        assert main(["train", "--resume", str(tmp_path), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"hwsim: error: checkpoint {last}: ") and err.count("\n") == 1
    last.unlink()                                          # the previous one still resumes
    assert main(["train", "--resume", str(tmp_path), "--quiet"]) == 0


@pytest.mark.slow
def test_resuming_with_another_config_is_refused_unless_allowed(tmp_path, capsys):
    train(load_config("mnist_tt_zo", TRAIN), tmp_path, **quiet)
    assert main(["train", "--resume", str(tmp_path), "--set", "optimizer.lr=0.5", "--set", "seed=3"]) == 2
    err = capsys.readouterr().err
    assert "differs from the checkpoint's in 2 key(s): optimizer.lr: 0.01 -> 0.5; seed: 0 -> 3" in err
    assert "--allow-changes" in err
    assert main(["pinn", "--resume", str(tmp_path)]) == 2                       # a train run
    assert "it is a training config" in capsys.readouterr().err
    # checkpoint cadence is no change to the numbers; --allow-changes takes the rest
    assert main(["train", "--resume", str(tmp_path), "--quiet", "--set", "train.checkpoint.keep=2"]) == 0
    assert main(["train", "--resume", str(tmp_path), "--quiet", "--set", "seed=3", "--allow-changes"]) == 0


def test_out_dirs_that_cannot_be_written_fail_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "below"):
        assert main(["train", "mnist_tt_zo", "--quiet", "--out", str(out)] + sum((["--set", s] for s in TRAIN), [])) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"hwsim: error: --out {out}: ") and err.count("\n") == 1
    deep = tmp_path / "a" / "b" / "run"                 # missing parents are created
    assert main(["train", "mnist_tt_zo", "--quiet", "--out", str(deep)] + sum((["--set", s] for s in TRAIN), [])) == 0
    assert (deep / "metrics.json").is_file()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount a tmpfs")
@pytest.mark.parametrize("options, reason", [("size=64k", "only"), ("ro,size=1m", "Read-only file system")])
def test_a_full_or_read_only_disk_is_reported_before_training(tmp_path, capsys, options, reason):
    """A real 64 KiB tmpfs (too small for the checkpoints) and a read-only one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("tmpfs cannot be mounted here")
    try:
        assert main(["train", "mnist_tt_zo", "--quiet", "--out", str(disk / "run")]
                    + sum((["--set", s] for s in TRAIN), [])) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"hwsim: error: --out {disk / 'run'}: cannot ") and reason in err
        assert err.count("\n") == 1 and list(disk.iterdir()) == []     # nothing half-written left behind
    finally:
        subprocess.run(["umount", str(disk)])


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount a tmpfs")
@pytest.mark.slow
def test_a_disk_that_fills_up_mid_run_stops_it_with_one_line(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("tmpfs cannot be mounted here")
    try:
        run = disk / "run"
        child = _child(["train", "mnist_tt_zo", "--quiet", "--out", str(run)]
                       + sum((["--set", s] for s in SLOW_STEPS + ["train.checkpoint.every_steps=1"]), []), tmp_path)
        _wait_for_checkpoint(run, child, 1)
        with open(disk / "filler", "wb") as f:          # the disk fills up while the run goes on
            with pytest.raises(OSError):
                while True:
                    f.write(bytes(1 << 16))
                    f.flush()
        out, err = child.communicate(timeout=120)
        assert child.returncode == 1 and err.count("\n") == 1, err
        assert err.startswith(f"hwsim: error: --out {run}: cannot write ") and "No space left on device" in err
        last = checkpoint.latest(run)
        assert f"the last good checkpoint is {last}" in err
        assert checkpoint.load(last)["step"] >= 1                          # whole, and resumable
    finally:
        subprocess.run(["umount", str(disk)])


@pytest.mark.slow
def test_checkpoints_are_kept_rotated_and_deploy_like_params(tmp_path):
    cfg = load_config("mnist_tt_zo", TRAIN[:-1] + ["train.checkpoint.keep=2"])
    metrics = train(cfg, tmp_path, **quiet)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step-00000008.pt", "step-00000009.pt"]
    state = checkpoint.load(checkpoint.latest(tmp_path))
    params = torch.load(tmp_path / "params.pt", weights_only=True)
    assert torch.equal(state["theta"], params["theta"]) and state["step"] == 9
    (tmp_path / "params.pt").unlink()                      # eval and train.init read the checkpoint then
    assert evaluate(tmp_path)["test_accuracy"] == metrics["test_accuracy"]


@pytest.mark.slow
def test_a_fresh_run_does_not_replace_another_silently(tmp_path, capsys):
    """Regression (a tour line without --out replaced the main run's config): an out dir holding a run is
    refused with what to do; --force starts over."""
    args = ["train", "mnist_tt_zo", "--quiet", "--out", str(tmp_path)] + sum((["--set", s] for s in TRAIN), [])
    assert main(args) == 0
    before = (tmp_path / "metrics.json").read_text()
    assert main(args + ["--set", "seed=5"]) == 2
    err = capsys.readouterr().err
    assert err == (f"hwsim: error: --out {tmp_path}: holds a finished run; continue it with `hwsim train --resume "
                   f"{tmp_path}`, replace it with --force, or choose another --out\n")
    assert (tmp_path / "metrics.json").read_text() == before
    assert main(args + ["--set", "seed=5", "--force"]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["seed"] == 5
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)][-1] == "step-00000009.pt"


@given(st.binary(max_size=400), st.integers(0, 399), st.binary(min_size=1, max_size=8))
@settings(max_examples=60, deadline=None)
def test_the_checkpoint_reader_refuses_any_damage_with_a_checkpoint_error(tail, at, patch):
    """Fuzzing the checkpoint reader: random bytes, and a real checkpoint with bytes overwritten or cut,
    load or raise CheckpointError naming the file; nothing else escapes."""
    import tempfile
    state = {"format": 1, "step": 3, "theta": torch.arange(5.0)}
    good = checkpoint.encode(state)
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / "step-00000003.pt"
        for data in (tail, good[:at] + patch + good[at + len(patch):], good[:at]):
            path.write_bytes(data)
            try:
                loaded = checkpoint.load(path)
            except checkpoint.CheckpointError as e:
                assert str(path) in str(e)
            else:
                assert data == good and torch.equal(loaded["theta"], state["theta"])
