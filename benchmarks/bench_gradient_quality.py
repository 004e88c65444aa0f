"""How close are the ZO estimates to the true mini-batch gradient? (784-256-10 rank-4 TT model)

Trains the TT model with FO for 300 steps (a realistic point mid-training), then on one batch of 256
compares against the autograd gradient: CGE forward/central at mu = 1e-2 and 1e-3 (float32 and
float64) and single per-tensor RGE steps (N = 10). Writes benchmarks/results/gradient_quality.json.

    python benchmarks/bench_gradient_quality.py
"""
from __future__ import annotations

import tempfile

import torch

from common import save
from hwsim.build import build_backend, build_network
from hwsim.config import load_config
from hwsim.data import load_dataset
from hwsim.model import cross_entropy
from hwsim.objective import BatchObjective
from hwsim.train import train
from hwsim.zo import CGE, RGE


def main() -> None:
    cfg = load_config("mnist_tt_fo", ["train.steps=300", "train.eval_every=300"])
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, tmp, progress=False, log=lambda s: None)
        theta0 = torch.load(f"{tmp}/params.pt")["theta"]
    net, data = build_network(cfg.model), load_dataset("mnist")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data.train.y), generator=g)[:256]
    rows = []
    for dtype in ("float32", "float64"):
        backend = build_backend(load_config("mnist_tt_fo", [f"backend.dtype={dtype}"]).backend, net)
        theta = theta0.to(backend.dtype)
        x, y = torch.from_numpy(data.train.x[idx]).to(backend.dtype), torch.from_numpy(data.train.y[idx])
        t = theta.clone().requires_grad_(True)
        cross_entropy(net.forward(backend, net.space.unflatten(t), x), y).backward()
        true = t.grad

        def compare(name, grad):
            rows.append({"dtype": dtype, "estimator": name,
                         "cosine": torch.nn.functional.cosine_similarity(grad, true, dim=0).item(),
                         "relative_error": ((grad - true).norm() / true.norm()).item()})
        for form in ("forward", "central"):
            for mu in (1e-2, 1e-3):
                compare(f"cge {form} mu={mu}", CGE(net.space, mu, form).estimate(BatchObjective(net, backend, x, y), theta, g).grad)
        rge = RGE(net.space, 10, 0.01, per_tensor=True)
        compare("rge per-tensor N=10 (one step)", rge.estimate(BatchObjective(net, backend, x, y), theta, g).grad)
    save("gradient_quality", {"rows": rows})


if __name__ == "__main__":
    main()
