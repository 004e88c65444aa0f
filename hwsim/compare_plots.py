"""The plots of ``hwsim compare SPEC``: accuracy vs energy, energy per inference by component, and the
accuracy of every chip instance.

Inputs are compare.json's ``rows`` (one summary dict per row: ``row``, ``chips``, ``inferences`` (test
images per chip), ``deployed_accuracy`` / ``finetuned_accuracy`` (fractions, mean over chips),
``energy_j_per_inference``, ``energy_breakdown_per_inference`` {component: J}) and ``results`` (one dict
per row and chip, with the same accuracy keys). Accuracy intervals are 95 % Wilson intervals for the row's
test images (hwsim.stats): every chip of a row sees the same images, so chips do not add to n.
"""
from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

from hwsim.report import log_axis, save_figure
from hwsim.stats import wilson_interval

ACCURACY_KEYS = (("deployed_accuracy", "deployed"), ("finetuned_accuracy", "fine-tuned"))
DODGE_DECADES = 0.025     # at most: deployed drawn this far left of the row's energy, fine-tuned right (log10 x)
ZOOM_POINTS = 6.0         # the zoomed panel holds the rows within this many points of the most accurate one
VISIBLE_SHARE = 1e-3      # a component under this share of a row's energy is listed, not drawn


def _percent_interval(line: dict, key: str) -> tuple[float, float]:
    """The 95 % Wilson interval (in %) of a row's mean accuracy ``key`` on its ``inferences`` test images."""
    low, high = wilson_interval(line[key], int(line["inferences"]))
    return 100 * low, 100 * high


def _chip_values(results: list[dict], row: str, key: str) -> list[float]:
    """Accuracy ``key`` (%) of every chip of ``row`` that did not fail."""
    return [100 * r[key] for r in results if r["row"] == row and "error" not in r and key in r]


def _box(ax, x_low: float, x_high: float, values: list[float], color) -> None:
    """A box from x_low to x_high (data units): quartiles, median line, whiskers to min and max."""
    import statistics

    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    ax.fill_between([x_low, x_high], q1, q3, color=color, alpha=0.18, lw=0, zorder=1)
    ax.plot([x_low, x_high, x_high, x_low, x_low], [q1, q1, q3, q3, q1], color=color, lw=0.8, zorder=1)
    ax.plot([x_low, x_high], [median, median], color=color, lw=1.2, zorder=1)
    middle = math.sqrt(x_low * x_high)
    ax.plot([middle, middle], [min(values), q1], color=color, lw=0.8, zorder=1)
    ax.plot([middle, middle], [q3, max(values)], color=color, lw=0.8, zorder=1)


def _dodge(lines: list[dict]) -> float:
    """How far (decades) deployed and fine-tuned are drawn from their row's energy: DODGE_DECADES, less when
    rows' energies lie closer than 3.5 times that (their markers would otherwise meet)."""
    logs = sorted({round(math.log10(line["energy_j_per_inference"]), 4) for line in lines})
    gaps = [b - a for a, b in zip(logs, logs[1:])]
    return min([DODGE_DECADES] + [gap / 3.5 for gap in gaps])


def _draw_row(ax, line: dict, results: list[dict], color, rng: random.Random,
              dodge: float) -> list[tuple[float, float]]:
    """One row on an accuracy-vs-energy axis: per accuracy key a mean marker with its Wilson interval,
    for several chips their jittered points and a box, and an arrow deployed -> fine-tuned; the two stages
    ``dodge`` decades either side of the row's energy. Returns the drawn (x, y) of the means."""
    energy = line["energy_j_per_inference"]
    means = []
    for (key, what), side, marker in zip(ACCURACY_KEYS, (-1, 1), ("o", "^")):
        if key not in line:
            continue
        x = energy * 10 ** (side * dodge if "finetuned_accuracy" in line else 0)
        chips = _chip_values(results, line["row"], key)
        if len(chips) > 1:
            half = 10 ** (0.7 * dodge)
            _box(ax, x / half, x * half, chips, color)
            ax.scatter([x * 10 ** rng.uniform(-0.5 * dodge, 0.5 * dodge) for _ in chips], chips,
                       s=7, color=color, alpha=0.45, lw=0, zorder=2)
        y = 100 * line[key]
        low, high = _percent_interval(line, key)
        ax.errorbar([x], [y], yerr=[[y - low], [high - y]], fmt=marker, ms=6, color=color, capsize=2.5, lw=1,
                    mfc="white" if key == "deployed_accuracy" else color, zorder=3)
        means.append((x, y))
    if len(means) == 2 and abs(means[1][1] - means[0][1]) > 0:
        ax.annotate("", xy=means[1], xytext=means[0], zorder=4,
                    arrowprops=dict(arrowstyle="->", color=color, lw=1, shrinkA=4, shrinkB=4))
    return means


