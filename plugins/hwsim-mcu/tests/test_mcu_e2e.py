"""hwsim trains on the plug-in's backend through its command line (a few steps, seconds)."""
from __future__ import annotations

import json

import hwsim.cli


def test_train_mnist_tt_zo_on_the_mcu(tmp_path):
    out = tmp_path / "run"
    rc = hwsim.cli.main(["train", "mnist_tt_zo", "--set", "backend.name=mcu", "--set", "train.steps=3",
                         "--set", "train.batch_size=32", "--set", "train.eval_every=3", "--set", "data.test_limit=100",
                         "--set", "data.val_size=100", "--set", "estimator.rge.mu=1", "--out", str(out)])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics
    assert (out / "mapping.txt").read_text().startswith("STM32F746 (Cortex-M")
    assert hwsim.cli.main(["energy", str(out)]) == 0
