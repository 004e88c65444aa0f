"""Run-directory files (written atomically), learning-curve plots and result tables."""
from __future__ import annotations

import json
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
    """energy.png: the run's device energy by component, for the training and for one inference, and its
    device memory BP-free vs back-propagation (hwsim.energy figures of metrics.json)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, total, what in ((axes[0], "energy_breakdown_training", "energy_j_training", "training"),
                                 (axes[1], "energy_breakdown_per_inference", "energy_j_per_inference", "one inference")):
        parts = metrics.get(key, {})
        ax.bar(list(parts), list(parts.values()), color=[f"C{i}" for i in range(len(parts))])
        ax.set(yscale="log", ylabel="energy (J, log)", title=f"{what}: {metrics.get(total, 0):.3g} J")
        ax.grid(alpha=0.3, axis="y")
    memory = [metrics.get("device_memory_bytes_zo", 0), metrics.get("device_memory_bytes_bp", 0)]
    axes[2].bar(["BP-free (ZO)", "back-propagation"], [m / 2 ** 20 for m in memory], color=["C2", "C3"])
    axes[2].set(ylabel="device memory to train (MiB)", title="on-device training memory")
    fig.suptitle(f"{title} (hwsim energy model, docs/energy.md)")
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

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
    from hwsim.config import ConfigError

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
    from hwsim.config import ConfigError

    loaded = [(Path(d).name, *load_run(d)) for d in run_dirs]
    kinds = sorted({"pinn" if "rel_l2" in m else "train" for _, m, _ in loaded})
    if len(kinds) > 1:
        raise ConfigError("compare: the runs mix `hwsim train` and `hwsim pinn` runs; compare one kind at a time")
    metric, best, queries, header, lower = RUN_KINDS[kinds[0]]
    rows = [{**m, "run": name + (f" (partial: {m['partial']})" if "partial" in m else ""),
             "metric_pct": 100 * m[metric], "best_pct": 100 * m[best], "queries": m[queries]}
            for name, m, _ in loaded]
    if plot_path is not None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(11, 4.5))
        for name, _, records in loaded:
            for axis, key in zip(ax, (queries, "wall_s")):
                axis.plot([r[key] for r in records], [100 * r[metric] for r in records], marker=".", label=name)
        for axis, label in zip(ax, (f"{queries.replace('_', ' ')} (log)", "wall time (s, log)")):
            axis.set(xscale="log", xlabel=label, ylabel=header, yscale="log" if lower else "linear")
            axis.grid(alpha=0.3)
        ax[0].legend(fontsize=8)
        save_figure(fig, plot_path)
    columns = [("run", "run"), ("estimator", "estimator"), ("backend", "backend"), ("metric_pct", header),
               ("best_pct", "best (%)"), ("queries", queries.replace("_", " ")), ("trainable_params", "trainable params"),
               ("steps", "steps"), ("wall_s", "wall (s)"), ("energy_j_training", "training J (model)"),
               ("energy_j_per_inference", "J / inference (model)")]
    return markdown_table(rows, columns)


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table; ``columns`` are (key, header) pairs; floats are printed compactly."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return f"{v:,}" if isinstance(v, int) else str(v)
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(r.get(k, "")) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])