def _label_in_place(ax, anchors: list[tuple[float, float, str, object]]) -> None:
    """Each (x, y, text, color) written right of its point; a label that would overlap one already placed
    moves down (then up) in steps of a line, with a thin leader line back to its point."""
    x0, x1 = (math.log10(v) for v in ax.get_xlim())
    y0, y1 = ax.get_ylim()
    placed: list[tuple[float, float]] = []
    step, width = 0.05, 0.3
    for x, y, text, color in sorted(anchors, key=lambda a: -a[1]):
        fx, fy = (math.log10(x) - x0) / (x1 - x0) + 0.02, (y - y0) / (y1 - y0)
        for k in range(40):
            ty = fy + (-1) ** k * step * ((k + 1) // 2)
            if 0.02 <= ty <= 0.98 and all(abs(ty - py) >= step or abs(fx - px) >= width for px, py in placed):
                break
        placed.append((fx, ty))
        ax.annotate(text, xy=(x, y), xytext=(fx, ty), textcoords="axes fraction", fontsize=7.5, color=color,
                    va="center", bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.8), arrowprops=dict(arrowstyle="-", color=color, lw=0.5, alpha=0.6)
                    if abs(ty - fy) > 1e-9 else None)


def _accuracy_limits(lines: list[dict], results: list[dict]) -> tuple[float, float]:
    """y limits (%) holding every row's intervals and chip points, half a point of margin."""
    lows, highs = [], []
    for line in lines:
        for key, _ in ACCURACY_KEYS:
            if key in line:
                low, high = _percent_interval(line, key)
                chips = _chip_values(results, line["row"], key)
                lows.append(min([low] + chips))
                highs.append(max([high] + chips))
    return max(0.0, min(lows) - 0.5), min(100.0, max(highs) + 0.5)


def _energy_limits(lines: list[dict]) -> tuple[float, float]:
    """x limits (J) holding every row's dodged markers and room for labels on the right."""
    energies = [line["energy_j_per_inference"] for line in lines]
    return min(energies) / 10 ** 0.15, max(energies) * 10 ** 0.6


