"""``hwsim compare SPEC``: one model, many hardware rows, one report.

A spec (YAML; shipped ones sit with the configs and have a ``rows`` key) names a training config. Its
model is trained once BP-free on that config's backend (the *reference*), then every row (a backend with its
settings) gets: the reference deployed on it (test accuracy, energy and latency per inference), and,
when ``finetune.steps`` > 0, the reference fine-tuned BP-free on that hardware (accuracy after, training
energy and device time, forward queries, on-device memory). Noisy rows run ``chips`` chip instances
(``backend.chip_seed`` 0..N-1): mean, spread and range of accuracy over chips. A row that fails keeps its
reason; the others finish. Writes compare.json, compare.csv, compare.md and plots into the out dir.
"""
from __future__ import annotations

import csv
import io
import json
import multiprocessing
import signal
import statistics
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import yaml

from hwsim.backends.base import DEFAULT_BACKEND, backend_class, backend_names
from hwsim.config import ConfigError, from_dict, load_config, read_raw
from hwsim.report import markdown_table, write_atomic, write_json
from hwsim.rundir import RunLock
from hwsim.runtime import keep_freed_memory
from hwsim.stats import wilson_interval


@dataclass
class Finetune:
    steps: int = 0             # BP-free fine-tuning steps on each row's hardware (0: deploy only)
    set: list[str] = field(default_factory=list)     # overrides of the fine-tuning runs

    def check(self, p: str) -> None:
        if self.steps < 0:
            raise ConfigError(f"{p}.steps: expected a number >= 0, got {self.steps}")


@dataclass
class Row:
    name: str
    backend: dict = field(default_factory=lambda: {"name": DEFAULT_BACKEND})
    chips: Optional[int] = None                       # chip instances (noisy backends; default: the spec's)
    test_limit: Optional[int] = None                  # test images of this row (default: the spec's)
    finetune: Optional[bool] = None                   # false: deploy only on this row
    set: list[str] = field(default_factory=list)     # more overrides for this row (deploy and fine-tune)

    def check(self, p: str) -> None:
        if "name" not in self.backend:
            raise ConfigError(f"{p}.backend.name: required; known backends: {', '.join(backend_names())}")
        for key in ("chips", "test_limit"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"{p}.{key}: expected a number > 0, got {value}")


@dataclass
class Spec:
    rows: list[Row]
    config: str = "mnist_tt_zo"                       # the training config of the model
    set: list[str] = field(default_factory=list)     # overrides of the reference training
    reference: Optional[str] = None                   # a finished run to use instead of training one
    test_limit: Optional[int] = 1000
    chips: int = 1
    finetune: Finetune = field(default_factory=Finetune)

    def check(self, p: str) -> None:
        if not self.rows:
            raise ConfigError(f"{p}.rows: at least one row is required")
        names = [r.name for r in self.rows]
        if len(set(names)) != len(names):
            raise ConfigError(f"{p}.rows: row names must differ; got {names}")
        if self.chips <= 0:
            raise ConfigError(f"{p}.chips: expected a number > 0, got {self.chips}")
        if self.test_limit is not None and self.test_limit <= 0:
            raise ConfigError(f"{p}.test_limit: expected a number > 0 (or null: every test image), got {self.test_limit}")


def load_spec(source: str) -> Spec:
    """A compare spec from a YAML file or a shipped spec's name."""
    raw = read_raw(source)
    if "rows" not in raw:
        raise ConfigError(f"compare spec {source!r}: has no rows; a spec lists the hardware rows to compare")
    spec = from_dict(Spec, raw, "")
    load_config(spec.config, spec.set)                 # a bad training config fails here, not after training
    return spec


def is_spec(source: str) -> bool:
    try:
        return "rows" in read_raw(source)
    except ConfigError:
        return False


def _jobs(spec: Spec) -> list[tuple[Row, int | None]]:
    """(row, chip seed or None) of every evaluation to run."""
    out = []
    for row in spec.rows:
        if backend_class(row.backend["name"]).capabilities.chip_instances:
            out += [(row, chip) for chip in range(row.chips or spec.chips)]
        else:
            out.append((row, None))
    return out


