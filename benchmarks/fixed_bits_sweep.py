"""Accuracy vs bit width: the MNIST TT model (784-256-10, rank 4) trained BP-free (per-tensor RGE) from
scratch on the fixed backend at 16, 8, 6 and 4 bits, both master modes, next to the ideal backend on
the same schedule (and with the 8-bit row's mu); at 8 bits also with 12-bit intermediates and logits
(weights, inputs, activations 8 bits). Writes runs/fixed_bits/<row>/ (full run directories),
benchmarks/results/fixed_bits.json and docs/img/fixed_bits.png.

Perturbation and learning rate follow the LSB (docs/fixed_point.md, section 7):
- master float: mu = max(0.01, 3 weight LSBs) (0.01 is the ideal row's), lr as the ideal row;
- master integer: theta is in LSBs, so mu = max(1, round(0.01 / LSB)) LSBs and lr = lr_float / LSB,
  with stochastic rounding of the updates (nearest rounding freezes every update below 1/2 LSB).

    python benchmarks/fixed_bits_sweep.py [--steps 2000] [--bits 16 8 6 4] [--out runs/fixed_bits]

A row already run with the same config (its run directory, or benchmarks/results/fixed_bits.json from an
earlier sweep) is not run again; the JSON and the plot are rewritten after every row, so a sweep can be
stopped and resumed. ``--collect`` runs nothing and reports the rows done.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common import RESULTS, finished_run, save  # noqa: E402
from hwsim.backends.fixed.backend import DEFAULT_INT_BITS  # noqa: E402
from hwsim.config import load_config  # noqa: E402
from hwsim.report import save_figure  # noqa: E402
from hwsim.train import train  # noqa: E402

LR, MIN_LR = 0.008, 0.0001
WIDE = "backend.formats={intermediate: [12, 7], output: [12, 6]}"
DOCS_IMG = Path(__file__).resolve().parent.parent / "docs" / "img"


def rows(bits_list, steps):
    common = [f"train.steps={steps}", "train.eval_every=250", f"optimizer.lr={LR}"]
    yield "ideal", None, "ideal", common
    # the ideal backend with the 8-bit float row's mu (3 LSBs of Q8.6): isolates the effect of mu
    yield "ideal_mu_8bit", 8, "ideal", common + [f"estimator.rge.mu={3 * 2.0 ** -(8 - DEFAULT_INT_BITS['weight'])}"]
    for bits in bits_list:
        lsb = 2.0 ** -(bits - DEFAULT_INT_BITS["weight"])
        fixed = common + ["backend.name=fixed", f"backend.bits={bits}"]
        yield f"fixed{bits}_float", bits, "float", fixed + [f"estimator.rge.mu={max(0.01, 3 * lsb)}"]
        integer = ["backend.master=integer", "backend.update_rounding=stochastic"]
        integer_lr = [f"optimizer.lr={LR / lsb}", f"optimizer.schedule.min_lr={MIN_LR / lsb}"]
        yield f"fixed{bits}_integer", bits, "integer", fixed + integer + [
            f"estimator.rge.mu={max(1, round(0.01 / lsb))}"] + integer_lr
        if bits == 8:     # W8A8 with 12-bit TT-core state and logits (docs/fixed_point.md section 7), mu = 1 LSB
            yield "fixed8_wide_float", bits, "float, 12-bit state", fixed + [
                "backend.master=float", WIDE, f"estimator.rge.mu={lsb}"]
            yield "fixed8_wide_integer", bits, "integer, 12-bit state", fixed + integer + [
                WIDE, "estimator.rge.mu=1"] + integer_lr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--bits", type=int, nargs="+", default=[16, 8, 6, 4])
    ap.add_argument("--out", default="runs/fixed_bits")
    ap.add_argument("--collect", action="store_true", help="run nothing: table and plot of the rows done")
    args = ap.parse_args()
    path = RESULTS / "fixed_bits.json"
    previous = {r["row"]: r for r in json.loads(path.read_text())["rows"]} if path.is_file() else {}
    results = []
    for name, bits, master, overrides in rows(args.bits, args.steps):
        out = Path(args.out) / name
        metrics = finished_run("mnist_tt_zo", overrides, out, previous.get(name))
        if metrics is not None:
            print(f"{name}: done before, {100 * metrics['test_accuracy']:.2f} %", flush=True)
        elif args.collect:
            print(f"{name}: not run yet", flush=True)
            continue
        else:
            metrics = train(load_config("mnist_tt_zo", overrides), out, progress=False,
                            log=lambda s: print(f"{name}: {s}", flush=True) if "test accuracy" in s else None)
        results.append({"row": name, "bits": bits, "master": master, "overrides": overrides,
                        "config": load_config("mnist_tt_zo", overrides).to_dict(),
                        "test_accuracy": metrics["test_accuracy"], "metrics": metrics})
        report(results, args)


def report(results: list[dict], args) -> None:
    """Plot and JSON of the rows so far (written after every row)."""
    ideal = results[0]["test_accuracy"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for master, marker in (("float", "o"), ("integer", "s")):
        pts = sorted((r["bits"], r["test_accuracy"]) for r in results if r["master"] == master)
        ax.plot([b for b, _ in pts], [100 * a for _, a in pts], marker=marker, label=f"fixed, master {master}")
        for r in results:
            if r["master"] == f"{master}, 12-bit state":
                ax.plot([r["bits"]], [100 * r["test_accuracy"]], marker=marker, ls="", ms=9, mfc="none",
                        color=ax.lines[-1].get_color(), label=f"8-bit, 12-bit state, master {master}")
    ax.axhline(100 * ideal, color="k", ls="--", lw=1, label=f"ideal float32, mu 0.01 ({100 * ideal:.2f} %)")
    for r in results[1:]:
        if r["master"] == "ideal":
            ax.plot([r["bits"]], [100 * r["test_accuracy"]], "kx", ms=9,
                    label=f"ideal float32, the {r['bits']}-bit float row's mu ({100 * r['test_accuracy']:.2f} %)")
    ax.set_xlabel("bits (every role)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(sorted(set(args.bits)))
    ax.set_title(f"MNIST TT 784-256-10, BP-free RGE, {args.steps} steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    save_figure(fig, DOCS_IMG / "fixed_bits.png")
    save("fixed_bits", {"steps": args.steps, "ideal_test_accuracy": ideal, "rows": results})


if __name__ == "__main__":
    main()
