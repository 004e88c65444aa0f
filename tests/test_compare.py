"""`hwsim compare SPEC`: one model on many hardware rows; failing rows keep their reason, the others finish."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from processes import gone, marked

from hwsim.cli import main
from hwsim.compare import load_spec
from hwsim.config import ConfigError

SPEC = """
config: mnist_tt_zo
set: [train.steps=20, train.eval_every=20, data.train_limit=1000, data.val_size=200, data.test_limit=200]
test_limit: 100
chips: 2
finetune: {steps: 2, set: [train.batch_size=32, estimator.rge.num_queries=2]}
rows:
  - {name: ideal, backend: {name: ideal}}
  - {name: fixed 8-bit, backend: {name: fixed, bits: 8}, set: [estimator.rge.mu=0.046875]}
  - {name: photonic, backend: {name: photonic, noise: {preset: typical, phase_bias: 0.0}, block: 4}}
  - {name: broken, backend: {name: fixed, bits: 99}}
"""


@pytest.mark.slow
def test_a_spec_compares_rows_and_a_failing_row_does_not_stop_the_others(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    assert main(["compare", str(spec), "--out", str(out), "--quiet"]) == 1        # one row failed
    report = json.loads((out / "compare.json").read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert rows["broken"]["error"].startswith("ConfigError: backend.bits: 99 is not allowed")
    for name in ("ideal", "fixed 8-bit", "photonic"):
        r = rows[name]
        assert "error" not in r and 0 <= r["deployed_accuracy"] <= 1 and 0 <= r["finetuned_accuracy"] <= 1
        assert r["energy_j_per_inference"] > 0 and r["energy_j_training"] > 0
        assert r["device_memory_bytes_bp"] > r["device_memory_bytes_zo"] > 0
    assert rows["photonic"]["chips"] == 2 and rows["ideal"]["chips"] == 1
    assert {rows[n]["inferences"] for n in ("ideal", "fixed 8-bit", "photonic")} == {100}   # the same images
    chips = [r for r in report["results"] if r["row"] == "photonic"]
    assert sorted(r["chip"] for r in chips) == [0, 1]
    accs = [r["deployed_accuracy"] for r in chips]
    assert rows["photonic"]["deployed_accuracy_min"] == min(accs)
    assert rows["photonic"]["deployed_accuracy"] == pytest.approx(sum(accs) / 2)
    # the ideal row deploys the reference unchanged: its accuracy on the same test images
    ideal = json.loads((out / "reference" / "metrics.json").read_text())
    assert ideal["steps"] == 20
    for name in ("compare.md", "compare.csv", "accuracy_vs_energy.png", "energy_breakdown.png", "chips.png"):
        assert (out / name).stat().st_size > 0
    md = (out / "compare.md").read_text()
    assert "| broken | 1 |" in md and "ConfigError" in md and "| test images |" in md
    assert "[5/5] broken: ConfigError" in capsys.readouterr().out


def test_bad_specs_are_refused_before_anything_runs(tmp_path):
    bad = tmp_path / "bad.yaml"
    for text, message in (("config: mnist_tt_zo\nrows: []\n", "rows: at least one row"),
                          ("rows: [{name: a}, {name: a}]\n", "row names must differ"),
                          ("rows: [{name: a, backend: {bits: 8}}]\n", r"rows\[0\].backend.name: required"),
                          ("rows: [{name: a}]\nset: [train.stepz=3]\n", "train.stepz: unknown key"),
                          ("rows: [{name: a}]\nchipz: 3\n", "chipz: unknown key")):
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_spec(str(bad))
    assert load_spec("mnist_backends").rows[0].name == "ideal fp32"


@pytest.mark.slow
def test_compare_and_eval_take_a_run_that_did_not_finish(tmp_path, capsys):
    """Regression: `hwsim compare` refused a stopped run ("not a finished run") and `hwsim eval` did not
    say that it deployed a checkpoint. A run stopped after step 4 (its final files removed, as a killed
    run leaves it) shows its last evaluation, labelled partial; eval names the checkpoint it deployed."""
    import shutil

    from hwsim import checkpoint
    sets = ["data.train_limit=600", "data.val_size=100", "data.test_limit=200", "train.batch_size=64",
            "train.steps=8", "train.eval_every=4", "train.checkpoint.every_steps=4"]
    args = [a for k in sets for a in ("--set", k)]
    for name in ("done", "stopped"):
        assert main(["train", "mnist_tt_zo", "--quiet", "--out", str(tmp_path / name), *args]) == 0
    stopped = tmp_path / "stopped"
    (stopped / "metrics.json").unlink()
    (stopped / "params.pt").unlink()
    for path in checkpoint.list_checkpoints(stopped)[2:]:              # keep step 0 and step 4
        path.unlink()
    lines = (stopped / "metrics.jsonl").read_text().splitlines()
    (stopped / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")  # step 0 and step 4
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "done"), str(stopped)]) == 0
    table = capsys.readouterr().out
    assert "| stopped (partial: step 4 of 8) | rge | ideal |" in table and "| done | rge | ideal |" in table
    assert main(["eval", str(stopped)]) == 0
    assert "(partial run: its newest checkpoint, step-00000004.pt)" in capsys.readouterr().out
    shutil.rmtree(stopped / "checkpoints")
    (stopped / "metrics.jsonl").write_text("")
    assert main(["compare", str(stopped)]) == 2
    assert "has no evaluation yet" in capsys.readouterr().err


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default, as in a terminal. A test session started in
    the background by a non-interactive shell ignores SIGINT, and a child inherits that through exec: compare
    then never saw the Ctrl-C and the test timed out."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _compare_with_busy_workers(tmp_path, **popen) -> tuple[subprocess.Popen, str]:
    """`hwsim compare SPEC --jobs 2` as a child whose two workers are fine-tuning (for 100,000 steps), and
    the mark its processes carry in their environment."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("finetune: {steps: 2,", "finetune: {steps: 100000,")
                    .replace("  - {name: broken, backend: {name: fixed, bits: 99}}\n", ""))
    mark = f"hwsim-compare-{uuid.uuid4().hex}"
    proc = subprocess.Popen([sys.executable, "-m", "hwsim", "compare", str(spec), "--out", str(tmp_path / "out"),
                             "--jobs", "2", "--quiet"], env={**os.environ, "HWSIM_TEST_MARK": mark},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint, **popen)
    deadline = time.monotonic() + 300
    while len(marked(mark)) < 3 and time.monotonic() < deadline:     # compare + 2 workers fine-tuning
        time.sleep(0.2)
    assert len(marked(mark)) >= 3, proc.communicate(timeout=60)
    time.sleep(2.0)
    return proc, mark


def _kill_all(proc: subprocess.Popen, mark: str) -> None:
    """Whatever the test found: the compare process and every worker it left (a failed assertion must not
    leave two workers fine-tuning for 100,000 steps behind the test session)."""
    proc.kill()
    proc.wait()
    for pid in marked(mark):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_sigterm_to_compare_ends_its_workers(tmp_path):
    """Regression: `hwsim compare --jobs 2` stopped by SIGTERM (a `kill`, not a terminal's Ctrl-C, which
    reaches the whole group) left its worker processes running until their evaluations ended."""
    proc, mark = _compare_with_busy_workers(tmp_path)
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        assert gone(mark, within=30), f"workers left after SIGTERM: {marked(mark)}"
    finally:
        _kill_all(proc, mark)


def test_ctrl_c_to_compare_and_its_workers_is_one_line(tmp_path):
    """Regression: Ctrl-C during `hwsim compare SPEC --jobs 2` (a terminal signals the whole process group)
    printed a 33-line traceback from the workers. Now the workers leave Ctrl-C to the parent, which stops
    with one line (exit 130) and ends them."""
    proc, mark = _compare_with_busy_workers(tmp_path, start_new_session=True)
    try:
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "Traceback" not in err, err
        assert err.strip().splitlines()[-1].startswith("hwsim: stopped at once"), err
        assert gone(mark, within=30), f"workers left after Ctrl-C: {marked(mark)}"
    finally:
        _kill_all(proc, mark)


from hypothesis import given, strategies as st  # noqa: E402


@given(st.lists(st.tuples(st.floats(1e-9, 1.0), st.floats(0.0, 100.0)), min_size=1, max_size=30))
def test_the_pareto_front_holds_exactly_the_undominated_points(points):
    """No point of the front is beaten on both axes by any point; every point off the front is beaten (or
    equalled) by one on it; the front goes up in accuracy as energy grows."""
    from hwsim.compare import pareto_front
    front = pareto_front(points)
    beats = lambda a, b: a[0] <= b[0] and a[1] >= b[1] and a != b     # noqa: E731
    assert all(not any(beats(p, f) and (p[0] < f[0] or p[1] > f[1]) for p in points) for f in front)
    assert all(any(f[0] <= p[0] and f[1] >= p[1] for f in front) for p in points)
    assert all(a[0] <= b[0] and a[1] < b[1] for a, b in zip(front, front[1:]))


def test_help_imports_no_torch_and_is_plain_text():
    """`hwsim --help` and every subcommand's help build without importing torch (the ~1 s import);
    benchmarks/cli_help_time.py times them. The top-level help carries no RST markup (``double backquotes``)."""
    code = ("import sys, contextlib, io\nfrom hwsim.cli import build_parser, main\n"
            "for argv in (['--help'], ['train', '--help'], ['compare', '--help'], ['rtl', 'verify', '--help']):\n"
            "    out = io.StringIO()\n"
            "    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
            "        main(argv)\n"
            "    assert '``' not in out.getvalue() and 'usage: hwsim' in out.getvalue(), argv\n"
            "heavy = sorted(m for m in ('torch', 'numpy', 'matplotlib', 'hwsim.config') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_plot_and_markdown_for_a_spec_are_refused_in_one_line(capsys):
    for flag in ("--plot", "--markdown"):
        assert main(["compare", "mnist_backends", flag, "x.png"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"hwsim: error: {flag}: for run directories only") and "\n" not in err
