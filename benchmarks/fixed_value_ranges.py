"""Value ranges of a trained MNIST TT model, the basis of the fixed backend's default integer bits
(docs/fixed_point.md, "Default formats"): max |core| per layer and, for every core step of the
core-0-first contraction in float64, max |value| and the 99.9th percentile of |value| over 2,000 test
images. Writes benchmarks/results/fixed_value_ranges.json.

    python benchmarks/fixed_value_ranges.py runs/mnist_tt_zo/params.pt
"""
from __future__ import annotations

import argparse

import torch

from common import save
from hwsim.build import build_network
from hwsim.config import load_config
from hwsim.data import load_dataset
from hwsim.model import TTLinear


def step_values(cores: list[torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """The exact (unrounded) result of every core step, core 0 first; x (B, P)."""
    rows, rest = x.shape
    t, out = x.reshape(rows, 1, 1, rest), []
    for g in cores:
        rest //= g.shape[1]
        t = torch.einsum("bdrnz,rnms->bdmsz", t.reshape(*t.shape[:-1], g.shape[1], rest), g)
        t = t.reshape(rows, -1, g.shape[3], rest)
        out.append(t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("params", help="params.pt of a trained mnist_tt_zo run")
    args = ap.parse_args()
    net = build_network(load_config("mnist_tt_zo").model)
    tensors = net.space.unflatten(torch.load(args.params)["theta"].double())
    h = torch.from_numpy(load_dataset("mnist", val_size=5000).test.x[:2000]).double()
    layers = {}
    for i, layer in enumerate(net.layers):
        if not isinstance(layer, TTLinear):
            h = torch.relu(h)
            continue
        cores = [tensors[f"{i}.{n}"] for n in layer.core_names]
        steps = step_values(cores, h)
        layers[f"layer{i}"] = {
            "core_max_abs": max(float(c.abs().max()) for c in cores),
            "steps": [{"max_abs": float(s.abs().max()), "p99.9_abs": float(s.abs().flatten().quantile(0.999))}
                      for s in steps]}
        h = steps[-1].reshape(h.shape[0], -1)
    save("fixed_value_ranges", {"params": args.params, "images": 2000, "layers": layers})


if __name__ == "__main__":
    main()
