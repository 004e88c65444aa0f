"""The HJB-20 table of Zhao et al., arXiv:2308.09858: {autodiff, finite differences, MC Stein, sparse-grid Stein} x
{FO, ZO} x {dense, TT}, each a `hwsim pinn` run of the CPU-sized configs (21-64-64-1) with only the
derivative method, the estimator and the layers changed; rel. L2 error, error of the learned part,
forward evaluations, wall time and the spread of the error over the last quarter of the steps.
Writes runs/hjb_table/<row>/, benchmarks/results/hjb_table.json and prints a markdown table.

    python benchmarks/hjb_table.py [--rows zo_tt_sg fo_tt_sg ...] [--set train.steps=600] [--collect]

A row already run with the same config (its run directory or the results JSON) is not run again, so the
table can be filled over several sessions; ``--collect`` runs nothing. Rows: <fo|zo>_<tt|dense>_<ad|fd|mc|sg>.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import RESULTS, finished_run, save
from hwsim.config import PinnConfig, load_config
from hwsim.pinn.train import pinn
from hwsim.report import markdown_table

METHODS = {"ad": "autodiff", "fd": "fd", "mc": "stein_mc", "sg": "stein_grid"}
BASE = {"tt": "hjb20_zo_tt_sg", "dense": "hjb20_zo_dense_sg"}


def all_rows() -> dict[str, tuple[str, list[str]]]:
    """row -> (base config, overrides). Rows on a stencil of the model's size (sparse grid, MC) run the
    base configs' 600 steps, the cheap ones (autodiff, differences) 2,000: the shipped hjb20_* configs
    are rows of this table exactly."""
    return {f"{est}_{model}_{m}": (BASE[model], [f"pde.derivatives.method={method}"]
                                   + (["estimator.name=fo"] if est == "fo" else [])
                                   + (["train.steps=2000", "train.eval_every=100"] if m in ("ad", "fd") or est == "fo" else []))
            for est in ("fo", "zo") for model in ("tt", "dense") for m, method in METHODS.items()}


def late_rel_l2(jsonl: Path) -> dict | None:
    """min, mean and max of rel. L2 over the evaluations of the last quarter of a run's steps (its
    metrics.jsonl; None if absent): how much the final figure depends on where the run stopped."""
    if not jsonl.is_file():
        return None
    records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    last = records[-1]["step"]
    late = [r["rel_l2"] for r in records if r["step"] > 0.75 * last]
    return {"min": min(late), "mean": sum(late) / len(late), "max": max(late)}


def main() -> None:
    rows = all_rows()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", choices=sorted(rows), default=sorted(rows))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applied to every row")
    ap.add_argument("--out", default="runs/hjb_table")
    ap.add_argument("--collect", action="store_true", help="run nothing: table of the rows done")
    args = ap.parse_args()
    path = RESULTS / "hjb_table.json"
    previous = {r["row"]: r for r in json.loads(path.read_text())["rows"]} if path.is_file() else {}
    results = dict(previous)
    for name in args.rows:
        config, overrides = rows[name]
        overrides = overrides + args.set
        out = Path(args.out) / name
        metrics = finished_run(config, overrides, out, previous.get(name), PinnConfig)
        if metrics is None and args.collect:
            continue
        if metrics is None:
            metrics = pinn(load_config(config, overrides, PinnConfig), out, progress=False,
                           log=lambda s: print(f"{name}: {s.splitlines()[0]}", flush=True))
        late = late_rel_l2(out / "metrics.jsonl") or (previous.get(name) or {}).get("late_rel_l2")
        results[name] = {"row": name, "config_name": config, "overrides": overrides,
                         "config": load_config(config, overrides, PinnConfig).to_dict(), "metrics": metrics,
                         "late_rel_l2": late}
        save("hjb_table", {"rows": list(results.values())})
    table = [{"row": r["row"], "steps": r["metrics"]["steps"], "rel_l2": f"{100 * r['metrics']['rel_l2']:.3f} %",
              "learned": f"{100 * r['metrics']['rel_l2_learned']:.2f} %",
              "late": "{mean:.3f} % ({min:.3f}-{max:.3f})".format(**{k: 100 * v for k, v in r["late_rel_l2"].items()})
              if r.get("late_rel_l2") else "-",
              "evals": f"{r['metrics']['forward_evals']:.3g}", "wall": round(r["metrics"]["wall_s"])}
             for r in sorted(results.values(), key=lambda r: r["row"])]
    print(markdown_table(table, [("row", "row"), ("steps", "steps"), ("rel_l2", "rel. L2"),
                                 ("learned", "rel. L2 of the learned part"),
                                 ("late", "rel. L2 over the last quarter: mean (min-max)"), ("evals", "forward evaluations"),
                                 ("wall", "wall (s)")]))


if __name__ == "__main__":
    main()
