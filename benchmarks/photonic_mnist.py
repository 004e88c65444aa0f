"""The photonic deployment table of docs/results.md: the ideal-trained MNIST TT model (runs/mnist_tt_zo,
`make run`) deployed on a simulated photonic chip under each noise preset, then trained in situ in the
phase domain (BP-free: ZO perturbs the MZI phases, the host never sees a weight) on that chip.

    python benchmarks/photonic_mnist.py [--rows ...] [--steps 1000] [--collect]

Rows: deploy_<chip> (test accuracy of the programmed weights, no training), insitu_<chip> (phase-domain
RGE from the deployed phases, ``--steps`` steps; its deploy accuracy after the same drift is in
"deployed_after_drift"). Chips: ideal, typical, typical_cal (biases calibrated from forward measurements
first), typical_fab (typical with the fabrication bias already removed), pessimistic_fab, drift (typical_fab
with a fast drift of 0.5 rad rms per 1,000 steps). Writes runs/photonic_mnist/<row>/ and
benchmarks/results/photonic_mnist.json; resumable like hjb_table.py.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common import RESULTS, finished_run, save
from hwsim.build import build_backend, build_network
from hwsim.config import load_config
from hwsim.data import load_dataset
from hwsim.report import markdown_table
from hwsim.train import accuracy, train

TRAINED = "runs/mnist_tt_zo"          # `make run`
CHIPS = {
    "ideal": ["backend.noise=ideal"],
    "typical": ["backend.noise=typical"],
    "typical_cal": ["backend.noise=typical", "backend.calibrate=true"],
    "typical_fab": ["backend.noise={preset: typical, phase_bias: 0.0}"],
    "pessimistic_fab": ["backend.noise={preset: pessimistic, phase_bias: 0.0}"],
    "drift": ["backend.noise={preset: typical, phase_bias: 0.0, drift: 0.5}"],
}
INSITU = ["backend.params=phases", "estimator.rge.mu=0.05", "optimizer.lr=0.0003",
          "optimizer.schedule={name: cosine, min_lr: 0.00001}", f"train.init={TRAINED}"]


def overrides(chip: str, steps: int) -> list[str]:
    return (["backend.name=photonic"] + CHIPS[chip] + INSITU
            + [f"train.steps={steps}", f"train.eval_every={max(1, steps // 10)}"])


@torch.no_grad()
def deployed(chip: str, steps: int, drift_steps: int = 0) -> dict:
    """Test accuracy of the trained weights programmed onto the chip (after ``drift_steps`` of drift)."""
    cfg = load_config("mnist_tt_zo", overrides(chip, steps))
    data = load_dataset(cfg.data.name, cfg.data.path, cfg.data.val_size)
    network = build_network(cfg.model)
    backend = build_backend(cfg.backend, network)
    theta = backend.encode(backend.to_backend(torch.load(Path(TRAINED) / "params.pt")["theta"]))
    backend.advance(drift_steps)
    x = torch.from_numpy(data.test.x).to(backend.dtype)
    acc = accuracy(network, backend, theta, x, torch.from_numpy(data.test.y), 1000)
    return {"test_accuracy": acc, "counters": backend.counters()}


def main() -> None:
    rows = [f"{kind}_{chip}" for kind in ("deploy", "insitu") for chip in CHIPS]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", choices=rows, default=rows)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--out", default="runs/photonic_mnist")
    ap.add_argument("--collect", action="store_true")
    args = ap.parse_args()
    if not (Path(TRAINED) / "params.pt").is_file():
        raise SystemExit(f"{TRAINED}/params.pt is missing: run `make run` first")
    path = RESULTS / "photonic_mnist.json"
    previous = {r["row"]: r for r in json.loads(path.read_text())["rows"]} if path.is_file() else {}
    results = dict(previous)
    for name in args.rows:
        kind, chip = name.split("_", 1)
        ov = overrides(chip, args.steps)
        if kind == "deploy":
            if name in previous and args.collect:
                continue
            metrics = previous[name]["metrics"] if name in previous and previous[name]["overrides"] == ov else None
            metrics = metrics or deployed(chip, args.steps)
        else:
            out = Path(args.out) / name
            metrics = finished_run("mnist_tt_zo", ov, out, previous.get(name))
            if metrics is None and args.collect:
                continue
            if metrics is None:
                metrics = train(load_config("mnist_tt_zo", ov), out, progress=False,
                                log=lambda s: print(f"{name}: {s.splitlines()[0]}", flush=True))
                metrics["deployed_after_drift"] = deployed(chip, args.steps, args.steps)["test_accuracy"]
        print(f"{name}: {100 * metrics['test_accuracy']:.2f} %", flush=True)
        results[name] = {"row": name, "overrides": ov, "config": load_config("mnist_tt_zo", ov).to_dict(),
                         "metrics": metrics}
        save("photonic_mnist", {"command": "python benchmarks/photonic_mnist.py", "rows": list(results.values())})
    table = [{"row": r["row"], "acc": 100 * r["metrics"]["test_accuracy"],
              "drifted": 100 * r["metrics"]["deployed_after_drift"] if "deployed_after_drift" in r["metrics"] else "",
              "wall": r["metrics"].get("wall_s", "")} for r in results.values()]
    print(markdown_table(table, [("row", "row"), ("acc", "test acc %"), ("drifted", "deployed, same drift %"),
                                 ("wall", "wall s")]))

if __name__ == "__main__":
    main()
