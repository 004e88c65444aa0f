"""One ZO step (RGE, N=10 Rademacher, forward differences) of the MNIST TT models.

Measures, in one run: the batched query evaluation vs a one-query-at-a-time loop (784-1024-10 rank 6,
batch 256 and 2000, joint and per-tensor perturbation), the GFLOP/s it achieves vs a plain GEMM of the
first layer's size, and the step time of the 784-256-10 rank-4 model at batch 64 and 2000 (the settings
at which docs/results.md quotes the paper authors' code, with where and how that was measured; only
hwsim is measured here). Writes benchmarks/results/zo_step.json.

    python benchmarks/bench_zo_step.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics

import torch

from common import save, timeit
from hwsim.backends import create_backend
from hwsim.model import Activation, Network, TTLinear
from hwsim.objective import BatchObjective
from hwsim.tt import TTShape
from hwsim.zo import RGE


def mnist_tt(big: bool) -> Network:
    if big:
        return Network([TTLinear(784, 1024, True, TTShape.build(784, 1024, 6, (7, 4, 4, 7), (8, 4, 4, 8))),
                        Activation("relu"),
                        TTLinear(1024, 10, True, TTShape.build(1024, 10, 6, (8, 4, 4, 8), (1, 5, 2, 1)))])
    return Network([TTLinear(784, 256, False, TTShape.build(784, 256, 4, (4, 7, 7, 4), (4, 4, 4, 4))),
                    Activation("relu"),
                    TTLinear(256, 10, False, TTShape.build(256, 10, 4, (4, 4, 4, 4), (1, 5, 2, 1)))])


class OneAtATime(BatchObjective):
    """The reference code's way: every query is its own forward pass."""

    def losses(self, theta, deltas, start=0):
        return torch.cat([super(OneAtATime, self).losses(theta, d[None], start) for d in deltas])


def step_times(net: Network, batch: int, per_tensor: bool, objectives: dict, repeats: int) -> tuple[dict, int]:
    """Median seconds of one RGE step per objective class, measured interleaved (the machine is shared
    and noisy: alternating keeps a slow spell from favouring one side), and the MACs of one step."""
    backend = create_backend("ideal")
    g = torch.Generator().manual_seed(0)
    theta = net.init_params(g).float()
    x, y = torch.rand(batch, 784, generator=g), torch.randint(0, 10, (batch,), generator=g)
    est = RGE(net.space, 10, 0.01, "rademacher", "forward", per_tensor=per_tensor)
    runs = {name: (lambda cls=cls: est.estimate(cls(net, backend, x, y), theta, g)) for name, cls in objectives.items()}
    backend.reset_counters()
    for run in runs.values():
        run()
    macs = sum(v for k, v in backend.counters().items() if k.startswith("macs")) // len(runs)
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(timeit(run, repeats=1, warmup=0))
    return {name: statistics.median(t) for name, t in times.items()}, macs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    big, small = mnist_tt(True), mnist_tt(False)
    both = {"batched": BatchObjective, "loop": OneAtATime}
    rows = []
    for per_tensor in (False, True):
        for batch in (256, 2000):
            t, macs = step_times(big, batch, per_tensor, both, args.repeats)
            a, w = torch.rand(batch, 784), torch.rand(784, 1024)
            gemm = timeit(lambda: a @ w, args.repeats * 4)
            rows.append({"model": "784-1024-10 TT rank 6", "perturbation": "per-tensor" if per_tensor else "joint",
                         "batch": batch, "queries": RGE(big.space, 10, per_tensor=per_tensor).queries_per_step(),
                         "batched_step_s": t["batched"], "loop_step_s": t["loop"],
                         "batched_speedup": t["loop"] / t["batched"], "step_gflops": 2 * macs / t["batched"] / 1e9,
                         "plain_gemm_gflops": 2 * batch * 784 * 1024 / gemm / 1e9})
    small_steps = []
    for batch in (64, 2000):
        t, _ = step_times(small, batch, False, {"batched": BatchObjective}, args.repeats)
        small_steps.append({"model": "784-256-10 TT rank 4", "perturbation": "joint", "batch": batch,
                            "step_s": t["batched"]})
    save("zo_step", {"batched_vs_loop": rows, "small_model_steps": small_steps})


if __name__ == "__main__":
    main()
