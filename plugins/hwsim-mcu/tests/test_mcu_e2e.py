"""hwsim runs the plug-in's backend through its command line, knowing it only by its entry point: train,
energy --explain, eval both ways, compare, and the training state refused when it does not fit the SRAM
(a few steps, seconds)."""
from __future__ import annotations

import json

import pytest

import hwsim.cli

TINY = ["--set", "train.steps=3", "--set", "train.batch_size=32", "--set", "train.eval_every=3",
        "--set", "data.test_limit=100", "--set", "data.val_size=100", "--set", "estimator.rge.mu=1"]


@pytest.fixture(scope="module")
def mcu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mcu") / "run"
    assert hwsim.cli.main(["train", "mnist_tt_zo", "--quiet", "--set", "backend.name=mcu", *TINY, "--out", str(out)]) == 0
    return out


def test_train_mnist_tt_zo_on_the_mcu(mcu_run, capsys):
    metrics = json.loads((mcu_run / "metrics.json").read_text())
    assert metrics["backend"] == "mcu" and metrics["device_memory_rows"] == 1      # streamed one row at a time
    assert 0 < metrics["device_memory_bytes_zo"] < metrics["device_memory_bytes_bp"] <= 320 * 1024
    assert (mcu_run / "mapping.txt").read_text().startswith("STM32F746 (Cortex-M")
    assert json.loads((mcu_run / "architecture.json").read_text())["kind"] == "cortex_m"
    capsys.readouterr()
    assert hwsim.cli.main(["energy", str(mcu_run), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "mcu_cycles_per_mac_simd" in out and "mcu_run_current_per_mhz" in out
    assert f"{metrics['energy_j_training']:.4g} J" in out


def test_eval_deploys_to_and_from_the_mcu(mcu_run, tmp_path, capsys):
    assert hwsim.cli.main(["eval", str(mcu_run), "--set", "backend.name=fixed", "--set", "backend.bits=8",
                           "--set", "data.test_limit=50"]) == 0
    assert f"{mcu_run} on fixed" in capsys.readouterr().out
    ideal = tmp_path / "ideal"
    assert hwsim.cli.main(["train", "mnist_tt_zo", "--quiet", *TINY, "--out", str(ideal)]) == 0
    assert hwsim.cli.main(["eval", str(ideal), "--set", "backend.name=mcu", "--set", "data.test_limit=50",
                           "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["backend"] == "mcu" and result["energy_j_per_inference"] > 0


def test_compare_tables_an_mcu_row(mcu_run, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"config: mnist_tt_zo\nreference: {mcu_run.parent / 'ideal_ref'}\ntest_limit: 50\n"
                    "rows:\n  - {name: float, backend: {name: ideal}}\n  - {name: stm32, backend: {name: mcu}}\n")
    assert hwsim.cli.main(["train", "mnist_tt_zo", "--quiet", *TINY, "--out", str(mcu_run.parent / "ideal_ref")]) == 0
    assert hwsim.cli.main(["compare", str(spec), "--out", str(tmp_path / "cmp")]) == 0
    rows = {r["row"]: r for r in json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"]}
    assert rows["stm32"]["backend"] == "mcu" and rows["stm32"]["energy_j_per_inference"] > 0


def test_a_training_state_larger_than_the_sram_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "big"
    rc = hwsim.cli.main(["train", "mnist_tt_zo", "--set", "backend.name=mcu", *TINY,
                         "--set", "train.batch_size=256", "--set", "architecture.micro_batch=256", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and not out.exists()
    assert "training BP-free on the mcu backend's device needs" in err and "the device holds 327,680 B" in err
