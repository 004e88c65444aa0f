"""Why does 8-bit ZO training trail the float run? How well does a fixed-point forward difference
measure the directional derivative that the RGE estimator needs?

At a realistic mid-training point (the MNIST TT model after 300 FO steps) and on one batch of 256,
for every parameter tensor draws N Rademacher directions u and compares the forward differences
[L(theta + mu u) - L(theta)] / mu of a backend with the exact directional derivatives g . u (autograd,
float64): the correlation across directions (1 = a perfect estimate of every direction, 0 = noise).
Rows: the ideal backend and the fixed backend at 8 bits with several intermediate formats.
Writes benchmarks/results/fixed_direction_quality.json.

    python benchmarks/fixed_direction_quality.py [--directions 64]
"""
from __future__ import annotations

import argparse
import tempfile

import torch

from common import save
from hwsim.build import build_backend, build_network
from hwsim.config import load_config
from hwsim.data import load_dataset
from hwsim.model import cross_entropy
from hwsim.objective import BatchObjective
from hwsim.zo import sample_directions

MU = 1 / 64                 # 1 LSB of the 8-bit weight format (Q8.6)
DEFAULT_INT_BITS = {"input": 1, "weight": 2, "intermediate": 5, "activation": 5, "output": 6}
FIXED = ["backend.name=fixed"]
VARIANTS = {                # name -> overrides of mnist_tt_fixed8 (master float)
    "ideal float64": ["backend.name=ideal", "backend.dtype=float64"],
    "fixed 16 bits": FIXED + ["backend.bits=16"],
    **{f"fixed 16 bits, {role} 8 bits": FIXED + ["backend.bits=16", f"backend.formats={{{role}: [8, {8 - ib}]}}"]
       for role, ib in DEFAULT_INT_BITS.items()},
    "fixed 8 bits": FIXED + ["backend.bits=8"],
    "fixed 8 bits, layer 0 intermediates Q8.6/Q8.5/Q8.4": FIXED + [
        "backend.bits=8", "backend.layers={0: {int_bits: {intermediate: [2, 3, 4]}}}"],
    **{f"fixed 8 bits, intermediates {w} bits": FIXED + ["backend.bits=8", f"backend.formats={{intermediate: [{w}, {w - 5}]}}"]
       for w in (10, 12, 16)},
    "fixed 8 bits, intermediates 12 bits, output 12 bits": FIXED + [
        "backend.bits=8", "backend.formats={intermediate: [12, 7], output: [12, 6]}"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--directions", type=int, default=64, help="directions per parameter tensor")
    args = parser.parse_args()
    cfg = load_config("mnist_tt_fo", ["train.steps=300", "train.eval_every=300"])
    from hwsim.train import train
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, tmp, progress=False, log=lambda s: None)
        theta0 = torch.load(f"{tmp}/params.pt")["theta"].to(torch.float64)
    net, data = build_network(cfg.model), load_dataset("mnist")
    idx = torch.randperm(len(data.train.y), generator=torch.Generator().manual_seed(0))[:256]
    x, y = torch.from_numpy(data.train.x[idx]), torch.from_numpy(data.train.y[idx])

    ideal = build_backend(load_config("mnist_tt_fo", ["backend.dtype=float64"]).backend, net)
    t = theta0.clone().requires_grad_(True)
    cross_entropy(net.forward(ideal, net.space.unflatten(t), x.to(torch.float64)), y).backward()
    g = torch.Generator().manual_seed(1)
    directions = {e.name: sample_directions(args.directions, e.numel, "rademacher", g, theta0)
                  for e in net.space.entries}
    exact = {e.name: directions[e.name] @ t.grad[e.slice] for e in net.space.entries}

    rows = []
    for name, overrides in VARIANTS.items():
        backend = build_backend(load_config("mnist_tt_fixed8", overrides).backend, net)
        objective = BatchObjective(net, backend, x.to(backend.data_dtype), y)
        theta = theta0.to(backend.dtype)
        base = objective.losses(theta, theta.new_zeros(1, 0))[0]
        row = {"variant": name, "overrides": overrides, "mu": MU, "loss": float(base), "tensors": {}}
        for e in net.space.entries:
            diffs = ((objective.losses(theta, MU * directions[e.name].to(theta.dtype), e.offset) - base) / MU).double()
            truth = exact[e.name]
            row["tensors"][e.name] = {"correlation": float(torch.corrcoef(torch.stack([diffs, truth]))[0, 1]),
                                      "zero_differences": int((diffs == 0).sum())}
        row["mean_correlation"] = sum(v["correlation"] for v in row["tensors"].values()) / len(row["tensors"])
        print(f"{name}: mean correlation {row['mean_correlation']:.3f}, loss {row['loss']:.4f}", flush=True)
        rows.append(row)
    save("fixed_direction_quality", {"directions": args.directions, "rows": rows})


if __name__ == "__main__":
    main()
