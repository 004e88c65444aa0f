"""Run-directory files (written atomically), learning-curve plots and result tables."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import yaml


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` (creating its parent folders) via a temporary file in the same folder
    (flushed to disk) and a rename, so that ``path`` holds either its old or its new content, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def write_yaml(path: Path, obj) -> None:
    write_atomic(path, yaml.safe_dump(obj, sort_keys=False))


def plot_curves(records: Sequence[dict], path: Path, title: str = "") -> None:
    """curves.png: validation and test accuracy (from the untrained model at step 0) and the mean train
    loss between evaluations, against steps and against forward queries."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    trained = [r for r in records if r.get("train_loss") is not None]
    # a hybrid run's switch of estimator: marked at the first evaluation in the new phase
    switch = next((r for r in records if r.get("phase") != records[0].get("phase")), None)
    for col, (xkey, xlabel) in enumerate((("step", "step"), ("forward_queries", "forward queries"))):
        xs = [r[xkey] for r in records]
        for key, label in (("val_accuracy", "validation"), ("test_accuracy", "test")):
            if all(key in r for r in records):
                axes[0, col].plot(xs, [100 * r[key] for r in records], marker=".", label=label)
        if switch is not None:
            for row in (0, 1):
                axes[row, col].axvline(switch[xkey], color="grey", ls=":",
                                       label=f"first evaluation with {switch['phase'].upper()}")
            axes[1, col].legend(fontsize=8)
        axes[0, col].set_ylabel("accuracy (%)")
        axes[0, col].legend(fontsize=8)
        axes[1, col].plot([r[xkey] for r in trained], [r["train_loss"] for r in trained], marker=".", color="tab:red")
        axes[1, col].set_ylabel("train loss (mean since last eval.)")
        axes[1, col].set_yscale("log")
        for row in (0, 1):
            axes[row, col].set_xlabel(xlabel)
            axes[row, col].grid(alpha=0.3)
            axes[row, col].ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    fig.suptitle(title)
    save_figure(fig, path)


