"""End to end: real MNIST, a few hundred BP-free steps, through the config, trainer and CLI."""
import json
import re

import pytest
import torch

from hwsim.build import build_backend, build_network
from hwsim.data import load_dataset

from hwsim.cli import main
from hwsim.config import ConfigError, load_config
from hwsim.train import accuracy, train

FAST = ["data.train_limit=4000", "train.steps=150", "train.eval_every=50", "train.batch_size=128", "optimizer.lr=0.01"]


@pytest.mark.slow
def test_tiny_zo_run_learns_and_writes_the_run_directory(tmp_path):
    metrics = train(load_config("mnist_tt_zo", FAST), tmp_path, progress=False, log=lambda s: None)
    assert metrics["test_accuracy"] > 0.5                       # chance is 0.1
    assert metrics["forward_queries"] == 150 * (8 * 10 + 1)    # 8 TT cores x N=10, plus the base loss
    assert metrics["trainable_params"] == 1504 and metrics["dense_params"] == 203264
    for name in ("config.yaml", "metrics.jsonl", "metrics.json", "curves.png", "params.pt"):
        assert (tmp_path / name).stat().st_size > 0
    saved = torch.load(tmp_path / "params.pt")
    assert saved["theta"].shape == (1504,) and saved["tensors"]["0.core1"].shape == (4, 7, 4, 4)
    # the saved parameters reproduce the reported test accuracy
    cfg = load_config("mnist_tt_zo", FAST)
    net = build_network(cfg.model)
    backend = build_backend(cfg.backend, net)
    data = load_dataset("mnist", val_size=cfg.data.val_size)
    acc = accuracy(net, backend, saved["theta"].float(), torch.from_numpy(data.test.x), torch.from_numpy(data.test.y), 2000)
    assert acc == metrics["test_accuracy"]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 50, 100, 150]        # step 0: the untrained model
    assert lines[0]["train_loss"] is None and lines[0]["forward_queries"] == 0
    assert 0.0 <= lines[0]["test_accuracy"] < 0.3 < lines[-1]["test_accuracy"]
    assert lines[-1]["forward_queries"] == metrics["forward_queries"]
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_same_config_and_seed_give_identical_metrics(tmp_path):
    runs = [train(load_config("mnist_tt_zo", FAST[:1] + ["train.steps=40", "train.eval_every=20"]),
                  tmp_path / str(i), progress=False, log=lambda s: None) for i in range(2)]
    for m in runs:
        m.pop("wall_s")
    assert runs[0] == runs[1]
    other = train(load_config("mnist_tt_zo", FAST[:1] + ["train.steps=40", "train.eval_every=20", "seed=1"]),
                  None, progress=False, log=lambda s: None)
    assert other["test_accuracy"] != runs[0]["test_accuracy"] or other["val_accuracy"] != runs[0]["val_accuracy"]


