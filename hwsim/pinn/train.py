"""PINN runs (``hwsim pinn``): the task of the one loop (hwsim.loop) for a PDE: fresh collocation points
every step, the PDE residual loss through a backend, and the relative L2 error on the run's test points; and
deployment of a trained PINN run on any backend (``hwsim eval``).

Writes a run directory: config.yaml, metrics.jsonl (one line per evaluation), metrics.json, params.pt,
checkpoints/, error.png (error vs step) and line.png (predicted vs exact along the diagonal x = s 1, t = 1/2).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from hwsim.build import build_network
from hwsim.config import ConfigError, PinnConfig
from hwsim.distributed import Ranks
from hwsim.loop import Parts, Task, build_parts, run_loop
from hwsim.host_memory import require
from hwsim.model import Network
from hwsim.objective import chunk_elements
from hwsim.pinn.derivatives import Stencil, stein_grid, stencil_nodes
from hwsim.pinn.objective import derivative_method
from hwsim.pinn.problems import Problem, build_problem
from hwsim.train import deploy, run_config


@torch.no_grad()
def predict(network, backend, problem: Problem, theta: torch.Tensor, x: torch.Tensor, batch: int,
            stencil: Stencil | None = None) -> torch.Tensor:
    """u at points x (N, D) (float64): the ansatz of the raw model, or of the Gaussian-smoothed model
    u_s = E[u(x + s z)] when a Stein ``stencil`` is given (its value row)."""
    tensors, out = backend.param_space(network).unflatten(theta), []
    backend.count_programs(network.linear_indices)
    for s in range(0, len(x), batch):
        part = x[s:s + batch]
        if stencil is None:
            backend.count_passes(len(part))
            n = network.forward(backend, tensors, part.to(backend.device, backend.data_dtype))[..., 0]
            out.append(problem.ansatz(part, n.to("cpu", torch.float64)))
        else:
            points = stencil.points(part)
            backend.count_passes(len(points))
            n = network.forward(backend, tensors, points.to(backend.device, backend.data_dtype))[..., 0]
            u = problem.ansatz(points, n.to("cpu", torch.float64))
            out.append(stencil.combine(u).value)
    return torch.cat(out)


def errors(problem: Problem, u: torch.Tensor, x: torch.Tensor) -> dict:
    """rel_l2 = |u - u*| / |u*|; rel_l2_learned = |u - u*| / |u* - base| (the error of the learned part)."""
    exact = problem.exact(x)
    diff = (u - exact).norm()
    return {"rel_l2": float(diff / exact.norm()), "rel_l2_learned": float(diff / (exact - problem.base(x)).norm())}


class PinnTask(Task):
    """Fresh collocation points every step, the mean squared PDE residual with the derivatives of the run's
    method; the score is minus the relative L2 error on the run's test points."""

    command, label, rows_key = "pinn", "hwsim pinn", "pde.points"

    def __init__(self, cfg: PinnConfig, problem: Problem, network, backend, method, test_x: torch.Tensor):
        self.cfg, self.problem, self.network, self.backend = cfg, problem, network, backend
        self.method, self.test_x = method, test_x
        self.baseline = errors(problem, problem.base(test_x), test_x)["rel_l2"]
        self.rows = cfg.pde.points * method.per_point

    def epoch(self, step: int) -> int:
        return step

    def objective(self, step: int, generator: torch.Generator):
        x = self.problem.sample(self.cfg.pde.points, generator)
        if step > 0:
            self.method.redraw(generator)
        return self.method.objective(self.network, self.backend, self.problem, x,
                                     chunk_elements(self.cfg.estimator.chunk_elements, self.backend.device))

    def query_counts(self, queries: int) -> dict:
        return {"loss_queries": queries, "forward_evals": queries * self.cfg.pde.points * self.method.per_point}

    def evaluate(self, step: int, theta: torch.Tensor) -> tuple[dict, float]:
        u = predict(self.network, self.backend, self.problem, theta, self.test_x, self.cfg.train.eval_batch_size)
        err = errors(self.problem, u, self.test_x)
        return err, -err["rel_l2"]

    def postfix(self, record: dict) -> dict:
        loss = record["train_loss"]
        return {"loss": "-" if loss is None else f"{loss:.3g}", "rel_l2": f"{100 * record['rel_l2']:.3f}%"}

    def summary(self, records: list[dict], theta: torch.Tensor, queries: int) -> dict:
        cfg, final = self.cfg, records[-1]
        method = cfg.pde.derivatives.method
        metrics = {"rel_l2": final["rel_l2"], "rel_l2_learned": final["rel_l2_learned"],
                   "untrained_rel_l2": self.baseline, "best_rel_l2": min(r["rel_l2"] for r in records),
                   "loss_queries": queries, "forward_evals": final["forward_evals"],
                   "evals_per_point": self.method.per_point, "problem": self.problem.name, "dim": self.problem.dim,
                   "derivatives": method}
        if cfg.train.smoothed_points and method.startswith("stein"):
            smooth = stein_grid(self.problem.inputs, cfg.pde.derivatives.sigma, min(cfg.pde.derivatives.level, 3))
            sub = self.test_x[:cfg.train.smoothed_points]
            u_s = predict(self.network, self.backend, self.problem, theta, sub,
                          max(1, cfg.train.eval_batch_size // smooth.size), smooth)
            metrics["smoothed_rel_l2"] = errors(self.problem, u_s, sub)["rel_l2"]
            u = predict(self.network, self.backend, self.problem, theta, sub, cfg.train.eval_batch_size)
            metrics["raw_rel_l2_same_points"] = errors(self.problem, u, sub)["rel_l2"]
        return metrics

    def final_line(self, metrics: dict) -> str:
        return (f"rel. L2 {100 * metrics['rel_l2']:.3f} % (learned part {100 * metrics['rel_l2_learned']:.2f} %, "
                f"untrained {100 * self.baseline:.2f} %), {metrics['forward_evals']:,} forward evaluations")

    def plots(self, out_dir: Path, records: list[dict], theta: torch.Tensor, metrics: dict) -> None:
        _plots(out_dir, records, self.network, self.backend, self.problem, theta, self.cfg, metrics)


def pinn(cfg: PinnConfig, out_dir: Path | None = None, progress: bool = True, log: Callable[[str], None] = print,
         resume: bool = False, allow_changes: bool = False, ranks: Ranks | None = None) -> dict:
    """Train one PINN; returns the final metrics (also written to ``out_dir`` when given). ``resume``:
    continue the run in ``out_dir`` from its newest checkpoint (hwsim.loop); ``ranks``: the processes
    sharing each step's queries (hwsim.distributed)."""
    task, parts, header = prepare(cfg)
    return run_loop(task, parts, out_dir, progress, log, header, resume, allow_changes, ranks)


def prepare(cfg: PinnConfig) -> tuple[PinnTask, Parts, str]:
    """What :func:`pinn` runs: the task, the parts (backend bound, estimator, start weights) and the run's
    header line."""
    problem, network, test_x = _setup(cfg)
    method_name = cfg.pde.derivatives.method
    parts = build_parts(cfg, network, network.init_params, cfg.train.steps)
    if method_name == "autodiff" and not parts.backend.capabilities.differentiable:
        raise ConfigError(f"pde.derivatives.method: 'autodiff' needs a differentiable backend; "
                          f"{parts.backend.name!r} is not (use stein_grid, stein_mc or fd)")
    method = derivative_method(cfg.pde.derivatives, problem.inputs, parts.generator)
    task = PinnTask(cfg, problem, network, parts.backend, method, test_x)
    header = (f"hwsim pinn: {problem.name} in {problem.dim} dimensions, "
              f"{parts.backend.param_space(network).size:,} trainable parameters ({network.dense_params:,} dense), "
              f"backend {parts.backend.name}, estimator {cfg.estimator.name}, derivatives {method_name} "
              f"({method.per_point} evaluations per point), {cfg.train.steps} steps of {cfg.pde.points} points; "
              f"untrained (N = 0) rel. L2 {100 * task.baseline:.2f} %\n" + network.describe())
    return task, parts, header


def evaluate(run_dir: Path, overrides: list[str] = ()) -> dict:
    """Deploy a PINN run on a backend (hwsim.train.deploy): the relative L2 errors ("rel_l2",
    "rel_l2_learned", as :func:`errors`) of its params.pt on the run's own ``pde.test_points`` test points,
    with its config.yaml changed by ``overrides`` (``backend.name=...`` and the backend's options)."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir, overrides, PinnConfig)
    problem, network, test_x = _setup(cfg)

    def rel_l2(backend, theta: torch.Tensor) -> tuple[dict, int]:
        u = predict(network, backend, problem, theta, test_x, cfg.train.eval_batch_size)
        return errors(problem, u, test_x), len(test_x)

    return deploy(run_dir, cfg, network, rel_l2)


def _setup(cfg: PinnConfig) -> tuple[Problem, Network, torch.Tensor]:
    """The run's problem, its network (checked to map the problem's inputs to u) and its test points
    (pde.test_points, inputs): drawn from their own generator (seed + 1), the same in training and eval."""
    problem = build_problem(cfg.pde.problem, cfg.pde.dim)
    network = build_network(cfg.model)
    if network.in_features != problem.inputs or network.out_features != 1:
        raise ConfigError(f"model.layers: the network maps {network.in_features} -> {network.out_features}; "
                          f"pde {problem.name} with dim {problem.dim} needs {problem.inputs} -> 1")
    _require_memory(cfg, problem.inputs)
    return problem, network, problem.sample(cfg.pde.test_points, torch.Generator().manual_seed(cfg.seed + 1))


def _require_memory(cfg: PinnConfig, inputs: int) -> None:
    """Refuse sizes whose tensors cannot fit (hwsim.host_memory): the stencil, a step's points x stencil
    rows (inputs and one layer's activations, float64) and the test points."""
    d = cfg.pde.derivatives
    nodes = stencil_nodes(d.method, inputs, d.level, d.samples)
    widest = max([inputs] + [layer.out_features for layer in cfg.model.layers if layer.out_features])
    require("pde.derivatives", nodes * (3 * inputs + 1) * 8 * 4,
            f"the {d.method} stencil's {nodes:,} nodes in {inputs} dimensions (level {d.level})")
    require("pde.points", cfg.pde.points * nodes * (inputs + 2 * widest) * 8,
            f"{cfg.pde.points:,} points x {nodes:,} stencil nodes ({d.method}) x {widest} features")
    require("pde.test_points", cfg.pde.test_points * (inputs + 2 * widest) * 8,
            f"{cfg.pde.test_points:,} test points x {widest} features")


def _plots(out_dir: Path, records: list[dict], network, backend, problem: Problem, theta: torch.Tensor,
           cfg: PinnConfig, metrics: dict) -> None:
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hwsim.report import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["step"] for r in records]
    # each error next to the same quantity of the ansatz with the network off (N = 0, "untrained" in the
    # metrics): u's error is small from the start (the base term dominates u), the learned part's is 100 %;
    # step 0 is the initialised network, which may start above it
    for ax, key, what, untrained in ((axes[0], "rel_l2", "rel. L2 error of u", metrics["untrained_rel_l2"]),
                                     (axes[1], "rel_l2_learned", "rel. L2 error of the learned part", 1.0)):
        ax.plot(steps, [100 * r[key] for r in records], marker=".", label="this run (step 0: initialised network)")
        ax.axhline(100 * untrained, color="grey", ls="--", label=f"untrained: network off (N = 0), {100 * untrained:.3g} %")
        ax.set(xlabel="step", ylabel="error (%)", yscale="log", title=what)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{out_dir.name}: {problem.name}{problem.dim}, {cfg.estimator.name}, "
                 f"{cfg.pde.derivatives.method} derivatives, {backend.name}")
    save_figure(fig, out_dir / "error.png")

    s = torch.linspace(0, 1, 101, dtype=torch.float64)
    line = torch.cat([s[:, None].expand(-1, problem.dim), torch.full((101, 1), 0.5, dtype=torch.float64)], dim=1)
    u, base = predict(network, backend, problem, theta, line, 101), problem.base(line)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, shift, what in ((axes[0], 0, "u"), (axes[1], base, "learned part u - base")):
        ax.plot(s, problem.exact(line) - shift, label="exact", lw=2)
        ax.plot(s, u - shift, "--", label="predicted")
        ax.plot(s, base - shift, ":", color="grey", label="untrained: network off (N = 0)")
        ax.set(xlabel="s  (x = s 1, t = 1/2)", ylabel=what, title=f"{problem.name}{problem.dim} along the diagonal: {what}")
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, out_dir / "line.png")
