"""Classification runs (``hwsim train``): the task of the one loop (hwsim.loop) for labelled data, and
deployment of a trained run on any backend (``hwsim eval``).

Writes a run directory: config.yaml (resolved), metrics.jsonl (one line per evaluation), metrics.json
(final summary), params.pt (trained parameters), checkpoints/ and curves.png.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from hwsim.build import build_backend, build_mapping, build_network, steps_per_epoch, total_steps
from hwsim.checkpoint import CheckpointError, read_params
from hwsim.config import Config, ConfigError, load_config
from hwsim.data import load_dataset
from hwsim.distributed import Ranks
from hwsim.energy.report import subtract
from hwsim.energy.table import load_table
from hwsim.loop import Parts, Task, build_parts, run_loop
from hwsim.model import Network
from hwsim.objective import BatchObjective, chunk_elements
from hwsim.report import plot_curves


@torch.no_grad()
def accuracy(network: Network, backend, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
             batch_size: int) -> float:
    """Fraction of rows of x (N, in) whose argmax output equals y (N,)."""
    tensors = backend.param_space(network).unflatten(theta)
    correct = 0
    backend.count_programs(network.linear_indices)
    for s in range(0, len(y), batch_size):
        backend.count_passes(len(x[s:s + batch_size]))
        out = network.forward(backend, tensors, x[s:s + batch_size])
        correct += int((out.argmax(-1) == y[s:s + batch_size]).sum())
    return correct / max(1, len(y))


class Classification(Task):
    """Mini-batches of a labelled dataset, a new random order every epoch (the last partial batch is
    dropped); the score is the validation accuracy; test accuracy is reported at every evaluation."""

    command, label, rows_key = "train", "hwsim", "train.batch_size"

    def __init__(self, cfg: Config, data, network: Network, backend):
        self.cfg, self.network, self.backend = cfg, network, backend
        self.per_epoch = steps_per_epoch(len(data.train), cfg.train.batch_size)
        to_dev = lambda a, labels=False: torch.from_numpy(a).to(  # noqa: E731
            backend.device, None if labels else backend.data_dtype)
        self.xtr, self.ytr = to_dev(data.train.x), to_dev(data.train.y, True)
        self.xva, self.yva = to_dev(data.val.x), to_dev(data.val.y, True)
        self.xte, self.yte = to_dev(data.test.x), to_dev(data.test.y, True)
        self.perm: torch.Tensor | None = None         # this epoch's order of the training rows
        self.rows = cfg.train.batch_size

    def epoch(self, step: int) -> int:
        return step // self.per_epoch

    def objective(self, step: int, generator: torch.Generator) -> BatchObjective:
        pos, size = step % self.per_epoch, self.cfg.train.batch_size
        if pos == 0:
            self.perm = torch.randperm(len(self.ytr), generator=generator)
        idx = self.perm[pos * size:(pos + 1) * size].to(self.backend.device, non_blocking=True)
        return BatchObjective(self.network, self.backend, self.xtr[idx], self.ytr[idx],
                              chunk_elements(self.cfg.estimator.chunk_elements, self.backend.device))

    def query_counts(self, queries: int) -> dict:
        return {"forward_queries": queries}

    def evaluate(self, step: int, theta: torch.Tensor) -> tuple[dict, float]:
        size = self.cfg.train.eval_batch_size
        val = accuracy(self.network, self.backend, theta, self.xva, self.yva, size)
        test = accuracy(self.network, self.backend, theta, self.xte, self.yte, size)
        return {"epoch": round(step / self.per_epoch, 4), "val_accuracy": val, "test_accuracy": test}, val

    def postfix(self, record: dict) -> dict:
        loss = record["train_loss"]
        return {"loss": "-" if loss is None else f"{loss:.3f}", "test_acc": f"{record['test_accuracy']:.4f}",
                "queries": f"{record['forward_queries']:.3g}"}

    def summary(self, records: list[dict], theta: torch.Tensor, queries: int) -> dict:
        final = records[-1]
        return {"test_accuracy": final["test_accuracy"], "best_test_accuracy": max(r["test_accuracy"] for r in records),
                "val_accuracy": final["val_accuracy"], "epochs": final["epoch"], "forward_queries": queries}

    def final_line(self, metrics: dict) -> str:
        return (f"test accuracy {100 * metrics['test_accuracy']:.2f} % (best {100 * metrics['best_test_accuracy']:.2f} %), "
                f"{metrics['forward_queries']:,} forward queries")

    def plots(self, out_dir: Path, records: list[dict], theta: torch.Tensor, metrics: dict) -> None:
        plot_curves(records, out_dir / "curves.png",
                    f"{out_dir.name}: {self.cfg.estimator.name} on {self.backend.name}, "
                    f"{self.network.trainable_params:,} params, test acc {100 * metrics['test_accuracy']:.2f} %")

    def state_dict(self) -> dict:
        return {"perm": None if self.perm is None else self.perm.to(torch.int32)}

    def load_state_dict(self, state: dict) -> None:
        self.perm = None if state["perm"] is None else state["perm"].to(torch.int64)


def initial_params(path: str, network, what: str = "train.init") -> torch.Tensor:
    """The decoded float weights ("theta", (size,)) of a run (params.pt, else its newest checkpoint) or of a
    params or checkpoint file, to fine-tune from or deploy; errors start with ``what``."""
    try:
        theta, file = read_params(path)
    except CheckpointError as e:
        raise ConfigError(f"{what}: {e}") from None
    if theta.shape != (network.space.size,):
        raise ConfigError(f"{what}: {file} holds {theta.numel()} parameters, the model has {network.space.size}")
    bad = int((~torch.isfinite(theta)).sum()) if theta.is_floating_point() else 0
    if bad:
        raise ConfigError(f"{what}: {file} holds {bad} non-finite parameters (NaN or infinite)")
    return theta.to(torch.float64)


def train(cfg: Config, out_dir: Path | None = None, progress: bool = True, log: Callable[[str], None] = print,
          resume: bool = False, allow_changes: bool = False, ranks: Ranks | None = None) -> dict:
    """Run one experiment; returns the final metrics (also written to ``out_dir`` when given). ``resume``:
    continue the run in ``out_dir`` from its newest checkpoint (hwsim.loop); ``ranks``: the processes
    sharing each step's queries (hwsim.distributed)."""
    task, parts, header = prepare(cfg)
    return run_loop(task, parts, out_dir, progress, log, header, resume, allow_changes, ranks)