def _overrides(spec: Spec, row: Row, chip: int | None) -> list[str]:
    backend = dict(row.backend, **({"chip_seed": chip} if chip is not None else {}))
    limit = row.test_limit or spec.test_limit
    return ([f"backend={json.dumps(backend)}"] + ([f"data.test_limit={limit}"] if limit else []) + list(row.set))


ENERGY_MODEL_PREFIXES = ("energy_j_", "latency_s_", "energy_breakdown_")   # a deployment's figures a row keeps
# figures shown as a column only when some row carries them (e.g. energy_j_calibration: a chip's calibration)
OPTIONAL_COLUMNS = [("energy_j_calibration", "calibration J")]


def row_dir(out_dir: Path, row: str, chip: int | None) -> Path:
    """The run directory of a row's fine-tuning (of one chip)."""
    return out_dir / "rows" / (row.replace(" ", "_") + ("" if chip is None else f"_chip{chip}"))


def run_job(spec: Spec, row: Row, chip: int | None, reference: Path, out_dir: Path) -> dict:
    """Deploy (and fine-tune) the reference on one row's hardware; a failure is returned as its reason."""
    from hwsim.train import evaluate, run_config, train

    result: dict[str, Any] = {"row": row.name, "chip": chip}
    t0 = time.perf_counter()
    try:
        overrides = _overrides(spec, row, chip)
        deployed = evaluate(reference, overrides)
        batch = run_config(reference, overrides).train.eval_batch_size
        result.update(deployed_accuracy=deployed["test_accuracy"], inferences=deployed["inferences"],
                      eval_batch=min(batch, deployed["inferences"]),
                      **{k: v for k, v in deployed.items() if k.startswith(ENERGY_MODEL_PREFIXES)})
        if spec.finetune.steps and row.finetune is not False:
            cfg = load_config(str(reference / "config.yaml"), overrides + [
                f"train.init={reference}", f"train.steps={spec.finetune.steps}", "train.epochs=null",
                f"train.eval_every={spec.finetune.steps}"] + spec.finetune.set + list(row.set))
            where = row_dir(out_dir, row.name, chip)
            m = train(cfg, where, progress=False, log=lambda s: None)
            result.update(finetuned_accuracy=m["test_accuracy"], forward_queries=m["forward_queries"],
                          **{k: m[k] for k in ("energy_j_training", "latency_s_training", "device_memory_bytes_zo",
                                               "device_memory_bytes_bp") if k in m})
        else:                                  # a deployment only: its mapping where a fine-tuning run keeps it
            where = row_dir(out_dir, row.name, chip)
            where.mkdir(parents=True, exist_ok=True)
            write_atomic(where / "mapping.txt", deployed["mapping"] + "\n")
    except Exception as e:  # a failing row is reported in its row; the others go on
        lines = [line for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        result["error"] = f"{type(e).__name__}: {lines[0]}"
        if not isinstance(e, (ConfigError, RuntimeError, OSError, ValueError, KeyError)):
            result["traceback"] = traceback.format_exc(limit=3)
    result["wall_s"] = round(time.perf_counter() - t0, 2)
    return result


def summarize(spec: Spec, results: list[dict]) -> list[dict]:
    """One line per row: accuracy mean / std / min / max over its chips, the mean of every other figure."""
    out = []
    for row in spec.rows:
        mine = [r for r in results if r["row"] == row.name]
        ok = [r for r in mine if "error" not in r]
        line: dict[str, Any] = {"row": row.name, "backend": row.backend["name"], "chips": len(mine),
                                "failed": len(mine) - len(ok)}
        if not ok:
            line["error"] = mine[0].get("error", "no result") if mine else "no result"
            out.append(line)
            continue
        for key in ("deployed_accuracy", "finetuned_accuracy"):
            values = [r[key] for r in ok if key in r]
            if values:
                line[key] = statistics.fmean(values)
                line[key + "_std"] = statistics.pstdev(values)
                line[key + "_min"], line[key + "_max"] = min(values), max(values)
        for key in ("inferences", "eval_batch", "energy_j_per_inference", "latency_s_per_inference", "energy_j_training",
                    "latency_s_training", "forward_queries", "device_memory_bytes_zo", "device_memory_bytes_bp",
                    *(k for k, _ in OPTIONAL_COLUMNS)):
            values = [r[key] for r in ok if key in r]
            if values:
                line[key] = statistics.fmean(values)
        parts: dict[str, float] = {}
        for r in ok:
            for k, v in r.get("energy_breakdown_per_inference", {}).items():
                parts[k] = parts.get(k, 0.0) + v / len(ok)
        line["energy_breakdown_per_inference"] = parts
        out.append(line)
    return out


COLUMNS = [("row", "hardware"), ("chips", "chips"), ("inferences", "test images"), ("deployed", "deployed acc. (%)"),
           ("finetuned", "fine-tuned acc. (%)"), ("energy_j_per_inference", "J / inference"),
           ("eval_batch", "eval. batch"), ("latency_s_per_inference", "s / inference"),
           ("energy_j_training", "fine-tune J"), ("latency_s_training", "fine-tune s (device)"),
           ("forward_queries", "forward queries"), ("device_memory_bytes_zo", "memory ZO (B)"),
           ("device_memory_bytes_bp", "memory BP (B)"), ("error", "failed")]

TABLE_NOTES = """\
- test images: n, the first n images of the test set (rows with the same n see the same images; so does every
  chip of a row).
- acc. (%): mean over the row's chips, then [95 % Wilson interval for n test images] (E. B. Wilson, J. Amer.
  Statist. Assoc. 22, 209-212, 1927; the test-set sampling error: chips share the images, so they do not add to
  n); rows with several chips add "chips ± std (min-max)", the spread over chip instances.
- J / inference, s / inference: the energy and device time of evaluating the row's n test images, divided
  by n (hwsim energy model). The images run in evaluation batches of "eval. batch" images (train.eval_batch_size,
  at most n); costs paid once per batch (programming or settling a chip, loading weights) are amortised over
  it, so these figures depend on the batch: compare rows at the same batch.
- fine-tune: BP-free fine-tuning on the row's hardware (J and s of the device, forward queries); memory: the
  device memory to train BP-free (ZO) vs by back-propagation (BP)."""


def _accuracy_cell(line: dict, key: str) -> str:
    """mean [Wilson 95 % interval] and, for several chips, chips ± std (min-max); all in %."""
    if key not in line:
        return ""
    low, high = wilson_interval(line[key], int(line["inferences"]))
    cell = f"{100 * line[key]:.2f} [{100 * low:.1f}, {100 * high:.1f}]"
    if line["chips"] - line["failed"] > 1:
        cell += (f"; chips ± {100 * line[key + '_std']:.2f} ({100 * line[key + '_min']:.1f}-"
                 f"{100 * line[key + '_max']:.1f})")
    return cell


def table_cells(lines: list[dict]) -> tuple[list[dict], list[tuple[str, str]]]:
    """The table's rows (cells formatted) and its (key, header) columns: COLUMNS, and an OPTIONAL_COLUMNS
    entry after J / inference where a row has it."""
    shown = [{**line, "deployed": _accuracy_cell(line, "deployed_accuracy"),
              "finetuned": _accuracy_cell(line, "finetuned_accuracy"),
              **{k: int(line[k]) for k in ("forward_queries", "inferences", "eval_batch", "device_memory_bytes_zo",
                                           "device_memory_bytes_bp") if k in line}}
             for line in lines]
    extra = [column for column in OPTIONAL_COLUMNS if any(column[0] in line for line in lines)]
    at = [k for k, _ in COLUMNS].index("eval_batch")
    return shown, COLUMNS[:at] + extra + COLUMNS[at:]


def table(lines: list[dict]) -> str:
    """compare.md's table (Markdown)."""
    return markdown_table(*table_cells(lines))


def reference_line(reference: Path) -> str:
    """What the reference is: its directory, backend, and its own test accuracy on how many test images."""
    from hwsim.data import load_dataset

    metrics = json.loads((reference / "metrics.json").read_text()) if (reference / "metrics.json").is_file() else {}
    cfg = load_config(str(reference / "config.yaml"))
    d = cfg.data
    try:
        images = f"{len(load_dataset(d.name, d.path, d.val_size, d.train_limit, d.test_limit).test.y):,}"
    except Exception:      # the count is a label; a data set not readable here must not stop the report
        images = str(d.test_limit or "all")
    accuracy = (f", test accuracy {100 * metrics['test_accuracy']:.2f} % on {images} test images"
                if "test_accuracy" in metrics else " (not finished)")
    return f"Reference: {reference} ({cfg.backend.name} backend{accuracy})"


def _csv(lines: list[dict]) -> str:
    keys = sorted({k for line in lines for k, v in line.items() if not isinstance(v, dict)})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for line in lines:
        writer.writerow({k: line.get(k, "") for k in keys})
    return buffer.getvalue()


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (energy, accuracy) points no other point beats on both (lower energy and higher accuracy, one
    of them strictly), by increasing energy."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def plots(lines: list[dict], results: list[dict], out_dir: Path, title: str, classes: int | None = None,
          finetune_steps: int = 0) -> list[Path]:
    """accuracy_vs_energy.png, energy_breakdown.png and (with several chips) chips.png (hwsim.compare_plots);
    ``classes``: the model's outputs, for the chance level."""
    import matplotlib
    matplotlib.use("Agg")
    from hwsim import compare_plots as draw

    figures = [draw.accuracy_vs_energy(lines, results, out_dir / "accuracy_vs_energy.png", title, classes,
                                       finetune_steps),
               draw.energy_by_component(lines, out_dir / "energy_breakdown.png", title),
               draw.chips(lines, results, out_dir / "chips.png", title, classes)]
    return [path for path in figures if path is not None]