@pytest.mark.slow
def test_hybrid_switches_to_cge_and_fo_baseline_runs(tmp_path):
    cfg = load_config("mnist_tt_hybrid", FAST[:1] + ["train.epochs=2", "train.batch_size=500",
                                                      "estimator.switch_epoch=1", "train.eval_every=4"])
    metrics = train(cfg, tmp_path, progress=False, log=lambda s: None)
    phases = [json.loads(line)["phase"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert phases[0] == "rge" and phases[-1] == "cge"
    # 8 RGE steps at 81 queries, then 8 CGE steps at d + 1 = 1505
    assert metrics["forward_queries"] == 8 * 81 + 8 * 1505
    fo = train(load_config("mnist_tt_fo", FAST), None, progress=False, log=lambda s: None)
    assert fo["test_accuracy"] > 0.8 and fo["forward_queries"] == 150


def test_cli_reports_config_errors_and_info(capsys, tmp_path):
    assert main(["train", "mnist_tt_zo", "--set", "train.stepz=3", "--out", str(tmp_path)]) == 2
    assert "train.stepz: unknown key" in capsys.readouterr().err
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "ideal" in out and "mnist_tt_zo" in out and "sha256 ok" in out
    assert "architecture fpga; exact; devices cpu" in out and "architecture photonic; chip_instances; devices cpu" in out
    assert "verilator" in out and "yosys" in out              # the rtl command plug-in's info lines


@pytest.mark.slow
def test_cli_train_then_compare(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "mnist_tt_zo", "--quiet", "--out", str(run)] + sum((["--set", s] for s in FAST), [])) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 150
    capsys.readouterr()
    assert main(["compare", str(run), "--plot", str(tmp_path / "cmp.png"), "--markdown", str(tmp_path / "t.md")]) == 0
    table = capsys.readouterr().out
    assert f"| run | rge | ideal | {100 * metrics['test_accuracy']:.4g} |" in table
    assert (tmp_path / "t.md").read_text().strip() == table.strip()
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["compare", str(tmp_path)]) == 2
    assert "is not a run directory: metrics.jsonl is missing" in capsys.readouterr().err
    # deploy: the same backend reproduces the run's accuracy; 16-bit fixed point lands close to it
    assert main(["eval", str(run), "--json", str(tmp_path / "same.json")]) == 0
    assert json.loads((tmp_path / "same.json").read_text())["test_accuracy"] == metrics["test_accuracy"]
    assert main(["eval", str(run), "--set", "backend.name=fixed", "--set", "backend.bits=16",
                 "--json", str(tmp_path / "fixed.json")]) == 0
    fixed = json.loads((tmp_path / "fixed.json").read_text())
    assert fixed["backend"] == "fixed" and abs(fixed["test_accuracy"] - metrics["test_accuracy"]) < 0.01
    assert "on fixed {'bits': 16}: test accuracy" in capsys.readouterr().out
    assert main(["eval", str(tmp_path)]) == 2
    assert "has no config.yaml" in capsys.readouterr().err


@pytest.mark.slow
def test_fine_tuning_starts_from_a_previous_run(tmp_path):
    """train.init loads a run's decoded weights: with a vanishing learning rate the fine-tuned model is the
    source model (same test accuracy); a wrong path or model size is a clear config error."""
    short = FAST[:1] + ["train.steps=60", "train.eval_every=60", "data.test_limit=1000"]
    source = train(load_config("mnist_tt_zo", short), tmp_path / "a", progress=False, log=lambda s: None)
    tuned = train(load_config("mnist_tt_zo", short[:1] + ["train.steps=1", "train.eval_every=1", "data.test_limit=1000",
                                                          "optimizer.lr=1.0e-12", f"train.init={tmp_path / 'a'}"]),
                  tmp_path / "b", progress=False, log=lambda s: None)
    assert tuned["test_accuracy"] == source["test_accuracy"] > 0.2
    with pytest.raises(ConfigError, match="train.init: nowhere: neither a params.pt or checkpoint file nor a run directory"):
        train(load_config("mnist_tt_zo", short + ["train.init=nowhere"]), None, progress=False, log=lambda s: None)
    with pytest.raises(ConfigError, match=r"train.init: .* holds 1504 parameters, the model has"):
        train(load_config("mnist_tt_zo", short + [f"train.init={tmp_path / 'a'}", "model.layers.0.rank=2"]),
              None, progress=False, log=lambda s: None)


def test_without_a_terminal_the_run_logs_one_plain_line_per_evaluation(tmp_path, capsys):
    """Regression: in a log file the progress bar became one 192 KB line of carriage returns, and
    --quiet printed nothing until the end. Without a terminal (and with --quiet) each evaluation is one
    line with step, fields and time; the untrained model is evaluated at step 0; once the first steps
    are timed a line says how long the rest will take."""
    from hwsim import progress
    from hwsim.cli import main
    progress.ESTIMATE_AFTER_S = 0.0
    try:
        code = main(["train", "mnist_tt_zo", "--quiet", "--out", str(tmp_path / "run"), "--set", "data.train_limit=600",
                     "--set", "data.val_size=100", "--set", "data.test_limit=100", "--set", "train.batch_size=64",
                     "--set", "train.steps=8", "--set", "train.eval_every=4"])
    finally:
        progress.ESTIMATE_AFTER_S = 2.0
    out = capsys.readouterr()
    assert code == 0 and "\r" not in out.out + out.err
    steps = [line for line in out.out.splitlines() if line.startswith("hwsim: step ")]
    assert [line.split()[2] for line in steps] == ["0/8", "4/8", "8/8"]
    assert "test_acc" in steps[0] and "left" in steps[1]
    assert sum(bool(re.search(r"s per step \(RGE\): about", line)) for line in out.out.splitlines()) == 1