def prepare(cfg: Config) -> tuple["Classification", Parts, str]:
    """What :func:`train` runs: the task, the parts (backend bound, estimator, start weights) and the
    run's header line."""
    d = cfg.data
    data = load_dataset(d.name, d.path, d.val_size, d.train_limit, d.test_limit)
    network = build_network(cfg.model)
    if network.in_features != data.train.x.shape[1] or network.out_features != data.num_classes:
        raise ConfigError(f"model.layers: the network maps {network.in_features} -> {network.out_features}, "
                          f"the data needs {data.train.x.shape[1]} -> {data.num_classes}")
    per_epoch = steps_per_epoch(len(data.train), cfg.train.batch_size)
    n_steps = total_steps(cfg.train.steps, cfg.train.epochs, per_epoch)
    start = (lambda gen: initial_params(cfg.train.init, network)) if cfg.train.init else network.init_params
    parts = build_parts(cfg, network, start, n_steps)
    task = Classification(cfg, data, network, parts.backend)
    header = (f"hwsim: {parts.backend.param_space(network).size:,} trainable parameters ({network.dense_params:,} "
              f"dense), backend {parts.backend.name}, estimator {cfg.estimator.name}, {n_steps} steps of batch "
              f"{cfg.train.batch_size} ({per_epoch} per epoch)\n" + network.describe())
    return task, parts, header


def run_config(run_dir: Path, overrides: list[str], kind: type = Config):
    """The config.yaml of the run in ``run_dir`` (a :class:`Config` or ``kind``), changed by ``overrides``."""
    if not (Path(run_dir) / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} has no config.yaml: give a run directory written by `hwsim train` or `hwsim pinn`")
    return load_config(str(Path(run_dir) / "config.yaml"), list(overrides), kind)


@torch.no_grad()
def deploy(run_dir: Path, cfg, network, measure: Callable) -> dict:
    """The run's params.pt ("theta", the float weights (size,); a run not finished yet: its newest checkpoint)
    on ``network`` bound to the backend of ``cfg`` (hwsim.build); ``measure(backend, theta)`` returns the
    figures (a dict) and the number of inferences it ran. The result: the run, the figures, the backend and
    its options, its counters and the energy and latency per inference (hwsim energy model)."""
    backend = build_backend(cfg.backend, network, cfg.architecture)
    mapping, table = build_mapping(cfg.architecture, network, backend), load_table(cfg.energy, kind=backend.architecture)
    theta = backend.encode(backend.to_backend(initial_params(str(run_dir), network, "eval")))
    before = backend.counters()
    figures, inferences = measure(backend, theta)
    spent = subtract(backend.counters(), before)
    result = {"run": str(run_dir), **figures, "backend": backend.name,
              "backend_options": dict(cfg.backend.options), "counters": backend.counters(), "inferences": inferences,
              "mapping": mapping.report()}
    if not (Path(run_dir) / "params.pt").is_file():     # a run not finished: deployed from its newest checkpoint
        result["partial"] = f"its newest checkpoint, {read_params(run_dir)[1].name}"
    est = backend.architecture.cost(mapping, spent, table)
    result.update(energy_j_per_inference=est.joules / inferences, latency_s_per_inference=est.latency_s / inferences,
                  energy_breakdown_per_inference={k: v / inferences for k, v in est.by_component().items()})
    return result


def evaluate(run_dir: Path, overrides: list[str] = ()) -> dict:
    """Deploy a classification run on a backend (:func:`deploy`): the test accuracy of its params.pt with its
    config.yaml changed by ``overrides`` (``backend.name=...`` and the backend's options)."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir, overrides)
    d = cfg.data
    data = load_dataset(d.name, d.path, d.val_size, d.train_limit, d.test_limit)
    network = build_network(cfg.model)

    def test_accuracy(backend, theta: torch.Tensor) -> tuple[dict, int]:
        x = torch.from_numpy(data.test.x).to(backend.device, backend.data_dtype)
        y = torch.from_numpy(data.test.y).to(backend.device)
        return {"test_accuracy": accuracy(network, backend, theta, x, y, cfg.train.eval_batch_size)}, len(y)

    return deploy(run_dir, cfg, network, test_accuracy)
