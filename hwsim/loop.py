"""The one host-side training loop of every run (``hwsim train`` and ``hwsim pinn``).

A :class:`Task` supplies what differs between kinds of run (the data or collocation points of a step, the
evaluation metric, the summary and the plots); :func:`run_loop` owns the rest, once: the estimator (or
autograd), ``.grad``, the torch.optim step and schedule, the backend's projection and drift, counters,
warnings, evaluation cadence, hybrid switching on the task's score, progress, and durability:

- checkpoints (hwsim.checkpoint) of the whole state every ``train.checkpoint.every_steps`` steps or
  ``every_s`` seconds and at the end, atomically, the newest ``keep`` kept;
- ``resume=True`` continues from the newest checkpoint of ``out_dir``; the final metrics are then the same,
  bit for bit on CPU, as those of an uninterrupted run (wall time aside);
- SIGINT / SIGTERM finish the current step, write a checkpoint and raise :class:`RunStopped`; a second
  signal stops at once (KeyboardInterrupt);
- a non-finite loss, gradient or parameter raises :class:`NonFiniteError` before anything of that step is
  saved, so the last checkpoint stays the last good one.
"""
from __future__ import annotations

import math
import resource
import shutil
import signal
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from hwsim import checkpoint
from hwsim.arch.workload import Workload
from hwsim.arch.spec import describe
from hwsim.build import build_backend, build_estimator, build_mapping, build_optimizer, perturbation_warnings
from hwsim.config import ConfigError, RunConfig
from hwsim.errors import RunFailed
from hwsim.distributed import Ranks, ShardedObjective
from hwsim.energy.memory import device_memory
from hwsim.energy.report import run_figures, subtract
from hwsim.energy.table import load_table
from hwsim.graphs import step_estimate
from hwsim.progress import Progress
from hwsim.rundir import RunLock
from hwsim.report import plot_energy, write_atomic, write_json, write_jsonl, write_yaml
from hwsim.zo import Estimate

FORMAT_VERSION = 1
# config keys a resume (or a reused reference run) may change: they do not touch the numbers (the chunking:
# tests/test_objective.py, tests/test_pinn.py)
HARMLESS = ("train.checkpoint.", "energy.", "estimator.chunk_elements", "estimator.cuda_graphs")
EVAL_STREAM = -1                              # the noise stream of the step-0 evaluation (steps are >= 0)


class RunStopped(Exception):
    """A run stopped cleanly on a signal after writing a checkpoint; ``code`` is the exit status 128 + signal."""

    def __init__(self, message: str, signum: int, step: int, path: Path | None):
        super().__init__(message)
        self.code, self.step, self.path = 128 + signum, step, path




class NonFiniteError(RunFailed):
    """The loss, the gradient or the parameters became NaN or infinite at a step."""


class Task(ABC):
    """What one kind of run trains on. The loop calls, in this order per step: :meth:`objective` (which
    draws the step's batch from the run's generator), and every ``eval_every`` steps :meth:`evaluate`."""

    command: str            # the CLI command that runs (and resumes) this kind of run
    label: str              # prefix of log lines
    rows: int               # input rows of one forward pass of a training step (device memory)
    rows_key: str           # the config key that sets them

    @abstractmethod
    def epoch(self, step: int) -> int:
        """The epoch of 0-based ``step`` (the hybrid estimator's switch_epoch counts these)."""

    @abstractmethod
    def objective(self, step: int, generator: torch.Generator):
        """The objective (hwsim.objective.BatchObjective) of 0-based ``step``: its losses for the ZO
        estimators, its ``loss_at`` for autograd."""

    @abstractmethod
    def query_counts(self, queries: int) -> dict:
        """The record fields that count ``queries`` loss evaluations (forward queries)."""

    @abstractmethod
    def evaluate(self, step: int, theta: torch.Tensor) -> tuple[dict, float]:
        """(record fields, score) after ``step`` steps; the hybrid estimator's patience waits for a higher
        score (validation accuracy, or minus an error)."""

    @abstractmethod
    def postfix(self, record: dict) -> dict:
        """What the progress bar shows of a record."""

    @abstractmethod
    def summary(self, records: list[dict], theta: torch.Tensor, queries: int) -> dict:
        """The task's part of the final metrics."""

    @abstractmethod
    def final_line(self, metrics: dict) -> str:
        """The last log line of a finished run (without the prefix)."""

    def plots(self, out_dir: Path, records: list[dict], theta: torch.Tensor, metrics: dict) -> None:
        """Figures of a finished run, written into ``out_dir``."""

    def state_dict(self) -> dict:
        """The task's own state between steps (e.g. the epoch's data order)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""


@dataclass
class Parts:
    """The objects of a run built from its config, before the loop starts; ``start`` (d,) float weights."""

    cfg: RunConfig
    network: object
    backend: object
    estimator: object
    generator: torch.Generator
    start: torch.Tensor
    steps: int
    mapping: object = None           # the network mapped onto the backend's architecture (its kind's mapping)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Tally:
    """The loop's counters: queries so far, and the sums since the last evaluation."""

    queries: int = 0
    loss_sum: float = 0.0
    loss_n: int = 0
    differences: int = 0
    zeros: int = 0
    zero_warned: bool = False
    eval_counters: dict = field(default_factory=dict)     # backend counters spent evaluating, all evaluations
    last_eval: dict = field(default_factory=dict)         # ... in the last one