def plot_energy(metrics: dict, path: Path, title: str = "") -> None:
    """energy.png: the run's device energy by component, for the training and for one inference (linear
    bars from zero, each labelled with its joules and share), and its device memory BP-free vs
    back-propagation (hwsim.energy figures of metrics.json)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), gridspec_kw={"width_ratios": [1.2, 1.2, 0.8]})
    for ax, key, total, what in ((axes[0], "energy_breakdown_training", "energy_j_training", "training"),
                                 (axes[1], "energy_breakdown_per_inference", "energy_j_per_inference", "one inference")):
        parts = metrics.get(key, {})
        whole = sum(parts.values()) or 1.0
        names = list(parts)[::-1]                                   # the first component on top
        ax.barh(names, [parts[n] for n in names], color=[f"C{list(parts).index(n)}" for n in names])
        for y, name in enumerate(names):
            ax.annotate(f"{parts[name]:.3g} J ({100 * parts[name] / whole:.3g} %)", (parts[name], y), xytext=(4, 0),
                        textcoords="offset points", va="center", fontsize=8)
        ax.set_xlim(0, 1.45 * max(parts.values(), default=1.0))
        ax.set(xlabel="energy (J, linear from 0)", title=f"{what}: {metrics.get(total, 0):.3g} J")
        ax.grid(alpha=0.3, axis="x")
    memory = [metrics.get("device_memory_bytes_zo", 0), metrics.get("device_memory_bytes_bp", 0)]
    axes[2].bar(["BP-free (ZO)", "back-propagation"], [m / 2 ** 20 for m in memory], color=["C2", "C3"])
    axes[2].set(ylabel="device memory to train (MiB)", title="on-device training memory")
    fig.suptitle(f"{title} (hwsim energy model, docs/energy.md)")
    save_figure(fig, path)


def log_axis(ax, which: str) -> None:
    """Put axis ``which`` ("x" or "y") of ``ax`` on a log scale (its limits set already, > 0) with labels
    that do not collide: majors at 1 (and 2, 5 over fewer than 4 decades; 1-9 within one decade), written
    like 2e-06, minor ticks unlabelled."""
    from matplotlib.ticker import LogLocator, NullFormatter, FuncFormatter

    getattr(ax, f"set_{which}scale")("log")
    low, high = sorted(getattr(ax, f"get_{which}lim")())
    decades = math.log10(high / low)
    subs = (1.0,) if decades > 4 else (1.0, 2.0, 5.0) if decades > 1 else tuple(float(k) for k in range(1, 10))
    axis = getattr(ax, f"{which}axis")
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")
                                           .replace("e0", "")))
    axis.set_minor_formatter(NullFormatter())


def save_figure(fig, path: Path, layout: bool = True) -> None:
    """Save a matplotlib figure as PNG atomically and close it (``layout``: tight layout first)."""
    import matplotlib.pyplot as plt

    if layout:
        fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


# What a run directory's kind is measured by: (metric, best, query count, header, lower is better)
RUN_KINDS = {"train": ("test_accuracy", "best_test_accuracy", "forward_queries", "test acc. (%)", False),
             "pinn": ("rel_l2", "best_rel_l2", "forward_evals", "rel. L2 (%)", True)}


def load_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """(metrics, metrics.jsonl records) of a run directory. A run that has not finished (stopped, killed,
    still going) has no metrics.json: its metrics are those of its last evaluation, with ``partial`` set to
    "step N of M". FileNotFoundError names what is missing."""
    from hwsim.errors import ConfigError

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: metrics.jsonl is missing")
    records = []
    for number, line in enumerate((run_dir / "metrics.jsonl").read_text(errors="replace").splitlines(), 1):
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            record = "garbage"
        if record is not None and not (isinstance(record, dict) and isinstance(record.get("step"), int)):
            raise ConfigError(f"{run_dir / 'metrics.jsonl'}: line {number} is not an evaluation record")
        if record is not None:
            records.append(record)
    if (run_dir / "metrics.json").is_file():
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text(errors="replace"))
        except ValueError:
            metrics = None
        if not isinstance(metrics, dict):
            raise ConfigError(f"{run_dir / 'metrics.json'}: not the metrics of a run")
        return metrics, records
    if not records:
        raise FileNotFoundError(f"{run_dir} has no evaluation yet (metrics.jsonl is empty)")
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    last, train = records[-1], config.get("train", {})
    kind = "pinn" if "rel_l2" in last else "train"
    metric, best, _, _, lower = RUN_KINDS[kind]
    pick = min if lower else max
    return {**last, best: pick(r[metric] for r in records),
            "estimator": config.get("estimator", {}).get("name", ""), "backend": config.get("backend", {}).get("name", ""),
            "partial": f"step {last['step']} of {train.get('steps') or train.get('epochs', '?')}"
                       + ("" if train.get("steps") else " epochs")}, records


def compare_runs(run_dirs: Sequence[Path], plot_path: Path | None = None) -> str:
    """Markdown table of runs of one kind (``hwsim train``: test accuracy; ``hwsim pinn``: rel. L2 error;
    a run not finished shows its last evaluation, labelled partial); optionally one plot of that metric
    against forward queries and against wall time."""
    from hwsim.errors import ConfigError

    loaded = [(Path(d).name, *load_run(d)) for d in run_dirs]
    kinds = sorted({"pinn" if "rel_l2" in m else "train" for _, m, _ in loaded})
    if len(kinds) > 1:
        raise ConfigError("compare: the runs mix `hwsim train` and `hwsim pinn` runs; compare one kind at a time")
    metric, best, queries, header, lower = RUN_KINDS[kinds[0]]
    rows = [{**m, "run": name + (f" (partial: {m['partial']})" if "partial" in m else ""),
             "metric_pct": 100 * m[metric], "best_pct": 100 * m[best], "queries": m[queries]}
            for name, m, _ in loaded]
    if plot_path is not None:
        plot_runs(loaded, metric, queries, header, lower, plot_path)
    columns = [("run", "run"), ("estimator", "estimator"), ("backend", "backend"), ("metric_pct", header),
               ("best_pct", "best (%)"), ("queries", queries.replace("_", " ")), ("trainable_params", "trainable params"),
               ("steps", "steps"), ("wall_s", "wall (s)"), ("energy_j_training", "training J (model)"),
               ("energy_j_per_inference", "J / inference (model)")]
    return markdown_table(rows, columns)


def plot_runs(loaded: Sequence[tuple[str, dict, list[dict]]], metric: str, queries: str, header: str, lower: bool,
              path: Path) -> None:
    """The plot of ``hwsim compare RUN... --plot``: each run's ``metric`` (%) at its evaluations, against
    forward queries (log, with 0 -- the untrained model's evaluation -- kept as the axis' first tick) and
    against wall time (linear: evaluations are about evenly spaced in time). Runs differ in line style too,
    so identical curves stay visible."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.5))
    styles = ("-", "--", ":", "-.")
    for k, (name, _, records) in enumerate(loaded):
        for axis, key in zip(ax, (queries, "wall_s")):
            axis.plot([r[key] for r in records], [100 * r[metric] for r in records], marker=".", label=name,
                      ls=styles[k % len(styles)], lw=1.4)
    counts = [r[queries] for _, _, records in loaded for r in records]
    _queries_axis(ax[0], counts)
    ax[1].set_xlim(left=0)
    for axis, label in zip(ax, (f"{queries.replace('_', ' ')} (log; 0 at the left)", "wall time (s)")):
        axis.set(xlabel=label, ylabel=header)
        if lower:
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
    ax[0].legend(fontsize=8)
    save_figure(fig, path)


def _queries_axis(ax, counts: Sequence[float]) -> None:
    """x of ``ax`` for query counts that include 0: log above the smallest positive count, linear below it
    (matplotlib's symlog), labelled at powers of ten only (and 0)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    positive = [c for c in counts if c > 0]
    if not positive:
        return
    low, high = min(positive), max(positive)
    ax.set_xscale("symlog", linthresh=low, linscale=0.4)
    ax.set_xlim(-0.05 * low, high * 1.3)
    powers = [10 ** e for e in range(math.ceil(math.log10(low)), math.floor(math.log10(high * 1.3)) + 1)]
    ticks = [0.0] + (powers or [low, high])
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: "0" if v == 0 else f"{v:.0e}".replace("e+0", "e")))
    ax.xaxis.set_minor_locator(NullLocator())


def format_cell(value) -> str:
    """A table cell: floats to 4 significant digits, integers with thousands separators."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table; ``columns`` are (key, header) pairs; floats are printed compactly."""
    cell = format_cell
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(r.get(k, "")) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])
