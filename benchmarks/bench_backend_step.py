"""A simulated chip against the ideal backend on the same work (MNIST TT model 784-256-10).

Times, interleaved in one run: one ZO step of the default config (per-tensor RGE, N=10, batch 256) and
one evaluation forward of 2,000 test images, on the ideal backend (float32) and on the backends of
``--chip``: fixed (8 bits, master float and master integer) or photonic (typical noise; host-trained
weights, decomposed at every forward, and in-situ phases). Uses real MNIST rows and the trained ideal
model when a params.pt is given (else the initial parameters). Writes benchmarks/results/<chip>_step.json.

    python benchmarks/bench_backend_step.py --chip fixed|photonic [--params runs/mnist_tt_zo/params.pt] [--repeats 7]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import save
from hwsim.build import build_backend, build_estimator, build_network
from hwsim.config import load_config
from hwsim.data import load_dataset
from hwsim.objective import BatchObjective

CHIPS = {
    "fixed": {"fixed_float8": ["backend.name=fixed", "backend.bits=8"],
              "fixed_integer8": ["backend.name=fixed", "backend.bits=8", "backend.master=integer", "estimator.rge.mu=1"]},
    "photonic": {"photonic_weights": ["backend.name=photonic", "backend.noise=typical"],
                 "photonic_phases": ["backend.name=photonic", "backend.noise=typical", "backend.params=phases",
                                     "estimator.rge.mu=0.05"]},
}


def _keyed(objective: BatchObjective) -> BatchObjective:
    """The objective as a training step uses it: a noisy backend draws every query's noise from its own
    stream (hwsim.loop keys them by the step)."""
    objective.key_noise(1)
    return objective


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chip", choices=sorted(CHIPS), required=True)
    ap.add_argument("--params", help="params.pt of a trained mnist_tt_zo run")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    data = load_dataset("mnist", val_size=5000)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data.train.y), generator=g)[:256]
    setups = {}
    for name, overrides in {"ideal": [], **CHIPS[args.chip]}.items():
        cfg = load_config("mnist_tt_zo", overrides)
        net = build_network(cfg.model)
        backend = build_backend(cfg.backend, net, cfg.architecture)
        theta = torch.load(args.params)["theta"] if args.params else net.init_params(torch.Generator().manual_seed(0))
        theta = backend.encode(backend.to_backend(theta))
        x = torch.from_numpy(data.train.x[idx]).to(backend.data_dtype)
        y = torch.from_numpy(data.train.y[idx])
        xe = torch.from_numpy(data.test.x[:2000]).to(backend.data_dtype)
        est = build_estimator(cfg.estimator, backend.param_space(net), backend)
        tensors = backend.param_space(net).unflatten(theta)
        setups[name] = {
            "step": lambda est=est, net=net, b=backend, x=x, y=y, t=theta: est.estimate(
                _keyed(BatchObjective(net, b, x, y)), t, torch.Generator().manual_seed(1)),
            "eval": lambda net=net, b=backend, t=tensors, xe=xe: net.forward(b, t, xe),
        }
    times = {name: {"step": [], "eval": []} for name in setups}
    for kind in ("step", "eval"):
        for name in setups:
            setups[name][kind]()                           # warm-up
        for _ in range(args.repeats):
            for name in setups:                           # interleaved: a slow spell hits all alike
                t0 = time.perf_counter()
                setups[name][kind]()
                times[name][kind].append(time.perf_counter() - t0)
    median = {name: {k: statistics.median(v) for k, v in kinds.items()} for name, kinds in times.items()}
    result = {"model": "mnist_tt_zo (784-256-10, TT rank 4)", "step": "per-tensor RGE N=10, batch 256",
              "eval_rows": 2000, "repeats": args.repeats, "params": args.params or "initial",
              "seconds": median,
              "ratio_vs_ideal": {name: {k: round(v / median["ideal"][k], 2) for k, v in kinds.items()}
                                 for name, kinds in median.items() if name != "ideal"}}
    save(f"{args.chip}_step", result)


if __name__ == "__main__":
    main()