def accuracy_vs_energy(lines: list[dict], results: list[dict], path: Path, title: str, classes: int | None,
                       finetune_steps: int) -> Path | None:
    """accuracy_vs_energy.png (None when no row has an accuracy and an energy): every row's test accuracy against its energy per inference (log), deployed
    (o) and fine-tuned (^) drawn apart with an arrow between them, 95 % Wilson intervals, chips as jittered
    points and a box, the Pareto front; rows labelled in place. When some rows sit far below the best, a
    second panel zooms onto those near it."""
    import matplotlib.pyplot as plt

    plotted = [line for line in lines if "energy_j_per_inference" in line and "deployed_accuracy" in line]
    left_out = [line["row"] for line in lines if line not in plotted]
    if not plotted:                                          # every row failed: nothing to draw
        return None
    best = max(100 * line.get(key, 0) for line in plotted for key, _ in ACCURACY_KEYS)
    near = [line for line in plotted if max(100 * line.get(k, 0) for k, _ in ACCURACY_KEYS) >= best - ZOOM_POINTS]
    panels = [("all rows", plotted)] + ([(f"zoom: rows within {ZOOM_POINTS:g} points of the best", near)]
                                        if len(near) < len(plotted) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(7 + 8 * (len(panels) - 1), 5.6), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.5][:len(panels)]})
    colors = {line["row"]: f"C{i % 10}" for i, line in enumerate(plotted)}
    usual_n = Counter(int(line["inferences"]) for line in plotted).most_common(1)[0][0] if plotted else 0
    front_points = [(line["energy_j_per_inference"], 100 * line[key]) for line in plotted
                    for key, _ in ACCURACY_KEYS if key in line]
    from hwsim.compare import pareto_front
    front = pareto_front(front_points)
    zoom = _accuracy_limits(near, results)
    for ax, (what, rows) in zip(axes[0], panels):
        rng = random.Random(0)                             # the same jitter on every run
        anchors, dodge = [], _dodge(rows)
        for line in rows:
            means = _draw_row(ax, line, results, colors[line["row"]], rng, dodge)
            n = int(line["inferences"])
            label = line["row"] + ("" if n == usual_n else f" (n = {n:,})")
            anchors.append((*means[-1], label, colors[line["row"]]))
        if front:
            xs, ys = zip(*front)
            ax.step(xs + (ax.get_xlim()[1] * 10,), ys + (ys[-1],), where="post", color="0.45", lw=1, ls="--",
                    zorder=0, label="Pareto front (no row cheaper and more accurate)")
        if classes and (what == "all rows" or len(panels) == 1):
            ax.axhline(100 / classes, color="0.3", lw=0.8, ls=":", label=f"chance ({classes} classes: {100 / classes:g} %)")
        ax.set_xlim(*_energy_limits(rows))
        log_axis(ax, "x")
        ax.set_ylim(*((0, 100) if what == "all rows" else zoom))
        ax.set(xlabel="energy per inference (J, log; hwsim energy model)", ylabel="test accuracy (%)", title=what)
        ax.grid(alpha=0.3, which="major")
        labelled = rows if (what != "all rows" or len(panels) == 1) else [r for r in rows if r not in near]
        _label_in_place(ax, [a for a, line in zip(anchors, rows) if line in labelled])
        if len(panels) > 1 and what == "all rows":
            ax.axhspan(*zoom, color="0.85", alpha=0.5, lw=0, zorder=0)
            above = zoom[1] <= 95                   # above the band no row is more accurate; else below it
            ax.text(0.98, (zoom[1] + 1 if above else zoom[0] - 1) / 100, "zoomed on the right", fontsize=7,
                    transform=ax.transAxes, color="0.35", va="bottom" if above else "top", ha="right")
    from matplotlib.lines import Line2D
    key = [Line2D([], [], marker="o", mfc="white", color="0.2", ls="", label="deployed"),
           Line2D([], [], marker="^", color="0.2", ls="", label=f"fine-tuned ({finetune_steps} BP-free steps on the chip)"),
           Line2D([], [], marker="|", color="0.2", ls="", ms=10, label="95 % Wilson interval (test images)"),
           Line2D([], [], marker="s", color="0.2", alpha=0.3, ls="", label="chips: points, box (quartiles, min-max)")]
    handles, _ = axes[0][0].get_legend_handles_labels()
    fig.legend(handles=key + handles, loc="lower center", ncol=3, fontsize=7.5, frameon=False)
    note = (f"n = {usual_n:,} test images per row unless labelled; deployed and fine-tuned share the row's energy and "
            f"are drawn slightly apart")
    if left_out:
        note += "; not plotted (no accuracy or energy): " + ", ".join(left_out)
    fig.suptitle(f"{title}: test accuracy vs energy per inference\n{note}", fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    save_figure(fig, path, layout=False)
    return path


def energy_by_component(lines: list[dict], path: Path, title: str) -> Path | None:
    """energy_breakdown.png (None when no row has one): a dot plot of every row's energy per inference by component (J, log axis)
    with the row's total; a component under VISIBLE_SHARE of its row's total is named in the row's label
    instead ("< 0.1 %: ...")."""
    import matplotlib.pyplot as plt

    rows = [line for line in lines if line.get("energy_breakdown_per_inference")]
    if not rows:
        return None
    components = sorted({c for line in rows for c in line["energy_breakdown_per_inference"]})
    markers = dict(zip(components, "osD^vP*Xh<>"))
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(rows) + 1.8))
    labels, drawn = [], []
    for i, line in enumerate(rows):
        parts = line["energy_breakdown_per_inference"]
        total = sum(parts.values())
        small = [c for c, v in parts.items() if 0 < v < VISIBLE_SHARE * total]
        labels.append(line["row"] + (f"\n(< {100 * VISIBLE_SHARE:g} %: {', '.join(small)})" if small else ""))
        for comp, value in parts.items():
            if comp not in small and value > 0:
                ax.scatter([value], [i], marker=markers[comp], color=f"C{components.index(comp)}", s=36, zorder=3,
                           label=comp if comp not in drawn else None)
                drawn.append(comp)
        ax.scatter([total], [i], marker="|", s=400, color="black", zorder=4, label="total" if i == 0 else None)
        ax.annotate(f"{total:.3g} J", (total, i), xytext=(8, 0), textcoords="offset points", va="center", fontsize=8)
        ax.axhline(i, color="0.9", lw=0.6, zorder=0)
    values = [v for line in rows for v in line["energy_breakdown_per_inference"].values()
              if v >= VISIBLE_SHARE * sum(line["energy_breakdown_per_inference"].values())]
    if values:
        ax.set_xlim(min(values) / 2, max(values) * 8)
    log_axis(ax, "x")
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set(xlabel="energy per inference (J, log; hwsim energy model)",
           title=f"{title}: energy per inference by component (absolute) and total")
    ax.grid(alpha=0.3, axis="x", which="major")
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    save_figure(fig, path)
    return path