def compare(spec: Spec, out_dir: Path, jobs: int = 1, log: Callable[[str], None] = print,
            progress: bool = True) -> dict:
    """Run a spec; returns {"rows": per-row summary, "results": per chip} (also written to ``out_dir``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock()
    lock.acquire(out_dir)             # one compare per out dir (its reference and rows lock their own)
    try:
        return _compare(spec, out_dir, jobs, log, progress)
    finally:
        lock.release()


def _compare(spec: Spec, out_dir: Path, jobs: int, log: Callable[[str], None], progress: bool) -> dict:
    from hwsim.loop import numeric_changes
    from hwsim.train import train

    t0 = time.perf_counter()
    if spec.reference:
        reference = Path(spec.reference)
        if not ((reference / "params.pt").is_file() or (reference / "checkpoints").is_dir()):
            raise ConfigError(f"reference: {reference} is not a run directory with trained parameters")
    else:
        reference = out_dir / "reference"
        cfg = load_config(spec.config, spec.set)
        done = reference / "metrics.json"
        same = done.is_file() and not numeric_changes(read_raw(str(reference / "config.yaml")),
                                                      json.loads(json.dumps(cfg.to_dict())))
        if same:
            log(f"hwsim compare: reference {reference} already trained with this config")
        else:
            log(f"hwsim compare: training the reference model ({spec.config}) on its {cfg.backend.name} backend -> {reference}")
            train(cfg, reference, progress=progress, log=log)
    work = _jobs(spec)
    log(f"hwsim compare: {len(spec.rows)} rows, {len(work)} evaluations ({jobs} at a time)")
    results: list[dict] = []

    def done_one(k: int, result: dict) -> None:
        chip = "" if result["chip"] is None else f" chip {result['chip']}"
        what = result.get("error") or (f"deployed {100 * result['deployed_accuracy']:.2f} %"
                                       + (f", fine-tuned {100 * result['finetuned_accuracy']:.2f} %"
                                          if "finetuned_accuracy" in result else ""))
        log(f"hwsim compare: [{k}/{len(work)}] {result['row']}{chip}: {what} ({result['wall_s']:.0f} s)")
        results.append(result)

    if jobs > 1:
        threads = max(1, torch.get_num_threads() // jobs)     # the cores shared, not oversubscribed
        # a SIGTERM to this process ends the workers too (leaving the pool terminates them), not only Ctrl-C,
        # which a terminal sends to the whole process group
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main else None
        try:
            with multiprocessing.get_context("spawn").Pool(jobs, _worker_init, (threads,)) as pool:
                pending = [pool.apply_async(run_job, (spec, row, chip, reference, out_dir)) for row, chip in work]
                for k, result in enumerate(pending, 1):
                    done_one(k, result.get())
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
    else:
        for k, (row, chip) in enumerate(work, 1):
            log(f"hwsim compare: [{k}/{len(work)}] {row.name}" + ("" if chip is None else f" chip {chip}") + " ...")
            done_one(k, run_job(spec, row, chip, reference, out_dir))
    lines = summarize(spec, results)
    report = {"spec": _as_dict(spec), "reference": str(reference), "rows": lines, "results": results,
              "wall_s": round(time.perf_counter() - t0, 1)}
    write_json(out_dir / "compare.json", report)
    write_atomic(out_dir / "compare.csv", _csv(lines))
    text = table(lines)
    write_atomic(out_dir / "compare.md", markdown_report(spec, reference, text))
    figures = plots(lines, results, out_dir, spec.config, model_classes(reference), spec.finetune.steps)
    write_atomic(out_dir / "report.html", html_report(spec, reference, lines, figures, out_dir))
    log(text)
    log(f"hwsim compare: {report['wall_s']:.0f} s; table {out_dir / 'compare.md'}, report {out_dir / 'report.html'}, "
        f"plots " + ", ".join(str(p) for p in figures))
    return report


def markdown_report(spec: Spec, reference: Path, text: str) -> str:
    """compare.md: the reference, the table and what its columns mean."""
    return f"# hwsim compare: {spec.config}\n\n{reference_line(reference)}\n\n{text}\n\n{TABLE_NOTES}\n"


FIGURE_CAPTIONS = {
    "accuracy_vs_energy.png": "Test accuracy vs energy per inference: deployed (o) -> fine-tuned (^), 95 % Wilson "
                              "intervals, chips as points and boxes, the Pareto front.",
    "energy_breakdown.png": "Energy per inference by component (absolute, log axis) and the total of every row.",
    "chips.png": "Accuracy of every chip instance of the rows with several chips."}


def html_report(spec: Spec, reference: Path, lines: list[dict], figures: list[Path], out_dir: Path) -> str:
    """report.html: the table and its notes, the plots (embedded), the spec, the reference's config and
    mapping, every row's mapping (its first chip), and versions (hwsim.html_report)."""
    from hwsim import html_report as page
    from hwsim.report import format_cell

    shown, columns = table_cells(lines)
    cells = [{k: format_cell(row.get(k, "")) for k, _ in columns} for row in shown]
    sections = [("compare spec", yaml.safe_dump(_as_dict(spec), sort_keys=False))]
    for name in ("config.yaml", "mapping.txt"):
        if (reference / name).is_file():
            sections.append((f"reference {name} ({reference / name})", (reference / name).read_text(errors="replace")))
    for row in spec.rows:
        runs = [row_dir(out_dir, row.name, chip) / "mapping.txt" for chip in (None, 0)]
        for mapping in [path for path in runs if path.is_file()][:1]:
            sections.append((f"{row.name}: mapping ({mapping})", mapping.read_text(errors="replace")))
    sections.append(("versions", "\n".join(f"{k}: {v}" for k, v in page.versions().items())))
    return page.render(f"hwsim compare: {spec.config}", reference_line(reference), page.table_html(cells, columns),
                       TABLE_NOTES, [(f, FIGURE_CAPTIONS.get(f.name, f.name)) for f in figures], sections)


def model_classes(run_dir: Path) -> int | None:
    """The number of classes of a run's model (the last layer's outputs), None if its config says none."""
    layers = (read_raw(str(Path(run_dir) / "config.yaml")).get("model") or {}).get("layers") or []
    outputs = [layer["out_features"] for layer in layers if isinstance(layer, dict) and "out_features" in layer]
    return int(outputs[-1]) if outputs else None


def _worker_init(threads: int) -> None:
    """A pool worker: its share of the cores; Ctrl-C (sent by a terminal to the whole process group) is the
    parent's to handle: it ends the pool, so the workers do not print tracebacks of their own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    keep_freed_memory()


def _exit_on_sigterm(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def _as_dict(spec: Spec) -> dict:
    from dataclasses import asdict
    return yaml.safe_load(yaml.safe_dump(asdict(spec)))
