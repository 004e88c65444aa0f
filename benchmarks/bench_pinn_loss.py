"""The cost of the BP-free PINN on this machine: one sparse-grid loss evaluation and one ZO step.

For the 20-dim HJB models (paper size 21-512-512-1 TT rank 2, and the CPU-sized 21-64-64-1), batch
100 x 925 grid nodes:
- one loss evaluation, batched (all 92,500 shifted points in one forward) vs a loop over the 925 grid
  nodes (one forward of 100 points each, the straightforward implementation), and as the ZO objective
  evaluates it (first linear layer on points and offsets apart, joined by sin(a + c), the rest of the
  network on blocks of points: "split");
- one ZO step (RGE N = 10 antithetic = 20 losses, as hjb20_zo_tt_sg) and its peak memory (peak RSS of a
  fresh process doing only that, imports included). Only hwsim is measured: docs/results.md quotes the
  paper authors' figures with where and how they were measured.
Also the float32 error of the residual and of ZO loss differences at the initial parameters, and how the
size of the objective's blocks of points changes the time of 4 ZO losses (CPU model, float64, Monte Carlo
Stein with 2,049 offsets as in the hjb_table MC rows; the default is the chunk_elements / BLOCK_SHARE row).
Writes benchmarks/results/pinn_loss.json.

    python benchmarks/bench_pinn_loss.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from common import save, timeit
from hwsim.build import build_backend, build_estimator, build_network
from hwsim.config import PinnConfig, load_config
from hwsim.objective import chunk_elements
from hwsim.pinn.derivatives import stein_grid, stein_mc
from hwsim.pinn.objective import BLOCK_SHARE, StencilLoss, stencil_objective
from hwsim.pinn.problems import build_problem

MODELS = {"paper 21-512-512-1": "hjb20_zo_tt_sg_paper", "cpu 21-64-64-1": "hjb20_zo_tt_sg"}


def _setup(config: str, dtype: str):
    cfg = load_config(config, [f"backend.dtype={dtype}", "backend.device=cpu"], PinnConfig)
    problem, net = build_problem(cfg.pde.problem, cfg.pde.dim), build_network(cfg.model)
    backend = build_backend(cfg.backend, net, cfg.architecture)
    gen = torch.Generator().manual_seed(0)
    theta = net.init_params(gen).to(backend.dtype)
    x = problem.sample(cfg.pde.points, gen)
    return cfg, problem, net, backend, theta, x, gen


def loss_times(config: str, dtype: str, repeats: int) -> dict:
    cfg, problem, net, backend, theta, x, _ = _setup(config, dtype)
    stencil = stein_grid(problem.inputs, cfg.pde.derivatives.sigma, cfg.pde.derivatives.level)
    loss = StencilLoss(problem, stencil, x)
    tensors = net.space.unflatten(theta)
    points = loss.points.to(backend.data_dtype)

    def batched():
        return loss(net.forward(backend, tensors, points))

    def node_loop():                     # one forward per grid node: 100 points each
        by_node = points.view(len(x), stencil.size, -1)
        out = torch.stack([net.forward(backend, tensors, by_node[:, k]) for k in range(stencil.size)], dim=1)
        return loss(out.reshape(-1, 1))

    objective = stencil_objective(net, backend, problem, stencil, x, chunk_elements(cfg.estimator.chunk_elements, backend.device))
    zero = theta.new_zeros(1, theta.numel())

    def split():                         # the objective's path: first layer on B + K rows, sin(a + c) joined
        return objective.losses(theta, zero)[0].double()

    rtol = 1e-4 if dtype == "float32" else 1e-10
    assert torch.allclose(batched(), node_loop(), rtol=rtol)
    # the split rounds differently, and the stencil weights amplify float32 rounding (float32_error below)
    assert torch.allclose(split(), batched(), rtol=1e-2 if dtype == "float32" else 1e-10)
    b, loop, sp = timeit(batched, repeats), timeit(node_loop, repeats), timeit(split, repeats)
    return {"batched_s": b, "node_loop_s": loop, "split_s": sp, "speedup": loop / b, "split_speedup": b / sp,
            "rows": len(points)}


def block_times(config: str, repeats: int) -> list[dict]:
    """Seconds for 4 perturbed-query losses by block size (elements P K H of one block's activations)."""
    cfg, problem, net, backend, theta, x, gen = _setup(config, "float64")
    stencil = stein_mc(problem.inputs, 1024, gen, cfg.pde.derivatives.sigma)
    objective = stencil_objective(net, backend, problem, stencil, x, chunk_elements(cfg.estimator.chunk_elements, backend.device))
    deltas = 0.01 * torch.randn(4, theta.numel(), generator=gen, dtype=theta.dtype)
    per_point = stencil.size * objective.widest
    default = objective.block
    rows = []
    for elements in (2 ** 17, 2 ** 19, 2 ** 21, 2 ** 23, len(x) * per_point):
        objective.block = max(1, elements // per_point)
        rows.append({"block_points": objective.block, "block_elements": objective.block * per_point,
                     "default": objective.block == default,
                     "seconds": timeit(lambda: objective.losses(theta, deltas), repeats)})
    return rows


def float32_error(config: str) -> dict:
    """At the initial parameters: the residual's float32 error (rms, vs float64) and the correlation of
    10 antithetic loss differences (mu = 0.01) between the two precisions."""
    out = {}
    for dtype in ("float32", "float64"):
        cfg, problem, net, backend, theta, x, _ = _setup(config, dtype)
        stencil = stein_grid(problem.inputs, cfg.pde.derivatives.sigma, cfg.pde.derivatives.level)
        loss = StencilLoss(problem, stencil, x)
        n = net.forward(backend, net.space.unflatten(theta), loss.points.to(backend.data_dtype))[..., 0]
        residual = problem.residual(stencil.combine(loss.base + loss.gate * n.double()))
        u = torch.randint(0, 2, (10, net.space.size), generator=torch.Generator().manual_seed(5)).double() * 2 - 1
        objective = stencil_objective(net, backend, problem, stencil, x, chunk_elements(cfg.estimator.chunk_elements, backend.device))
        both = objective.losses(theta, torch.cat([0.01 * u, -0.01 * u]).to(theta.dtype)).double()
        out[dtype] = (residual, both[:10] - both[10:])
    (r32, d32), (r64, d64) = out["float32"], out["float64"]
    return {"residual_rms": float(r64.pow(2).mean().sqrt()), "float32_residual_error_rms": float((r32 - r64).pow(2).mean().sqrt()),
            "loss_difference_correlation": float(torch.corrcoef(torch.stack([d32, d64]))[0, 1])}


def step_in_this_process(config: str, dtype: str) -> dict:
    """One ZO step after a warm-up step; peak RSS of this process."""
    cfg, problem, net, backend, theta, x, gen = _setup(config, dtype)
    estimator = build_estimator(cfg.estimator, net.space, backend)
    stencil = stein_grid(problem.inputs, cfg.pde.derivatives.sigma, cfg.pde.derivatives.level)
    objective = stencil_objective(net, backend, problem, stencil, x, chunk_elements(cfg.estimator.chunk_elements, backend.device))
    estimator.estimate(objective, theta, gen)
    t = time.perf_counter()
    est = estimator.estimate(objective, theta, gen)
    return {"step_s": time.perf_counter() - t, "losses": est.queries, "peak_rss_gb": _peak_rss_gb()}


def _peak_rss_gb() -> float:
    """This process's peak resident memory: VmHWM (ru_maxrss would include the parent's, across fork + exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step-only", nargs=2, metavar=("CONFIG", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step_only:
        print(json.dumps(step_in_this_process(*args.step_only)))
        return
    rows = []
    for name, config in MODELS.items():
        for dtype in ("float32", "float64"):
            row = {"model": name, "config": config, "dtype": dtype, "loss": loss_times(config, dtype, args.repeats)}
            out = subprocess.run([sys.executable, __file__, "--step-only", config, dtype], check=True,
                                 capture_output=True, text=True).stdout
            row["zo_step"] = json.loads(out.strip().splitlines()[-1])
            print(f"{name} {dtype}: loss batched {row['loss']['batched_s']:.3f} s vs node loop "
                  f"{row['loss']['node_loop_s']:.3f} s, split {row['loss']['split_s']:.3f} s; ZO step {row['zo_step']['step_s']:.2f} s, "
                  f"peak {row['zo_step']['peak_rss_gb']:.2f} GB",
                  flush=True)
            rows.append(row)
    precision = float32_error(MODELS["cpu 21-64-64-1"])
    print(f"float32 vs float64 at init (cpu model): {precision}", flush=True)
    blocks = block_times(MODELS["cpu 21-64-64-1"], args.repeats)
    print("4 MC-Stein losses by block size (cpu model, float64): " + ", ".join(
        f"{b['block_elements']:,} elements {b['seconds']:.2f} s" + (" (default)" if b["default"] else "") for b in blocks),
        flush=True)
    save("pinn_loss", {"rows": rows, "float32_precision": precision,
                       "block_share": BLOCK_SHARE, "blocks": blocks})


if __name__ == "__main__":
    main()
