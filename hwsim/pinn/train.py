"""The PINN loop (``hwsim pinn``): fresh collocation points every step, the PDE residual loss through a
backend, ZO (or FO) gradients, a torch.optim step, and the relative L2 error on fixed test points.

Writes a run directory: config.yaml, metrics.jsonl (one line per evaluation), metrics.json, params.pt,
error.png (error vs step) and line.png (predicted vs exact along the diagonal x = s 1, t = 1/2).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from hwsim.build import build_backend, build_estimator, build_network, build_optimizer, perturbation_warnings
from hwsim.config import ConfigError, PinnConfig
from hwsim.pinn.derivatives import Stencil, finite_differences, stein_grid, stein_mc
from hwsim.pinn.objective import AutodiffObjective, autodiff_loss, stencil_objective
from hwsim.pinn.problems import Problem, build_problem
from hwsim.report import write_json, write_jsonl, write_yaml
from hwsim.train import save_params


def make_stencil(cfg, dim: int, generator: torch.Generator) -> Stencil | None:
    """The stencil of ``pde.derivatives`` for ``dim`` inputs (None for autodiff); stein_mc draws fresh samples."""
    if cfg.method == "stein_grid":
        return stein_grid(dim, cfg.sigma, cfg.level)
    if cfg.method == "stein_mc":
        return stein_mc(dim, cfg.samples, generator, cfg.sigma)
    if cfg.method == "fd":
        return finite_differences(dim, cfg.h)
    return None


@torch.no_grad()
def predict(network, backend, problem: Problem, theta: torch.Tensor, x: torch.Tensor, batch: int,
            stencil: Stencil | None = None) -> torch.Tensor:
    """u at points x (N, D) (float64): the ansatz of the raw model, or of the Gaussian-smoothed model
    u_s = E[u(x + s z)] when a Stein ``stencil`` is given (its value row)."""
    tensors, out = backend.param_space(network).unflatten(theta), []
    for s in range(0, len(x), batch):
        part = x[s:s + batch]
        if stencil is None:
            n = network.forward(backend, tensors, part.to(backend.device, backend.data_dtype))[..., 0]
            out.append(problem.ansatz(part, n.to("cpu", torch.float64)))
        else:
            points = stencil.points(part)
            n = network.forward(backend, tensors, points.to(backend.device, backend.data_dtype))[..., 0]
            u = problem.ansatz(points, n.to("cpu", torch.float64))
            out.append(stencil.combine(u).value)
    return torch.cat(out)


def errors(problem: Problem, u: torch.Tensor, x: torch.Tensor) -> dict:
    """rel_l2 = |u - u*| / |u*|; rel_l2_learned = |u - u*| / |u* - base| (the error of the learned part)."""
    exact = problem.exact(x)
    diff = (u - exact).norm()
    return {"rel_l2": float(diff / exact.norm()), "rel_l2_learned": float(diff / (exact - problem.base(x)).norm())}


def pinn(cfg: PinnConfig, out_dir: Path | None = None, progress: bool = True,
         log: Callable[[str], None] = print) -> dict:
    """Train one PINN; returns the final metrics (also written to ``out_dir`` when given)."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    problem = build_problem(cfg.pde.problem, cfg.pde.dim)
    network = build_network(cfg.model)
    if network.in_features != problem.inputs or network.out_features != 1:
        raise ConfigError(f"model.layers: the network maps {network.in_features} -> {network.out_features}; "
                          f"pde {problem.name} with dim {problem.dim} needs {problem.inputs} -> 1")
    backend = build_backend(cfg.backend, network)
    estimator = build_estimator(cfg.estimator, backend.param_space(network), backend)
    method = cfg.pde.derivatives.method
    if method == "autodiff" and not backend.capabilities.differentiable:
        raise ConfigError(f"pde.derivatives.method: 'autodiff' needs a differentiable backend; "
                          f"{backend.name!r} is not (use stein_grid, stein_mc or fd)")
    warnings = perturbation_warnings(cfg.estimator, backend) if estimator is not None else []
    test_x = problem.sample(cfg.pde.test_points, torch.Generator().manual_seed(cfg.seed + 1))
    theta = torch.nn.Parameter(backend.encode(backend.to_backend(network.init_params(gen))))
    optimizer, scheduler = build_optimizer(cfg.optimizer, [theta], cfg.train.steps)
    stencil = make_stencil(cfg.pde.derivatives, problem.inputs, gen)
    per_point = stencil.size if stencil is not None else 1

    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(out_dir / "config.yaml", cfg.to_dict())
    baseline = errors(problem, problem.base(test_x), test_x)["rel_l2"]
    log(f"hwsim pinn: {problem.name} in {problem.dim} dimensions, {backend.param_space(network).size:,} trainable parameters "
        f"({network.dense_params:,} dense), backend {backend.name}, estimator {cfg.estimator.name}, derivatives "
        f"{method} ({per_point} evaluations per point), {cfg.train.steps} steps of {cfg.pde.points} points; "
        f"untrained (N = 0) rel. L2 {100 * baseline:.2f} %\n" + network.describe())
    for message in warnings:
        log(f"hwsim pinn: warning: {message}")

    records: list[dict] = []
    queries, loss_sum, loss_n = 0, 0.0, 0
    bar = tqdm(total=cfg.train.steps, disable=not progress, mininterval=1.0, unit="step", dynamic_ncols=True)
    for step in range(cfg.train.steps):
        x = problem.sample(cfg.pde.points, gen)
        if method == "stein_mc" and step > 0:
            stencil = make_stencil(cfg.pde.derivatives, problem.inputs, gen)
        optimizer.zero_grad(set_to_none=True)
        if estimator is None:
            loss = _fo_loss(network, backend, problem, stencil, theta, x, cfg.estimator.chunk_elements)
            loss.backward()
            queries, loss_value = queries + 1, float(loss.detach())
        else:
            estimator.observe(step)
            objective = (AutodiffObjective(network, backend, problem, x.to(backend.device, backend.data_dtype),
                                           chunk_elements=cfg.estimator.chunk_elements) if stencil is None else
                         stencil_objective(network, backend, problem, stencil, x, cfg.estimator.chunk_elements))
            est = estimator.estimate(objective, theta.detach(), gen)
            theta.grad = est.grad.to(theta.dtype)
            queries, loss_value = queries + est.queries, est.loss
        optimizer.step()
        scheduler.step()
        backend.project_(theta.data, gen)
        backend.advance()
        loss_sum, loss_n = loss_sum + loss_value, loss_n + 1
        bar.update(1)
        if (step + 1) % cfg.train.eval_every == 0 or step + 1 == cfg.train.steps:
            u = predict(network, backend, problem, theta.detach(), test_x, cfg.train.eval_batch_size)
            err = errors(problem, u, test_x)
            if estimator is not None:
                estimator.observe(step, -err["rel_l2"])
            records.append({"step": step + 1, "train_loss": loss_sum / loss_n, **err, "loss_queries": queries,
                            "forward_evals": queries * cfg.pde.points * per_point,
                            "phase": getattr(estimator, "phase", "fo"), "wall_s": round(time.perf_counter() - t0, 3)})
            loss_sum, loss_n = 0.0, 0
            bar.set_postfix(loss=f"{records[-1]['train_loss']:.3g}", rel_l2=f"{100 * err['rel_l2']:.3f}%", refresh=False)
            if out_dir is not None:
                write_jsonl(out_dir / "metrics.jsonl", records)
    bar.close()

    final = records[-1]
    metrics = {"rel_l2": final["rel_l2"], "rel_l2_learned": final["rel_l2_learned"], "untrained_rel_l2": baseline,
               "best_rel_l2": min(r["rel_l2"] for r in records), "steps": cfg.train.steps,
               "loss_queries": queries, "forward_evals": final["forward_evals"],
               "evals_per_point": per_point, "trainable_params": network.trainable_params,
               "dense_params": network.dense_params, "problem": problem.name, "dim": problem.dim,
               "derivatives": method, "backend": backend.name, "estimator": cfg.estimator.name, "seed": cfg.seed}
    if cfg.train.smoothed_points and method.startswith("stein"):
        smooth = stein_grid(problem.inputs, cfg.pde.derivatives.sigma, min(cfg.pde.derivatives.level, 3))
        sub = test_x[:cfg.train.smoothed_points]
        u_s = predict(network, backend, problem, theta.detach(), sub, max(1, cfg.train.eval_batch_size // smooth.size),
                      smooth)
        metrics["smoothed_rel_l2"] = errors(problem, u_s, sub)["rel_l2"]
        u = predict(network, backend, problem, theta.detach(), sub, cfg.train.eval_batch_size)
        metrics["raw_rel_l2_same_points"] = errors(problem, u, sub)["rel_l2"]
    metrics.update(wall_s=round(time.perf_counter() - t0, 3), counters=backend.counters(), warnings=warnings)
    if out_dir is not None:
        save_params(out_dir / "params.pt", network, backend, theta.detach())
        write_json(out_dir / "metrics.json", metrics)
        _plots(out_dir, records, network, backend, problem, theta.detach(), cfg, metrics)
    log(f"hwsim pinn: rel. L2 {100 * metrics['rel_l2']:.3f} % (learned part {100 * metrics['rel_l2_learned']:.2f} %, "
        f"untrained {100 * baseline:.2f} %), {metrics['forward_evals']:,} forward evaluations, "
        f"{metrics['wall_s']:.1f} s" + (f"; results in {out_dir}" if out_dir else ""))
    return metrics


def _fo_loss(network, backend, problem: Problem, stencil: Stencil | None, theta: torch.Tensor,
             x: torch.Tensor, chunk_elements: int) -> torch.Tensor:
    """The residual loss at theta with the graph to theta kept (FO baseline)."""
    if stencil is None:
        tensors = backend.param_space(network).unflatten(theta)
        net = lambda p: network.forward(backend, tensors, p.to(backend.device, backend.data_dtype))  # noqa: E731
        return autodiff_loss(problem, net, x.to(backend.device, backend.data_dtype))
    return stencil_objective(network, backend, problem, stencil, x, chunk_elements).loss_at(theta)


def _plots(out_dir: Path, records: list[dict], network, backend, problem: Problem, theta: torch.Tensor,
           cfg: PinnConfig, metrics: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hwsim.report import save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [r["step"] for r in records]
    ax.plot(steps, [100 * r["rel_l2"] for r in records], marker=".", label="rel. L2 of u")
    ax.plot(steps, [100 * r["rel_l2_learned"] for r in records], marker=".", label="rel. L2 of the learned part")
    ax.axhline(100 * metrics["untrained_rel_l2"], color="grey", ls="--", label="untrained (N = 0)")
    ax.set(xlabel="step", ylabel="error (%)", yscale="log",
           title=f"{problem.name}{problem.dim}: {cfg.estimator.name}, {cfg.pde.derivatives.method}, {backend.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out_dir / "error.png")

    s = torch.linspace(0, 1, 101, dtype=torch.float64)
    line = torch.cat([s[:, None].expand(-1, problem.dim), torch.full((101, 1), 0.5, dtype=torch.float64)], dim=1)
    u, base = predict(network, backend, problem, theta, line, 101), problem.base(line)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, shift, what in ((axes[0], 0, "u"), (axes[1], base, "learned part u - base")):
        ax.plot(s, problem.exact(line) - shift, label="exact", lw=2)
        ax.plot(s, u - shift, "--", label="predicted")
        ax.plot(s, base - shift, ":", color="grey", label="untrained (N = 0)")
        ax.set(xlabel="s  (x = s 1, t = 1/2)", ylabel=what, title=f"{problem.name}{problem.dim} along the diagonal: {what}")
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, out_dir / "line.png")
