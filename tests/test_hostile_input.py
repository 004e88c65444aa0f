"""Hostile input, one class a case: every command refuses it with one line on stderr that names the key
or file and what is allowed, exit code 2, no traceback, and leaves nothing behind.

CASES is the table of docs/reliability.md (a test checks that every class is listed there). Cases that
need a run directory, a checkpoint or a dataset on disk build it in ``tmp_path`` first (``setup``)."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

import pytest

from hwsim.cli import main

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
TINY = [a for key in ("train.steps=1", "data.train_limit=512", "data.val_size=100", "data.test_limit=100",
                      "train.batch_size=64", "train.eval_every=1")
        for a in ("--set", key)]
TRAIN = ["train", "mnist_tt_zo", "--quiet", "--out", "o", *TINY]
PINN = ["pinn", "hjb20_zo_tt_sg", "--quiet", "--out", "o", "--set", "train.steps=1"]


def _files(**named):
    """A setup that writes files: name -> bytes or str."""
    def setup(root: Path) -> None:
        for name, content in named.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return setup


def _idx(root: Path, truncate: int = 0, classes: int = 10, train_images: tuple[int, ...] = (600, 28, 28)) -> None:
    """A directory 'idx' with the four MNIST-style IDX files (train labels cut by ``truncate`` bytes, labels
    0..classes-1, train images of shape ``train_images``)."""
    def write(name: str, dims: tuple[int, ...], cut: int = 0) -> None:
        header = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
        n = 1
        for d in dims:
            n *= d
        data = header + bytes(i % classes for i in range(n))      # labels 0..classes-1; any pixels
        (root / "idx" / name).write_bytes(data[:len(data) - cut])
    (root / "idx").mkdir()
    write("train-images-idx3-ubyte", train_images)
    write("train-labels-idx1-ubyte", (600,), truncate)
    write("t10k-images-idx3-ubyte", (100, 28, 28))
    write("t10k-labels-idx1-ubyte", (100,))


def _run_dir(root: Path) -> None:
    """'run': a finished tiny run."""
    assert main(["train", "mnist_tt_zo", "--quiet", "--out", str(root / "run"), *TINY]) == 0


def _damaged_metrics(root: Path) -> None:
    _run_dir(root)
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    metrics["counters"]["passes_rows64"] = "many"
    (root / "run" / "metrics.json").write_text(json.dumps(metrics))


def _metrics_list(root: Path) -> None:
    _run_dir(root)
    (root / "run" / "metrics.json").write_text("[]")


def _rewritten_checkpoint(change) -> Callable[[Path], None]:
    """A finished tiny run whose newest checkpoint is re-encoded (a valid file) with ``change(state)``."""
    def setup(root: Path) -> None:
        from hwsim import checkpoint
        _run_dir(root)
        path = checkpoint.latest(root / "run")
        path.write_bytes(checkpoint.encode(change(checkpoint.load(path))))
    return setup


def _garbage_jsonl(root: Path) -> None:
    _run_dir(root)
    lines = (root / "run" / "metrics.jsonl").read_text().splitlines()
    (root / "run" / "metrics.jsonl").write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")


def _nan_params(root: Path) -> None:
    import torch
    _run_dir(root)
    params = torch.load(root / "run" / "params.pt", weights_only=True)
    params["theta"][3] = float("nan")
    torch.save(params, root / "run" / "params.pt")


def _garbage_params(root: Path) -> None:
    _run_dir(root)
    shutil.rmtree(root / "run" / "checkpoints")
    (root / "run" / "params.pt").write_bytes(b"not a torch file")


# (class, setup or None, argv, what the one line must contain (regex))
CASES = [
    ("malformed YAML", _files(**{"bad.yaml": "seed: 0\ndata: [1, 2\n"}), ["train", "bad.yaml"],
     r"config 'bad\.yaml': not valid YAML at line 3, column 1"),
    ("missing config", None, ["train", "nope.yaml"], r"config 'nope\.yaml': no such file and no shipped config .*; shipped: "),
    ("config is a directory", _files(**{"d/x": ""}), ["train", "d"], r"config 'd': is a directory"),
    ("unreadable config (not UTF-8)", _files(**{"bin.yaml": b"\xff\xfe\x00"}), ["train", "bin.yaml"],
     r"config 'bin\.yaml': cannot be read \('utf-8' codec"),
    ("config not a mapping", _files(**{"list.yaml": "- 1\n"}), ["train", "list.yaml"],
     r"config 'list\.yaml': the YAML must be a mapping of sections"),
    ("empty config", _files(**{"empty.yaml": ""}), ["train", "empty.yaml"], r"must be a mapping of sections"),
    ("config of the other kind", None, ["train", "hjb20_zo_tt_sg"], r"has a pde section: it is a PINN config"),
    ("unknown section", None, [*TRAIN, "--set", "foo=1"], r"foo: unknown key; allowed: seed, model, backend"),
    ("unknown key", None, [*TRAIN, "--set", "data.nme=1"], r"data\.nme: unknown key; allowed: name, path"),
    ("unknown backend", None, [*TRAIN, "--set", "backend.name=gpu"],
     r"backend\.name: unknown backend 'gpu'; known backends: fixed, ideal, .*photonic, rtl"),
    ("unknown backend option", None, [*TRAIN, "--set", "backend.bitz=3"],
     r"backend\.bitz: unknown key; allowed: dtype, device, tt_method"),
    ("unknown estimator", None, [*TRAIN, "--set", "estimator.name=spsa"],
     r"estimator\.name: 'spsa' is not allowed; expected one of 'rge', 'cge', 'hybrid', 'fo'"),
    ("unknown optimizer", None, [*TRAIN, "--set", "optimizer.name=lion"], r"optimizer\.name: 'lion' is not allowed"),
    ("unknown dataset", None, [*TRAIN, "--set", "data.name=cifar"], r"data\.name: 'cifar' is not allowed"),
    ("unknown noise preset", None, [*TRAIN, "--set", "backend.name=photonic", "--set", "backend.noise=awful"],
     r"backend\.noise\.preset: 'awful' is not allowed; use one of ideal, typical, pessimistic"),
    ("unknown simulator", None, [*TRAIN, "--set", "backend.name=rtl", "--set", "backend.sim=vcs"],
     r"backend\.sim: 'vcs' is not allowed; expected one of 'verilator', 'icarus'"),
    ("unknown PDE problem", None, [*PINN, "--set", "pde.problem=wave"], r"pde\.problem: 'wave' is not allowed"),
    ("wrong type", None, [*TRAIN, "--set", "train.steps=abc"], r"train\.steps: expected an integer or null, got 'abc'"),
    ("fraction where an integer is needed", None, [*TRAIN, "--set", "train.steps=1.5"],
     r"train\.steps: expected an integer or null, got 1\.5"),
    ("scalar where a list is needed", None, [*TRAIN, "--set", "model.layers=3"], r"model\.layers: expected a list"),
    ("zero size", None, [*TRAIN, "--set", "train.batch_size=0"], r"train\.batch_size: expected a number > 0, got 0"),
    ("negative size", None, [*TRAIN, "--set", "train.steps=-5"], r"train\.steps: expected a number > 0, got -5"),
    ("absurd steps (10^12)", None, [*TRAIN, "--set", "train.steps=1000000000000"],
     r"train\.steps: 1,000,000,000,000 steps is not allowed; use at most 1,000,000,000"),
    ("absurd epochs", None, [*TRAIN, "--set", "train.steps=null", "--set", "train.epochs=1000000000"],
     r"train\.epochs: 8,000,000,000 steps is not allowed"),
    ("absurd batch (10^9)", None, [*TRAIN, "--set", "train.batch_size=1000000000"],
     r"train\.batch_size: 1000000000 is larger than the 512 training examples"),
    ("absurd queries (10^9)", None, [*TRAIN, "--set", "estimator.rge.num_queries=1000000000"],
     r"estimator\.rge\.num_queries: 1,000,000,000 directions of 1,504 parameters .* need 32\.8 TiB, more than "
     r"this machine's .* of memory"),
    ("absurd collocation points (10^9)", None, [*PINN, "--set", "pde.points=1000000000"],
     r"pde\.points: 1,000,000,000 points x 946 stencil nodes \(stein_grid\) x 64 features need .* more than"),
    ("absurd sparse-grid level", None, [*PINN, "--set", "pde.derivatives.level=100"],
     r"pde\.derivatives: the stein_grid stencil's [\d,]+ nodes in 21 dimensions \(level 100\) need"),
    ("absurd layer width", None, [*TRAIN, "--set", "model.layers.0.in_features=1000000000000",
                                  "--set", "model.layers.0.in_factors=[1000000, 1000000]",
                                  "--set", "model.layers.0.out_factors=[16, 16]", "--set", "model.layers.0.rank=4000"],
     r"model\.layers: 128,000,000,480 parameters .* need .* more than this machine's"),
    ("TT factors that do not multiply to the size", None, [*TRAIN, "--set", "model.layers.0.in_factors=[4,7,7,5]"],
     r"model\.layers\[0\]: in_factors \(4, 7, 7, 5\) multiply to 980, not in_features=784"),
    ("rank 0", None, [*TRAIN, "--set", "model.layers.0.rank=0"], r"model\.layers\[0\]: TT factors and ranks must be positive"),
    ("ranks of the wrong length", None, [*TRAIN, "--set", "model.layers.0.rank=[2,2]"],
     r"model\.layers\[0\]: rank needs 3 internal ranks for 4 cores, got \[2, 2\]"),
    ("layers that do not chain", None, [*TRAIN, "--set", "model.layers.2.in_features=128",
                                        "--set", "model.layers.2.in_factors=[2,4,4,4]"],
     r"model\.layers: layer sizes do not chain: 256 outputs feed 128 inputs"),
    ("model that does not fit the data", None, [*TRAIN, "--set", "model.layers.2.out_features=16",
                                                "--set", "model.layers.2.out_factors=[1,4,4,1]"],
     r"model\.layers: the network maps 784 -> 16, the data needs 784 -> 10"),
    ("bit width out of range", None, [*TRAIN, "--set", "backend.name=fixed", "--set", "backend.bits=64"],
     r"backend\.bits: 64 is not allowed; use an integer in 2\.\.32"),
    ("format out of range", None, [*TRAIN, "--set", "backend.name=fixed", "--set", "backend.int_bits={weight: 100}"],
     r"backend\.int_bits\.weight: 100 is not allowed"),
    ("accumulator beyond the exact emulation", None, [*TRAIN, "--set", "backend.name=fixed", "--set", "backend.bits=32"],
     r"an accumulator of \d+ bits exceeds the 64-bit integer emulation"),
    ("RTL option out of range", None, [*TRAIN, "--set", "backend.name=rtl", "--set", "backend.lanes=0"],
     r"backend\.lanes: 0 is not allowed; use an integer in 1\.\.64"),
    ("a GPU where torch sees none", None, [*TRAIN, "--set", "backend.name=fixed", "--set", "backend.device=cuda"],
     r"backend\.device: 'cuda' was asked for but torch sees no CUDA device; use 'cpu' or 'auto'"),
    ("a device for the simulated RTL core", None, [*TRAIN, "--set", "backend.name=rtl", "--set", "backend.device=cuda"],
     r"backend\.device: 'cuda' is not allowed; the rtl backend runs its core in a simulator on the host: use cpu"),
    ("--set without =", None, [*TRAIN, "--set", "train.steps"], r"--set 'train\.steps': expected key\.path=value"),
    ("--set with a bad YAML value", None, [*TRAIN, "--set", "train.steps=[1,"], r"--set train\.steps: '\[1,' is not a valid YAML value"),
    ("--set with an empty key", None, [*TRAIN, "--set", "=5"], r"--set '=5': '' is not a key path"),
    ("--set with an empty key part", None, [*TRAIN, "--set", "train..steps=5"], r"'train\.\.steps' is not a key path"),
    ("--set past the end of a list", None, [*TRAIN, "--set", "model.layers.9.rank=2"],
     r"--set model\.layers\.9\.rank: model\.layers\.9 does not exist"),
    ("--set into a scalar", None, [*TRAIN, "--set", "seed.x=2"], r"--set seed\.x: seed is not a mapping"),
    ("--out is a file", _files(afile="x"), [*TRAIN, "--out", "afile"], r"--out afile: is a file, not a directory"),
    ("--out under a file", _files(afile="x"), [*TRAIN, "--out", "afile/sub"],
     r"--out afile/sub: cannot write the run directory \(Not a directory\)"),
    ("--out that cannot be created", None, [*TRAIN, "--out", "/proc/hwsim-test"],
     r"--out /proc/hwsim-test: cannot write the run directory"),
    ("--out holding a run", _run_dir, [*TRAIN, "--out", "run"], r"--out run: holds a finished run; continue it with"),
    ("dataset directory missing", None, [*TRAIN, "--set", "data.name=idx", "--set", "data.path=nope"],
     r"data\.path: IDX directory nope does not exist"),
    ("dataset path is a file", _files(afile="x"), [*TRAIN, "--set", "data.name=idx", "--set", "data.path=afile"],
     r"data\.path: IDX directory afile is a file, not a directory"),
    ("truncated dataset", lambda root: _idx(root, truncate=7), [*TRAIN, "--set", "data.name=idx", "--set", "data.path=idx"],
     r"idx/train-labels-idx1-ubyte is truncated: 593 bytes for shape \(600,\)"),
    ("corrupted dataset (gzip)", lambda root: (_idx(root), (root / "idx" / "t10k-labels-idx1-ubyte").unlink(),
                                               (root / "idx" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8bxx")),
     [*TRAIN, "--set", "data.name=idx", "--set", "data.path=idx"], r"t10k-labels-idx1-ubyte\.gz: cannot be read"),
    ("not an IDX file", lambda root: (_idx(root), (root / "idx" / "t10k-images-idx3-ubyte").write_bytes(b"GIF89a")),
     [*TRAIN, "--set", "data.name=idx", "--set", "data.path=idx"], r"t10k-images-idx3-ubyte is not an unsigned-byte IDX file"),
    ("corrupted params.pt", _garbage_params, ["eval", "run"], r"run/params\.pt"),
    ("eval of a directory that is not a run", _files(**{"notrun/x": ""}), ["eval", "notrun"],
     r"notrun has no config\.yaml: give a run directory written by `hwsim train` or `hwsim pinn`"),
    ("compare of a directory that is not a run", _files(**{"notrun/x": ""}), ["compare", "notrun"],
     r"notrun is not a run directory: metrics\.jsonl is missing"),
    ("energy of a directory that is not a run", _files(**{"notrun/x": ""}), ["energy", "notrun"],
     r"notrun has no config\.yaml"),
    ("integer beyond 64 bits", None, [*TRAIN, "--set", "seed=1180591620717411303424"],
     r"seed: 1180591620717411303424 is not allowed; use an integer of magnitude below 2\^63"),
    ("non-finite number", None, [*TRAIN, "--set", "optimizer.lr=.nan"], r"optimizer\.lr: nan is not allowed; use a finite number"),
    ("a huge value", None, [*TRAIN, "--set", "seed=" + str([list(range(3000))] * 20)],
     r"^hwsim: error: seed: expected an integer, got \[\[0, 1, 2, .{60,120}\.\.\. \(3[0-9,]+ characters\)\n$"),
    ("IDX labels beyond the classes", lambda root: _idx(root, classes=12), [*TRAIN, "--set", "data.name=idx", "--set", "data.path=idx"],
     r"idx/train-labels-idx1-ubyte: label 11 found; labels are the classes 0\.\.9"),
    ("IDX images not a stack of 2-D images", lambda root: _idx(root, train_images=(600, 784)),
     [*TRAIN, "--set", "data.name=idx", "--set", "data.path=idx"],
     r"idx/train-images-idx3-ubyte: images of shape \(600, 784\); expected \(count >= 1, rows, columns\)"),
    ("checkpoint that is not a run's state", _rewritten_checkpoint(lambda state: [1, 2, 3]), ["train", "--resume", "run"],
     r"checkpoint run/checkpoints/step-0+1\.pt: holds a list, not a run's state"),
    ("checkpoint missing keys", _rewritten_checkpoint(lambda state: {"format": state["format"]}), ["train", "--resume", "run"],
     r"checkpoint run/checkpoints/step-0+1\.pt: not a run's state \(no command, step, config, backend_theta\)"),
    ("checkpoint of another model size", _rewritten_checkpoint(lambda state: {**state, "backend_theta": state["backend_theta"][:7]}),
     ["train", "--resume", "run"], r"checkpoint run/checkpoints/step-0+1\.pt: holds 7 parameters, the model has 1504"),
    ("checkpoint beyond the run's steps", _rewritten_checkpoint(lambda state: {**state, "step": 10 ** 6}),
     ["train", "--resume", "run"], r"checkpoint run/checkpoints/step-0+1\.pt: step 1000000 is outside the run's 0\.\.1 steps"),
    ("garbage in metrics.jsonl", _garbage_jsonl, ["compare", "run"], r"run/metrics\.jsonl: line 2 is not an evaluation record"),
    ("YAML nested beyond reading", _files(**{"deep.yaml": "seed: " + "[" * 5000 + "]" * 5000 + "\n"}), ["train", "deep.yaml"],
     r"config 'deep\.yaml': not valid YAML \(nested deeper than can be read\)"),
    ("parameters that are not finite", _nan_params, ["eval", "run"], r"eval: run/params\.pt holds 1 non-finite parameters"),
    ("backend option not finite", None, [*TRAIN, "--set", "backend.name=photonic", "--set", "backend.symbol_rate_hz=.inf"],
     r"backend\.symbol_rate_hz: inf is not allowed; use a finite number"),
    ("a huge backend option", None, [*TRAIN, "--set", "backend.name=photonic", "--set", "backend.noise=" + str([list(range(3000))] * 20)],
     r"^hwsim: error: backend\.noise: \[\[0, 1, 2, .{60,120}\.\.\. \(3[0-9,]+ characters\) is not allowed; use a preset"),
    ("a key given twice", _files(**{"dup.yaml": "seed: 0\nseed: 1\n"}), ["train", "dup.yaml"],
     r"config 'dup\.yaml': not valid YAML at line 2, column 1 \(the key 'seed' is given twice\)"),
    ("compare with no worker", None, ["compare", "mnist_backends", "--jobs", "0"],
     r"--jobs: 0 is not allowed; use a number of processes >= 1"),
    ("compare spec with no test image", _files(**{"s.yaml": "test_limit: 0\nrows: [{name: a, backend: {name: ideal}}]\n"}),
     ["compare", "s.yaml"], r"test_limit: expected a number > 0 \(or null: every test image\), got 0"),
    ("device-table band upside down", _run_dir, ["energy", "run", "--set", "energy.int8_mult={value: 1, low: 2, high: 0.5}"],
     r"energy\.int8_mult: low 2 is above high 0\.5 \(pJ\)"),
    ("device-table entry in another quantity's unit", _run_dir, ["energy", "run", "--set", "energy.int8_mult={value: 5, unit: ns}"],
     r"energy\.int8_mult\.unit: ns does not measure int8_mult \(J\)"),
    ("damaged metrics.json counters", _damaged_metrics, ["energy", "run"],
     r"run/metrics\.json: counters\.passes_rows64: expected counts >= 0"),
    ("metrics.json not a mapping", _metrics_list, ["energy", "run"], r"run/metrics\.json: not the metrics of a run \(TypeError"),
    ("energy of a run on another backend", _run_dir, ["energy", "run", "--set", "backend.name=photonic"],
     r"backend\.name: run ran on 'ideal'; .* deploy it there with `hwsim eval run --set backend\.name=photonic`"),
    ("device-table entry not positive", _run_dir, ["energy", "run", "--set", "energy.int8_mult=-0.2"],
     r"energy\.int8_mult\.value: -0\.2 pJ is not allowed; use a number > 0 \(in pJ\)"),
    ("device-table unit of another quantity", _run_dir, ["energy", "run", "--set", "energy.fpga_static_power=95pJ"],
     r"energy\.fpga_static_power: pJ does not measure fpga_static_power \(W\); use one of uW, mW, W"),
    ("unknown architecture key", None, [*TRAIN, "--set", "architecture.wdm=4"],
     r"architecture\.wdm: not a key of the digital architecture \(backend ideal\); allowed: "),
    ("architecture key the backend sets", None, [*TRAIN, "--set", "backend.name=rtl", "--set", "architecture.lanes=8"],
     r"architecture\.lanes: set by the rtl backend's simulation; use backend\.lanes"),
    ("resume of a directory that is not a run", _files(**{"notrun/x": ""}), ["train", "--resume", "notrun"],
     r"--resume notrun: no config\.yaml there"),
    ("fine-tuning from something that is not a run", _files(**{"notrun/x": ""}), [*TRAIN, "--set", "train.init=notrun"],
     r"train\.init: notrun: neither a params\.pt or checkpoint file nor a run directory"),
    ("command-line number out of range", None, ["rtl", "verify", "--vectors", "0"], r"--vectors: 0 is not allowed; use a number > 0"),
    ("--nproc 0", None, [*TRAIN, "--nproc", "0"], r"--nproc: 0 is not allowed"),
    ("--json that cannot be written", _run_dir, ["eval", "run", "--json", "/proc/x/y.json"], r"/proc/x"),
]


WITHOUT_GPU = {"a GPU where torch sees none"}


@pytest.mark.parametrize("what, setup, argv, message", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_exit_2_and_leaves_nothing(what, setup, argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if what in WITHOUT_GPU:                   # also on a machine that has one
        import torch
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if setup is not None:
        setup(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hwsim: error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before     # nothing written


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    from hwsim.config import ConfigError
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="train.steps"):
        main(["--debug", *TRAIN, "--set", "train.steps=0"])


def test_a_failure_in_the_first_step_leaves_no_run_directory(tmp_path, monkeypatch, capsys):
    """Regression: a run that failed after writing config.yaml and the step-0 checkpoint left a directory
    that looked like a stopped run. Now a fresh run that fails before its first step removes what it wrote."""
    from hwsim import zo

    def broken(*args, **kwargs):
        raise RuntimeError("injected failure in the first step")
    monkeypatch.setattr(zo.RGE, "estimate", broken)
    assert main([*TRAIN, "--out", str(tmp_path / "a" / "b")]) == 1        # an internal failure: one line
    assert "internal error (RuntimeError: injected failure in the first step)" in capsys.readouterr().err
    assert not (tmp_path / "a" / "b").exists()


def test_out_of_memory_is_one_line(tmp_path, monkeypatch, capsys):
    """What the size checks do not foresee: an allocation that fails is one line (exit 1), not a traceback."""
    from hwsim import zo

    def greedy(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 512000000000 bytes")
    monkeypatch.setattr(zo.RGE, "estimate", greedy)
    assert main([*TRAIN, "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hwsim: error: out of memory ([enforce fail") and err.count("\n") == 1


def test_commands_that_write_files_create_their_parents(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _run_dir(tmp_path)
    assert main(["eval", "run", "--json", "a/b/eval.json"]) == 0
    assert main(["compare", "run", "--plot", "c/d/cmp.png", "--markdown", "e/f/cmp.md"]) == 0
    assert main([*TRAIN, "--out", "g/h/run"]) == 0
    for path in ("a/b/eval.json", "c/d/cmp.png", "e/f/cmp.md", "g/h/run/metrics.json"):
        assert (tmp_path / path).is_file(), path


def test_every_case_is_in_the_reliability_table():
    doc = DOC.read_text()
    missing = [what for what, *_ in CASES if f"| {what} |" not in doc]
    assert not missing, f"docs/reliability.md lacks rows for: {missing}"


def test_a_run_directory_has_one_writer_and_a_killed_holder_leaves_no_stale_lock(tmp_path, monkeypatch, capsys):
    """Another process holding RUN/.hwsim.lock: a fresh run with --force into it and a --resume of it exit 2
    with one line naming the holder's PID and touch nothing; once the holder is SIGKILLed, the same command
    runs (the kernel released the lock)."""
    import signal
    import subprocess
    import sys
    monkeypatch.chdir(tmp_path)
    _run_dir(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                               "from hwsim.rundir import RunLock\nRunLock().acquire(Path('run'))\n"
                               "print('held', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")}
        for argv in ([*TRAIN, "--out", "run", "--force"], ["train", "--resume", "run", "--quiet"]):
            capsys.readouterr()
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert err == f"hwsim: error: --out run: in use by another hwsim process (PID {holder.pid}); wait for it " \
                          f"to end or choose another --out\n"
            assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*")} == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main([*TRAIN, "--out", "run", "--force"]) == 0
    assert (tmp_path / "run" / ".hwsim.lock").read_text().strip() == str(os.getpid())   # this process held it last


def test_an_unforeseen_failure_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    """The one exception boundary: an exception no handler foresaw reaches the user as one line naming its
    type (exit 1, an internal failure, not bad input); --debug shows the traceback."""
    import hwsim.train
    monkeypatch.chdir(tmp_path)

    def broken(*args, **kwargs):
        raise TypeError("an unforeseen failure\nwith a second line")
    monkeypatch.setattr(hwsim.train, "evaluate", broken)
    assert main(["eval", "run"]) == 1
    err = capsys.readouterr().err
    assert err == ("hwsim: error: internal error (TypeError: an unforeseen failure); run again with --debug for the "
                   "traceback and report it\n")
    with pytest.raises(TypeError, match="unforeseen"):
        main(["--debug", "eval", "run"])