def build_parts(cfg: RunConfig, network, start: Callable[[torch.Generator], torch.Tensor],
                steps: int) -> Parts:
    """Seed the run, bind a backend to ``network`` and build its estimator, then draw the start weights
    ``start(generator)`` (in this order: the run's generator is shared by everything random after it)."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    backend = build_backend(cfg.backend, network, cfg.architecture)
    estimator = build_estimator(cfg.estimator, backend.param_space(network), backend)
    warnings = perturbation_warnings(cfg.estimator, backend) if estimator is not None else []
    load_table(cfg.energy, kind=backend.architecture)      # a bad energy override fails here, before the run
    mapping = build_mapping(cfg.architecture, network, backend)         # ... and a bad architecture key
    return Parts(cfg, network, backend, estimator, gen, start(gen), steps, mapping, warnings)


def run_loop(task: Task, parts: Parts, out_dir: Path | None = None, progress: bool = True,
             log: Callable[[str], None] = print, header: str = "", resume: bool = False,
             allow_changes: bool = False, ranks: Ranks | None = None) -> dict:
    """Train ``parts`` on ``task``; returns the final metrics (written to ``out_dir`` when given: config.yaml,
    metrics.jsonl, metrics.json, params.pt, checkpoints/ and the task's plots). ``ranks``: the processes
    sharing every step's queries (hwsim.distributed); only rank 0 writes and logs, holding the run
    directory's lock (hwsim.rundir) until it returns."""
    lock = RunLock()
    try:
        return _Run(task, parts, out_dir, progress, log, ranks or Ranks(), lock).run(header, resume, allow_changes)
    finally:
        lock.release()


class _Run:
    """One call of :func:`run_loop`: the state of a run between steps (the trained parameters ``theta``
    (d,) as the backend holds them, optimizer, schedule, counters, records, step) and the loop's jobs, one
    method each, in the order of :meth:`run`."""

    def __init__(self, task: Task, parts: Parts, out_dir: Path | None, progress: bool,
                 log: Callable[[str], None], ranks: Ranks, lock: RunLock):
        if not ranks.main:
            progress, log = False, (lambda line: None)
        self.task, self.parts, self.cfg, self.ranks, self.lock = task, parts, parts.cfg, ranks, lock
        self.backend, self.network, self.estimator, self.gen = parts.backend, parts.network, parts.estimator, parts.generator
        self.progress, self.log, self.out_dir = progress, log, out_dir
        self.space = self.backend.param_space(self.network)
        self.theta = torch.nn.Parameter(self.backend.encode(self.backend.to_backend(parts.start)))
        self.optimizer, self.scheduler = build_optimizer(self.cfg.optimizer, [self.theta], parts.steps)
        self.tally, self.records, self.warnings = _Tally(), [], list(parts.warnings)
        self.estimate = step_estimate(self.estimator, self.backend, self.cfg.estimator.cuda_graphs, ranks.world,
                                      self.warn) if self.estimator is not None else None
        self.step, self.elapsed = 0, 0.0
        self.last_path: Path | None = None          # the newest checkpoint written (or resumed from)
        self.writes = out_dir is not None and ranks.main
        self.t0 = self.saved_at = 0.0               # set by run(): its start (less a resumed run's elapsed
        self.first_step = 0                         # time), the last checkpoint's time, the step it began at
        self.shown: Progress | None = None

    def run(self, header: str, resume: bool, allow_changes: bool) -> dict:
        """The whole run: resume or set up the run directory, evaluate the untrained model, then steps with
        their evaluation and checkpoint cadences until the last step or a signal, and the final metrics."""
        if resume:
            self.resume(allow_changes)
        self.t0 = time.perf_counter() - self.elapsed
        self.first_step = self.step
        self.check_device_memory()
        self.set_up_run_dir(resume)
        if header:
            self.log(header)
        for message in self.parts.warnings if not resume else []:
            self.log(f"{self.task.label}: warning: {message}")
        self.shown = Progress(self.task.label, self.parts.steps, self.step, self.progress, self.log)
        if self.step == 0:                       # the untrained model: where the curves start
            self.evaluate_untrained()
        self.saved_at = time.perf_counter()
        with _StopSignals(self.task.label) as stop:
            while self.step < self.parts.steps:
                epoch = self.train_step()
                if self.step % self.cfg.train.eval_every == 0 or self.step == self.parts.steps:
                    self.evaluate(epoch)
                signum = self.ranks.first_set(stop.signum)        # a signal that reached any rank stops all
                self.checkpoint_if_due(signum)
                if signum is not None and self.step < self.parts.steps:
                    self.stop(signum)
        self.shown.close()
        return self.finish()

    def state(self) -> dict:
        """The whole state of the run (a checkpoint's payload, hwsim.checkpoint)."""
        raw = self.theta.detach().to("cpu", torch.float64)
        flat = self.backend.decode(self.theta.detach()).to("cpu", torch.float64)
        estimator = self.estimator
        return {"format": FORMAT_VERSION, "command": self.task.command, "step": self.step,
                "config": self.cfg.to_dict(), "theta": flat, "tensors": self.network.space.unflatten(flat),
                "backend": self.backend.name, "backend_theta": raw, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "estimator": estimator.state_dict() if estimator is not None else {},
                "rng": {"host": self.gen.get_state(), "torch": torch.get_rng_state()},
                "backend_state": self.backend.state_dict(), "task": self.task.state_dict(),
                "tally": vars(self.tally).copy(), "records": self.records, "warnings": self.warnings,
                "elapsed_s": time.perf_counter() - self.t0}

    def check_device_memory(self) -> None:
        """A backend whose device has a memory limit (Backend.memory_limit) refuses, in one line naming the
        sizes, a run whose BP-free training state (hwsim.energy.memory) does not fit."""
        limit = self.backend.memory_limit()
        if limit is None:
            return
        rows = self.backend.live_rows(self.task.rows)
        need = device_memory(self.network, self.backend, self.cfg.optimizer.name, self.cfg.optimizer.momentum, rows)
        if need["device_memory_bytes_zo"] > limit:
            part = need["device_memory_breakdown"]
            raise ConfigError(
                f"{self.task.rows_key}: training BP-free on the {self.backend.name} backend's device needs "
                f"{need['device_memory_bytes_zo']:,} B ({part['parameters']:,} B parameters, "
                f"{part['optimizer_state']:,} B optimizer state, {part['zo_live_activations']:,} B of live activations "
                f"for {rows:,} rows at once; back-propagation would need {need['device_memory_bytes_bp']:,} B); "
                f"the device holds {limit:,} B: use fewer rows at once or a smaller model")

    def resume(self, allow_changes: bool) -> None:
        """Restore the state of the newest checkpoint of the run directory (taking its lock on rank 0)."""
        task, out_dir = self.task, self.out_dir
        if out_dir is None:
            raise ConfigError("resume: needs the run directory (out_dir)")
        if self.ranks.main:
            self.lock.acquire(Path(out_dir))
        path = checkpoint.latest(out_dir)
        saved = checkpoint.load(path)
        _check_resumable(saved, path, task, self.cfg, allow_changes)
        _check_state_sizes(saved, path, self.theta, self.parts.steps)
        with torch.no_grad():
            self.theta.copy_(saved["backend_theta"].to(self.theta))
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.estimator is not None:
            self.estimator.load_state_dict(saved["estimator"])
        self.gen.set_state(saved["rng"]["host"])
        torch.set_rng_state(saved["rng"]["torch"])
        self.backend.load_state_dict(saved["backend_state"])
        task.load_state_dict(saved["task"])
        self.tally = _Tally(**saved["tally"])
        self.records, self.warnings = list(saved["records"]), list(saved["warnings"])
        self.step, self.elapsed = int(saved["step"]), float(saved["elapsed_s"])
        self.last_path = path
        self.log(f"{task.label}: resuming {out_dir} from {path.name} (step {self.step} of {self.parts.steps})")

    def set_up_run_dir(self, resume: bool) -> None:
        """A fresh run: create the run directory (config.yaml, the step-0 checkpoint); a resumed one: its
        metrics.jsonl cut back to the checkpoint's records. The other ranks wait for rank 0."""
        if self.out_dir is None:
            return
        self.out_dir = Path(self.out_dir)
        if resume:
            if self.writes:
                write_jsonl(self.out_dir / "metrics.jsonl", self.records)
        elif self.writes:
            self.last_path = _start_run_dir(self.out_dir, self.cfg, self.state, self.cfg.train.checkpoint.keep,
                                            self.lock)
        self.ranks.barrier()                     # the others wait until rank 0 has started the run directory

    def evaluate_untrained(self) -> None:
        """The record of step 0, evaluated with noise of its own (later draws stay as they were)."""
        with self.backend.keyed(EVAL_STREAM, torch.zeros(0, dtype=torch.int64)):
            fields, _ = _counted(self.tally, self.backend, lambda: self.task.evaluate(0, self.theta.detach()))
        self.records.append(self.record(None, fields, 0.0))
        self.show_and_write()

    def train_step(self) -> int:
        """One optimizer step (``step`` -> ``step`` + 1): the gradient of the step's objective, the optimizer
        and schedule, the backend's projection and drift, each guarded against non-finite values, and the
        tally; returns the step's epoch. The device is read twice a step: the estimate's scalars with the
        gradient's check, then the parameters' check."""
        step_started = time.perf_counter()
        epoch = self.task.epoch(self.step)
        queries, loss, differences, zeros, finite = self.gradient(epoch)
        backend, step, last = self.backend, self.step, self.last_path
        backend.count_programs(self.network.linear_indices)     # the step's new weights, set once
        _guard(step, self.space, loss, finite, self.theta.grad, "the gradient estimate", last)
        self.optimizer.step()
        self.scheduler.step()
        backend.project_(self.theta.data, self.gen)
        backend.advance()
        _guard(step, self.space, loss, bool(torch.isfinite(self.theta.data).all()), self.theta.data,
               "the parameters after the optimizer step", last)
        self.step += 1
        tally = self.tally
        tally.queries += queries
        tally.loss_sum, tally.loss_n = tally.loss_sum + loss, tally.loss_n + 1
        tally.differences, tally.zeros = tally.differences + differences, tally.zeros + zeros
        self.shown.step(self.step, time.perf_counter() - step_started, getattr(self.estimator, "phase", None))
        return epoch

    def gradient(self, epoch: int) -> tuple[int, float, int, int, bool]:
        """Set ``theta.grad`` (d,) for the step's objective (shared out over the ranks): autograd, or the
        estimator's estimate; returns (queries, loss, loss differences, zero differences, whether the
        gradient is finite)."""
        objective = self.task.objective(self.step, self.gen)
        if self.ranks.world > 1:
            objective = ShardedObjective(objective, self.ranks)
        objective.key_noise(self.step, self.cfg.estimator.cache_prefix)
        self.optimizer.zero_grad(set_to_none=True)
        if self.estimator is None:
            loss = objective.loss_at(self.theta)
            loss.backward()
            est = Estimate(self.theta.grad, 1, loss.detach())
        else:
            self.estimator.observe(epoch)
            est = self.estimate(objective, self.theta.detach(), self.gen)
            self.theta.grad = est.grad.to(self.theta.dtype)
        if isinstance(objective, ShardedObjective):
            objective.finish()
        loss, zeros, finite = est.read()
        return est.queries, loss, est.differences, zeros, finite

    def evaluate(self, epoch: int) -> None:
        """The record after ``step``: the task's evaluation (its score goes to the estimator), the mean loss
        and the fraction of zero loss differences since the last evaluation."""
        tally, step = self.tally, self.step
        fields, score = _counted(tally, self.backend, lambda: self.task.evaluate(step, self.theta.detach()))
        if self.estimator is not None:
            self.estimator.observe(epoch, score)
        d, z = tally.differences, tally.zeros
        self.records.append(self.record(tally.loss_sum / tally.loss_n, fields, round(z / d, 4) if d else 0.0))
        self.warn_zero_differences()
        tally.loss_sum, tally.loss_n, tally.differences, tally.zeros = 0.0, 0, 0, 0
        self.show_and_write()

    def record(self, loss: float | None, fields: dict, zero_fraction: float) -> dict:
        """The record of ``step``: the mean training loss since the last one, the task's ``fields``, the
        query counts so far, the estimator's phase, the fraction of zero loss differences, the wall time."""
        return {"step": self.step, "train_loss": loss, **fields, **self.task.query_counts(self.tally.queries),
                "phase": getattr(self.estimator, "phase", "fo"), "zero_difference_fraction": zero_fraction,
                "wall_s": round(time.perf_counter() - self.t0, 3)}

    def show_and_write(self) -> None:
        """Show the newest record and write metrics.jsonl (rank 0, with a run directory)."""
        self.shown.record(self.step, self.task.postfix(self.records[-1]))
        if self.writes:
            _writing(lambda: write_jsonl(self.out_dir / "metrics.jsonl", self.records), self.out_dir, self.last_path)

    def warn_zero_differences(self) -> None:
        """Warn once per run when more than half the loss differences since the last evaluation were zero."""
        tally = self.tally
        d, z = tally.differences, tally.zeros
        if d and z > d / 2 and not tally.zero_warned:
            tally.zero_warned = True
            message = (f"{100 * z / d:.0f} % of the loss differences since the last evaluation were "
                       f"exactly zero: the perturbations are too small for backend {self.backend.name!r}")
            self.warn(message)

    def warn(self, message: str) -> None:
        """Show ``message`` as a warning of the run and keep it in its metrics."""
        self.warnings.append(message)
        self.shown.write(f"{self.task.label}: warning: {message}")

    def checkpoint_if_due(self, signum: int | None) -> None:
        """Write a checkpoint (rank 0, with a run directory) after the last step, on a signal, and every
        ``train.checkpoint.every_steps`` steps or ``every_s`` seconds."""
        ck, step = self.cfg.train.checkpoint, self.step
        due = (step == self.parts.steps or signum is not None
               or (ck.every_steps is not None and step % ck.every_steps == 0)
               or (ck.every_s is not None and time.perf_counter() - self.saved_at >= ck.every_s))
        if self.writes and due:
            self.last_path = _writing(lambda: _save(self.out_dir, step, self.state(), ck.keep), self.out_dir,
                                      self.last_path)
            self.saved_at = time.perf_counter()

    def stop(self, signum: int) -> None:
        """Raise :class:`RunStopped` after a signal (the checkpoint is written), naming the resume command."""
        self.shown.close()
        name, out_dir, step = signal.Signals(signum).name, self.out_dir, self.step
        where = (f"checkpoint {self.last_path}; resume with: hwsim {self.task.command} --resume {out_dir}"
                 if out_dir is not None else "no run directory, nothing saved")
        raise RunStopped(f"{self.task.label}: stopped by {name} after step {step} of {self.parts.steps}; {where}",
                         signum, step, self.last_path)

    def finish(self) -> dict:
        """The final metrics (the task's summary, sizes, counters, energy, memory, wall time), written with
        params.pt, architecture.json, mapping.txt and the plots (rank 0, with a run directory); the last log
        line."""
        task, parts, backend, network, cfg, tally = self.task, self.parts, self.backend, self.network, self.cfg, self.tally
        ranks, out_dir = self.ranks, self.out_dir
        final = self.theta.detach()
        last_eval = dict(tally.last_eval)
        summary = _counted(tally, backend, lambda: task.summary(self.records, final, tally.queries))
        metrics = {**summary, "steps": parts.steps,
                   "trainable_params": network.trainable_params, "dense_params": network.dense_params,
                   "backend": backend.name, "estimator": cfg.estimator.name, "seed": cfg.seed, "ranks": ranks.world,
                   "exchanged_bytes_per_step": round(ranks.gathered_bytes / max(1, parts.steps - self.first_step))}
        counters = backend.counters()
        metrics.update(counters=counters, counters_evaluation=tally.eval_counters, counters_inference=last_eval,
                       inferences=Workload.from_counters(last_eval).rows, warnings=self.warnings)
        metrics.update(run_figures(parts.backend.architecture, parts.mapping, load_table(cfg.energy, kind=parts.backend.architecture), subtract(counters, tally.eval_counters),
                                   last_eval, parts.steps))
        metrics.update(device_memory(network, backend, cfg.optimizer.name, cfg.optimizer.momentum,
                                     backend.live_rows(task.rows)))
        metrics.update(wall_s=round(time.perf_counter() - self.t0, 3),
                       host_peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        if self.writes:
            write_atomic(out_dir / "params.pt", checkpoint.params_bytes(self.state()))
            write_json(out_dir / "metrics.json", metrics)
            write_json(out_dir / "architecture.json", describe(parts.backend, parts.mapping.arch))
            write_atomic(out_dir / "mapping.txt", parts.mapping.report() + "\n")
            task.plots(out_dir, self.records, final, metrics)
            if "energy_j_training" in metrics:
                plot_energy(metrics, out_dir / "energy.png", f"{task.command} on {backend.name}")
        self.log(f"{task.label}: {task.final_line(metrics)}, {metrics['wall_s']:.1f} s"
                 + (f"; results in {out_dir}" if out_dir is not None else ""))
        return metrics


def _counted(tally: _Tally, backend, evaluate: Callable):
    """``evaluate()``, with the backend counters it spends added to the tally's evaluation counters (so
    that training energy excludes them) and kept as the last evaluation's."""
    before = backend.counters()
    result = evaluate()
    tally.last_eval = subtract(backend.counters(), before)
    for key, value in tally.last_eval.items():
        tally.eval_counters[key] = tally.eval_counters.get(key, 0) + value
    return result


def _guard(step: int, space, loss: float, finite: bool, values: torch.Tensor, what: str, last: Path | None) -> None:
    """NonFiniteError naming the step and what went non-finite: the loss, or (``finite`` false) a tensor of
    ``values``."""
    if math.isfinite(loss) and finite:
        return
    if not math.isfinite(loss):
        found = f"the loss is {loss}"
    else:
        bad = ~torch.isfinite(values)
        names = [e.name for e in space.entries if bool(bad[e.slice].any())]
        found = f"{int(bad.sum())} non-finite entries in {what} (tensors {', '.join(names)})"
    keep = f"the last good checkpoint is {last}" if last is not None else "nothing was saved (no run directory)"
    raise NonFiniteError(f"step {step + 1}: {found}; the run is stopped and {keep} (a smaller optimizer.lr "
                         f"or estimator mu may help)")


def _start_run_dir(out_dir: Path, cfg: RunConfig, state: Callable[[], dict], keep: int, lock: RunLock) -> Path:
    """Create ``out_dir`` (and its parents), take its lock and write config.yaml and the step-0 checkpoint,
    so that an out dir that cannot be written fails here, before the first step; a failure leaves nothing
    behind (a directory another process holds is left as it is)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: is a file, not a directory")
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire(out_dir)
        data = checkpoint.encode(state())
        free = shutil.disk_usage(out_dir).free
        if free < 4 * len(data) * (keep + 1):
            raise OSError(28, f"only {free:,} bytes free, a checkpoint takes {len(data):,}")
        write_yaml(out_dir / "config.yaml", cfg.to_dict())
        path = checkpoint.checkpoint_path(out_dir, 0)
        path.parent.mkdir(exist_ok=True)
        write_atomic(path, data)
    except OSError as e:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise ConfigError(f"--out {out_dir}: cannot write the run directory ({e.strerror or e})") from None
    stale = [p for p in checkpoint.list_checkpoints(out_dir) if p != path]     # an earlier run's
    for old in stale + [out_dir / name for name in ("params.pt", "metrics.json", "metrics.jsonl")]:
        old.unlink(missing_ok=True)
    return path


def _writing(write: Callable, out_dir: Path, last: Path | None):
    """``write()``, with a full disk or a vanished run directory turned into RunFailed naming the last
    good checkpoint."""
    try:
        return write()
    except OSError as e:
        raise RunFailed(f"--out {out_dir}: cannot write {e.filename or 'a file'} ({e.strerror or e}); the run is "
                        f"stopped and the last good checkpoint is {last}") from None


def _save(out_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Write the checkpoint of ``step``, then delete all but the newest ``keep``."""
    path = checkpoint.checkpoint_path(out_dir, step)
    checkpoint.save(path, state)
    for old in checkpoint.list_checkpoints(out_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


STATE_KEYS = ("format", "command", "step", "config", "backend_theta", "optimizer", "scheduler", "estimator", "rng",
              "backend_state", "task", "tally", "records", "warnings", "elapsed_s")


def _check_resumable(saved: dict, path: Path, task: Task, cfg: RunConfig, allow_changes: bool) -> None:
    if not isinstance(saved, dict):
        raise checkpoint.CheckpointError(f"checkpoint {path}: holds a {type(saved).__name__}, not a run's state")
    missing = [k for k in STATE_KEYS if k not in saved]
    if missing:
        raise checkpoint.CheckpointError(f"checkpoint {path}: not a run's state (no {', '.join(missing[:4])})")
    if saved.get("format") != FORMAT_VERSION:
        raise checkpoint.CheckpointError(f"checkpoint {path}: format {saved.get('format')!r}, this hwsim reads "
                                         f"{FORMAT_VERSION}")
    if saved.get("command") != task.command:
        raise ConfigError(f"--resume: {path} is a checkpoint of `hwsim {saved.get('command')}`, "
                          f"not `hwsim {task.command}`")
    changed = numeric_changes(saved["config"], cfg.to_dict())
    if changed and not allow_changes:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changed[:5])
        raise ConfigError(f"--resume: the config differs from the checkpoint's in {len(changed)} key(s): {shown} "
                          f"(resume without changes, or allow them with --allow-changes)")


def _check_state_sizes(saved: dict, path: Path, theta: torch.Tensor, steps: int) -> None:
    """The saved parameters fit the model and the saved step lies within the run."""
    held = saved["backend_theta"]
    if not isinstance(held, torch.Tensor) or held.shape != theta.shape:
        size = held.numel() if isinstance(held, torch.Tensor) else type(held).__name__
        raise checkpoint.CheckpointError(f"checkpoint {path}: holds {size} parameters, the model has {theta.numel()}")
    step = saved["step"]
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= steps:
        raise checkpoint.CheckpointError(f"checkpoint {path}: step {str(step)[:40]} is outside the run's 0..{steps} steps")


def numeric_changes(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """:func:`config_changes` that can change a run's numbers (all but the HARMLESS keys)."""
    return [c for c in config_changes(old, new) if not c[0].startswith(HARMLESS)]


def config_changes(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, old value, new value) of every leaf where two config dicts differ."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b, where = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, where + ".")
        elif a != b:
            out.append((where, a, b))
    return out


class _StopSignals:
    """While active (main thread only): the first SIGINT / SIGTERM sets ``signum`` so the loop stops after
    the current step; a second one raises KeyboardInterrupt at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, label: str):
        self.label, self.signum, self._old = label, None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)
        return False

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{self.label}: {signal.Signals(signum).name}: finishing this step, then writing a checkpoint "
              f"(press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
