"""One run on a GPU that measures what docs/gpu.md promises: every tensor backend on the device against
the same computation on the host, and the step times and peak memory of the MNIST default, the
paper-size HJB PINN (ideal and photonic) and the compare rows' backends, beside the CPU's.

    python benchmarks/gpu_check.py                  # on a machine with CUDA: benchmarks/results/gpu.json
    python benchmarks/gpu_check.py --dry-run        # on the CPU (device = cpu, small sizes): gpu_dryrun.json

Correctness: one step's query losses (the same perturbations, the same keyed noise streams) computed with
the backend on the device and on the host. fixed must agree bit for bit (integer codes); ideal and
photonic to float rounding (the device sums in another order), reported as the largest relative
difference. The MNIST default's steps replayed from a CUDA graph against the same steps run eagerly (the
parameters after three steps, and the counters). Speed: median seconds of a training step (the estimator's queries, one optimizer step, the
chip's projection and drift; a step replayed from a CUDA graph where a run's would be, and the MNIST
default once more without) after a warm-up step, on each device, and the device's peak memory; a
measurement stops after ``--budget`` seconds (at least one timed step). Goals (issue: GPU) are written
beside the figures they judge. The whole run is meant to take at most 6 minutes on one H200.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench_tt_linear import CASES as TT_CASES, measure
from common import save
from hwsim.config import PinnConfig, load_config, read_raw
from hwsim.graphs import ReplayedRGE, step_estimate
from hwsim.pinn.train import prepare as pinn_prepare
from hwsim.train import prepare as train_prepare

# (name, shipped config, overrides): the workloads timed on both devices
MNIST = ["data.val_size=1000"]
WORKLOADS = [
    ("mnist_default_ideal", "mnist_tt_zo", MNIST),
    ("mnist_default_ideal_eager", "mnist_tt_zo", MNIST + ["estimator.cuda_graphs=false"]),   # no CUDA graph
    ("mnist_fast_ideal", "mnist_tt_fast", MNIST),           # the main job's reference (CGE, batch 64)
    ("mnist_fixed8", "mnist_tt_zo", MNIST + ["backend.name=fixed", "backend.bits=8", "estimator.rge.mu=0.046875"]),
    ("mnist_photonic_typical", "mnist_tt_zo", MNIST + ["backend.name=photonic", "backend.noise=typical",
                                                       "backend.calibrate=gain"]),
    ("hjb20_paper_float64", "hjb20_zo_tt_sg_paper", []),
    ("hjb20_paper_float32", "hjb20_zo_tt_sg_paper", ["backend.dtype=float32"]),
    ("hjb20_photonic_paper", "hjb20_photonic_paper", []),
]
# the small sizes of --dry-run (the script's logic on the CPU in a minute or two)
DRY = {"mnist_tt_zo": ["data.train_limit=2048", "data.val_size=256", "data.test_limit=256", "train.batch_size=64"],
       "mnist_tt_fast": ["data.train_limit=2048", "data.val_size=256", "data.test_limit=256"],
       "hjb20_zo_tt_sg_paper": ["pde.points=2", "pde.test_points=16"],
       "hjb20_photonic_paper": ["pde.points=1", "pde.test_points=16"]}
HJB_QUERIES = ("hjb 512->512 r2, 5 queries x 92,500 rows", 512, 512, 2, (8, 8, 8), (8, 8, 8), 92500, 5)
DEVICE_ONLY = {"mnist_default_ideal_eager"}      # the host runs it as the row above (graphs are for CUDA)
GOALS = {  # issue "Every tensor backend on a GPU": step-time goals on one H200
    "mnist_default_ideal": ("step <= 1 ms", lambda s: s <= 1e-3),
    "hjb20_paper_float64": ("10,000 steps <= 5 min", lambda s: 10_000 * s <= 300),
    "hjb20_photonic_paper": ("10,000 steps <= 1 h", lambda s: 10_000 * s <= 3600),
}


def build(config: str, overrides: list[str], device: str):
    """(task, parts) of ``config`` with ``overrides`` and the backend on ``device``."""
    overrides = overrides + [f"backend.device={device}"]
    if "pde" in read_raw(config):
        task, parts, _ = pinn_prepare(load_config(config, overrides, PinnConfig))
    else:
        task, parts, _ = train_prepare(load_config(config, overrides))
    return task, parts


def step_losses(config: str, overrides: list[str], device: str, queries: int = 4) -> torch.Tensor:
    """The losses (queries,) of step 0's objective at the start weights moved by fixed perturbations
    (drawn on the host from seed 0, the same on every device), keyed like a training step's."""
    task, parts = build(config, overrides, device)
    backend = parts.backend
    theta = backend.encode(backend.to_backend(parts.start))
    deltas = 1e-2 * torch.randn(queries, theta.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    objective = task.objective(0, parts.generator)
    objective.key_noise(0)
    return objective.losses(theta, deltas.to(theta.device, theta.dtype)).to("cpu", torch.float64)


def correctness(device: str, dry: bool) -> dict:
    """Per backend: the step losses on ``device`` vs the host, bit-equal or the largest relative difference."""
    out = {}
    for name, config, overrides in WORKLOADS:
        if name in ("hjb20_paper_float32", "mnist_default_ideal_eager"):     # the same losses as another row
            continue
        extra = DRY.get(config, []) if dry else ["data.train_limit=4096"] if config.startswith("mnist") else []
        t = time.perf_counter()
        host = step_losses(config, overrides + extra, "cpu")
        dev = step_losses(config, overrides + extra, device)
        rel = float(((dev - host).abs() / host.abs().clamp_min(1e-300)).max())
        out[name] = {"bit_equal": bool(torch.equal(host, dev)), "max_relative_difference": rel,
                     "losses_host": host.tolist(), "losses_device": dev.tolist(), "seconds": round(time.perf_counter() - t, 1)}
        print(f"gpu_check: {name}: bit-equal {out[name]['bit_equal']}, largest relative difference {rel:.3g}", flush=True)
    return out


def replay_matches_eager(device: str, dry: bool, steps: int = 3) -> dict:
    """The MNIST default's parameters after ``steps`` Adam steps, eager and replayed from a recorded step (a
    CUDA graph; on the CPU of --dry-run the python recorder): bit-equal or the largest relative difference."""
    config, overrides = next((c, o) for n, c, o in WORKLOADS if n == "mnist_default_ideal")
    extra = DRY[config] if dry else ["data.train_limit=4096"]
    final = {}
    for recorder in ("eager", "python" if dry else "cuda"):
        task, parts = build(config, overrides + extra, device)
        backend, estimator, gen = parts.backend, parts.estimator, parts.generator
        estimate = estimator.estimate if recorder == "eager" else ReplayedRGE(estimator, backend, recorder).estimate
        theta = torch.nn.Parameter(backend.encode(backend.to_backend(parts.start)))
        optimizer = torch.optim.Adam([theta], lr=1e-3)
        for step in range(steps):
            objective = task.objective(step, gen)
            objective.key_noise(step)
            est = estimate(objective, theta.detach(), gen)
            est.read()
            theta.grad = est.grad.to(theta.dtype)      # as a run does: a replay's own output tensor
            optimizer.step()
        final[recorder] = (theta.detach().to("cpu", torch.float64), backend.counters())
    (a, count_a), (b, count_b) = final.values()
    rel = float(((a - b).abs() / a.abs().clamp_min(1e-30)).max())
    out = {"bit_equal": bool(torch.equal(a, b)), "max_relative_difference": rel, "counters_equal": count_a == count_b,
           "steps": steps}
    print(f"gpu_check: replayed step vs eager: bit-equal {out['bit_equal']}, largest relative difference {rel:.3g}, "
          f"counters equal {out['counters_equal']}", flush=True)
    return out


def tt_methods(device: str, dry: bool) -> list[dict]:
    """Dense vs core-by-core TT evaluation on ``device`` (benchmarks/bench_tt_linear.py's cases in float32;
    in float64 its 512-wide PINN layer and one chunk of the paper-size step on a GPU: 5 queries of 100
    points x 925 stencil nodes): the cost of an einsum flop in GEMM flops there, the constant
    hwsim.tt.DIRECT_FLOP_PENALTY states for the CPU."""
    if dry:
        return measure(TT_CASES[:1], 1, device)
    return measure(TT_CASES, 5, device) + measure(TT_CASES[-1:] + [HJB_QUERIES], 5, device, torch.float64)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_time(config: str, overrides: list[str], device: str, budget: float, max_steps: int) -> dict:
    """Median wall seconds of a training step (after one warm-up step) and the device's peak memory."""
    task, parts = build(config, overrides, device)
    backend, estimator, gen = parts.backend, parts.estimator, parts.generator
    estimate = step_estimate(estimator, backend, parts.cfg.estimator.cuda_graphs)      # as a run's steps call it
    theta = backend.encode(backend.to_backend(parts.start))
    optimizer = torch.optim.Adam([torch.nn.Parameter(theta)], lr=1e-4)
    param = optimizer.param_groups[0]["params"][0]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times, started = [], time.perf_counter()

    def one_step(step: int) -> None:
        objective = task.objective(step, gen)
        objective.key_noise(step)
        est = estimate(objective, param.detach(), gen)
        est.read()                                 # the loss and the gradient's check, read as a run reads them
        param.grad = est.grad.to(param.dtype)
        optimizer.step()
        backend.project_(param.data, gen)
        backend.advance()

    for step in range(max_steps + 1):
        _sync(device)
        t = time.perf_counter()
        one_step(step)
        _sync(device)
        if step:                                   # step 0 warms up (allocator, kernels, caches)
            times.append(time.perf_counter() - t)
        if step and time.perf_counter() - started > budget:
            break
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    with _Dispatched() as ops:                     # one more step, its tensor operations counted
        one_step(max_steps + 1)
    return {"step_s": statistics.median(times), "steps_timed": len(times), "peak_memory_bytes": peak,
            "ops_per_step": ops.count}


class _Dispatched(TorchDispatchMode):
    """Counts the tensor operations dispatched (views included): a measure of a step's launch overhead."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="on the CPU, small sizes: checks the script, measures nothing")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds per timed workload and device (default 20)")
    ap.add_argument("--max-steps", type=int, default=50)
    args = ap.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; run it on a GPU, or --dry-run on the CPU", file=sys.stderr)
        return 2
    device = "cpu" if args.dry_run else "cuda"
    t0 = time.perf_counter()
    result = {"device": device if args.dry_run else torch.cuda.get_device_name(0),
              "correctness": correctness(device, args.dry_run),
              "replayed_vs_eager": replay_matches_eager(device, args.dry_run),
              "tt_methods": tt_methods(device, args.dry_run), "steps": {}}
    for name, config, overrides in WORKLOADS:
        extra = DRY.get(config, []) if args.dry_run else []
        row = {}
        for where in ([device] if args.dry_run or name in DEVICE_ONLY else [device, "cpu"]):
            budget = args.budget if where == device else min(args.budget, 30.0)
            row[where] = step_time(config, overrides + extra, where, budget, 2 if args.dry_run else args.max_steps)
            print(f"gpu_check: {name} on {where}: {row[where]['step_s'] * 1e3:.3g} ms per step "
                  f"({row[where]['steps_timed']} timed), {row[where]['ops_per_step']:,} tensor operations", flush=True)
        if "cpu" in row and where != "cpu":
            row["speedup_vs_cpu"] = row["cpu"]["step_s"] / row[device]["step_s"]
        if name in GOALS and not args.dry_run:
            text, met = GOALS[name]
            row["goal"], row["goal_met"] = text, bool(met(row[device]["step_s"]))
        result["steps"][name] = row
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    save("gpu_dryrun" if args.dry_run else "gpu", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
