"""Accuracy of the forward-only derivative estimators on a known smooth function in 21 dimensions.

f(x) = sin(a . x) + 1/2 sum_i c_i x_i^2 (|a| = 1.5, x uniform in [0, 1]^21). For 200 points, the relative
L2 error of the gradient and of the Laplacian (sum of the second derivatives) against (i) the exact
derivatives of f and (ii) those of its Gaussian smoothing f_s = E[f(x + s z)] (what the Stein estimators
target; s = 0.1), by number of function evaluations per point: Stein on sparse grids (levels 2, 3),
Monte Carlo Stein (M antithetic pairs, 2 M + 1 evaluations), central finite differences (h = 0.1;
2 D + 1). Also the residual of the exact HJB-20 solution under each stencil (mean and rms over 200 points
and, for Monte Carlo, 20 sample draws): the loss floor that training with that estimator cannot get
below. Writes benchmarks/results/pinn_estimators.json and docs/img/pinn_estimators.png.

    python benchmarks/pinn_estimators.py
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from common import save  # noqa: E402
from hwsim.pinn.derivatives import Stencil, finite_differences, stein_grid, stein_mc  # noqa: E402
from hwsim.pinn.problems import HJB  # noqa: E402
from hwsim.report import save_figure  # noqa: E402

DIM, SIGMA, POINTS, MC_DRAWS = 21, 0.1, 200, 20
DOCS_IMG = Path(__file__).resolve().parent.parent / "docs" / "img"


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(DIM, generator=gen, dtype=torch.float64)
    a *= 1.5 / a.norm()
    c = torch.rand(DIM, generator=gen, dtype=torch.float64)
    x = torch.rand(POINTS, DIM, generator=gen, dtype=torch.float64)
    f = lambda p: torch.sin(p @ a) + 0.5 * (c * p ** 2).sum(-1)  # noqa: E731
    damp = math.exp(-SIGMA ** 2 * float(a @ a) / 2)                   # E[sin(a.(x + s z))] = damp sin(a.x)
    exact = {"true": (torch.cos(x @ a)[:, None] * a + c * x, -(a @ a) * torch.sin(x @ a) + c.sum()),
             "smoothed": (damp * torch.cos(x @ a)[:, None] * a + c * x, -damp * (a @ a) * torch.sin(x @ a) + c.sum())}
    stencils = [("sparse grid L2", stein_grid(DIM, SIGMA, 2)), ("sparse grid L3", stein_grid(DIM, SIGMA, 3)),
                ("finite differences", finite_differences(DIM, 0.1))]
    samples = (16, 64, 256, 1024, 4096)
    stencils += [(f"MC Stein M={m}", stein_mc(DIM, m, gen, SIGMA)) for m in samples]
    draws = [[s] for _, s in stencils[:3]] + [[stein_mc(DIM, m, gen, SIGMA) for _ in range(MC_DRAWS)] for m in samples]
    rows = []
    for (name, stencil), stencil_draws in zip(stencils, draws):
        d = stencil.combine(f(stencil.points(x)))
        row = {"estimator": name, "evaluations_per_point": stencil.size, **hjb_exact_residual(stencil_draws, gen)}
        for target, (grad, lap) in exact.items():
            row[f"grad_rel_err_vs_{target}"] = float((d.grad - grad).norm() / grad.norm())
            row[f"laplacian_rel_err_vs_{target}"] = float((d.second.sum(-1) - lap).norm() / lap.norm())
        rows.append(row)
        print(f"{name:22s} {stencil.size:6d} evals: grad {row['grad_rel_err_vs_true']:.2e} / "
              f"{row['grad_rel_err_vs_smoothed']:.2e}, Laplacian {row['laplacian_rel_err_vs_true']:.2e} / "
              f"{row['laplacian_rel_err_vs_smoothed']:.2e} (vs f / vs f_s); exact HJB-20 residual mean "
              f"{row['hjb_exact_residual_mean']:.2e}, rms {row['hjb_exact_residual_rms']:.2e}", flush=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, what in zip(axes, ("grad", "laplacian")):
        for family, marker in (("MC Stein", "o-"), ("sparse grid", "s"), ("finite differences", "^")):
            sel = [r for r in rows if r["estimator"].startswith(family)]
            ax.plot([r["evaluations_per_point"] for r in sel], [r[f"{what}_rel_err_vs_true"] for r in sel], marker,
                    label=family)
            for r in sel:
                if family == "sparse grid":
                    ax.annotate(r["estimator"][-2:], (r["evaluations_per_point"], r[f"{what}_rel_err_vs_true"]))
        ax.set(xscale="log", yscale="log", xlabel="evaluations per point", ylabel="relative L2 error",
               title=f"{'gradient' if what == 'grad' else 'Laplacian'} of sin(a.x) + x'Cx/2, D = {DIM}")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    save_figure(fig, DOCS_IMG / "pinn_estimators.png")
    save("pinn_estimators", {"dim": DIM, "sigma": SIGMA,
                             "points": POINTS, "rows": rows})


def hjb_exact_residual(stencils: list[Stencil], gen: torch.Generator) -> dict:
    """Mean and rms of the HJB-20 residual of the exact solution u = sum x + 1 - t (zero with exact
    derivatives) under the stencils (one per draw), at POINTS fresh points each."""
    problem = HJB(DIM - 1)
    residual = torch.cat([problem.residual(s.combine(problem.exact(s.points(problem.sample(POINTS, gen)))))
                          for s in stencils])
    return {"hjb_exact_residual_mean": float(residual.mean()), "hjb_exact_residual_rms": float(residual.pow(2).mean().sqrt())}


if __name__ == "__main__":
    main()