def chips(lines: list[dict], results: list[dict], path: Path, title: str, classes: int | None) -> Path | None:
    """chips.png (rows with several chips only): one panel per row, its own accuracy axis; every chip as a
    jittered point and a box per stage (deployed, fine-tuned; quartiles, whiskers to min and max), the chance level, and for scale the 95 %
    Wilson interval of one chip's accuracy on the row's test images (test-set noise vs chip spread)."""
    import matplotlib.pyplot as plt

    noisy = [line for line in lines if line["chips"] > 1 and "deployed_accuracy" in line]
    if not noisy:
        return None
    fig, axes = plt.subplots(1, len(noisy), figsize=(3.6 * len(noisy) + 0.6, 4.4), squeeze=False)
    rng = random.Random(0)
    for ax, line in zip(axes[0], noisy):
        n = int(line["inferences"])
        stages = [(key, what) for key, what in ACCURACY_KEYS if key in line]
        everything = []
        for pos, (key, what) in enumerate(stages):
            values = _chip_values(results, line["row"], key)
            everything += values
            ax.boxplot([values], positions=[pos], widths=0.45, whis=(0, 100), medianprops={"color": "C1"})
            ax.scatter([pos + rng.uniform(-0.15, 0.15) for _ in values], values, s=16, alpha=0.7, color="C0",
                       zorder=3, lw=0)
        mean = 100 * line["deployed_accuracy"]
        low, high = _percent_interval(line, "deployed_accuracy")
        ax.errorbar([len(stages) - 0.35], [mean], yerr=[[mean - low], [high - mean]], fmt="_", color="0.4",
                    capsize=3, label=f"95 % Wilson interval of one\nchip at the mean (n = {n:,})")
        lo, hi = min(everything + [low]), max(everything + [high])
        pad = max(0.5, 0.1 * (hi - lo))
        ax.set_ylim(lo - pad, hi + pad)
        chance = 100 / classes if classes else None
        if chance is not None and lo - pad <= chance <= hi + pad:
            ax.axhline(chance, color="0.3", ls=":", lw=0.9, label=f"chance ({classes} classes: {chance:g} %)")
        elif chance is not None:
            ax.text(0.02, 0.02 if chance < lo else 0.95, f"chance ({chance:g} %) {'below' if chance < lo else 'above'}",
                    transform=ax.transAxes, fontsize=7, color="0.3")
        ax.set_xticks(range(len(stages)), [what for _, what in stages])
        ax.set_xlim(-0.6, len(stages) - 0.1)
        ax.set(title=f"{line['row']}\n{line['chips'] - line['failed']} chips, {n:,} test images", ylabel="test accuracy (%)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{title}: accuracy of every chip instance (points jittered sideways)", fontsize=10)
    save_figure(fig, path)
    return path
