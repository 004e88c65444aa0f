"""The host-side training loop: mini-batches, ZO (or FO) gradients, a torch.optim step, evaluation.

Writes a run directory: config.yaml (resolved), metrics.jsonl (one line per evaluation), metrics.json
(final summary), params.pt (trained parameters) and curves.png.
"""
from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from hwsim.build import (build_backend, build_estimator, build_network, build_optimizer, perturbation_warnings,
                         steps_per_epoch, total_steps)
from hwsim.config import Config, ConfigError, load_config
from hwsim.data import load_dataset
from hwsim.model import Network, cross_entropy
from hwsim.objective import BatchObjective
from hwsim.report import plot_curves, write_atomic, write_json, write_jsonl, write_yaml


@torch.no_grad()
def accuracy(network: Network, backend, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
             batch_size: int) -> float:
    """Fraction of rows of x (N, in) whose argmax output equals y (N,)."""
    tensors = backend.param_space(network).unflatten(theta)
    correct = 0
    for s in range(0, len(y), batch_size):
        out = network.forward(backend, tensors, x[s:s + batch_size])
        correct += int((out.argmax(-1) == y[s:s + batch_size]).sum())
    return correct / max(1, len(y))


def save_params(path: Path, network: Network, backend, theta: torch.Tensor) -> None:
    """params.pt, written atomically: "theta", the float weights the trained parameters stand for, and
    "tensors", the same by name (CPU, float64; any backend can load them); "backend" and
    "backend_theta", the parameters as that backend holds them (e.g. integer codes)."""
    buffer = io.BytesIO()
    raw = theta.detach().to("cpu", torch.float64)
    flat = backend.decode(theta.detach()).to("cpu", torch.float64)
    torch.save({"theta": flat, "tensors": network.space.unflatten(flat), "backend": backend.name,
                "backend_theta": raw}, buffer)
    write_atomic(path, buffer.getvalue())


def initial_params(path: str, network) -> torch.Tensor:
    """The decoded float weights ("theta", (size,)) of a run's params.pt, to fine-tune from."""
    file = Path(path)
    if file.is_dir():
        file = file / "params.pt"
    if not file.is_file():
        raise ConfigError(f"train.init: {path!r} is neither a params.pt file nor a run directory with one")
    theta = torch.load(file, map_location="cpu", weights_only=True)["theta"]
    if theta.shape != (network.space.size,):
        raise ConfigError(f"train.init: {file} holds {theta.numel()} parameters, the model has {network.space.size}")
    return theta.to(torch.float64)


def train(cfg: Config, out_dir: Path | None = None, progress: bool = True,
          log: Callable[[str], None] = print) -> dict:
    """Run one experiment; returns the final metrics (also written to ``out_dir`` when given)."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    d = cfg.data
    data = load_dataset(d.name, d.path, d.val_size, d.train_limit, d.test_limit)
    network = build_network(cfg.model)
    if network.in_features != data.train.x.shape[1] or network.out_features != data.num_classes:
        raise ConfigError(f"model.layers: the network maps {network.in_features} -> {network.out_features}, "
                          f"the data needs {data.train.x.shape[1]} -> {data.num_classes}")
    backend = build_backend(cfg.backend, network)
    estimator = build_estimator(cfg.estimator, backend.param_space(network), backend)
    warnings = perturbation_warnings(cfg.estimator, backend) if estimator is not None else []
    per_epoch = steps_per_epoch(len(data.train), cfg.train.batch_size)
    n_steps = total_steps(cfg.train.steps, cfg.train.epochs, per_epoch)

    start = initial_params(cfg.train.init, network) if cfg.train.init else network.init_params(gen)
    theta = torch.nn.Parameter(backend.encode(backend.to_backend(start)))
    optimizer, scheduler = build_optimizer(cfg.optimizer, [theta], n_steps)
    to_dev = lambda a, labels=False: torch.from_numpy(a).to(  # noqa: E731
        backend.device, None if labels else backend.data_dtype)
    xtr, ytr = to_dev(data.train.x), to_dev(data.train.y, True)
    xva, yva = to_dev(data.val.x), to_dev(data.val.y, True)
    xte, yte = to_dev(data.test.x), to_dev(data.test.y, True)

    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(out_dir / "config.yaml", cfg.to_dict())
    log(f"hwsim: {backend.param_space(network).size:,} trainable parameters ({network.dense_params:,} dense), "
        f"backend {backend.name}, estimator {cfg.estimator.name}, {n_steps} steps of batch "
        f"{cfg.train.batch_size} ({per_epoch} per epoch)\n" + network.describe())
    for message in warnings:
        log(f"hwsim: warning: {message}")

    records: list[dict] = []
    queries, loss_sum, loss_n = 0, 0.0, 0
    differences, zeros, zero_warned = 0, 0, False
    bar = tqdm(total=n_steps, disable=not progress, mininterval=1.0, unit="step", dynamic_ncols=True)
    perm = torch.randperm(len(ytr), generator=gen)
    for step in range(n_steps):
        epoch, pos = divmod(step, per_epoch)
        if pos == 0 and step > 0:
            perm = torch.randperm(len(ytr), generator=gen)
        idx = perm[pos * cfg.train.batch_size:(pos + 1) * cfg.train.batch_size].to(backend.device)
        x, y = xtr[idx], ytr[idx]
        optimizer.zero_grad(set_to_none=True)
        if estimator is None:
            loss = cross_entropy(network.forward(backend, backend.param_space(network).unflatten(theta), x), y)
            loss.backward()
            queries, loss_value = queries + 1, float(loss.detach())
        else:
            estimator.observe(epoch)
            est = estimator.estimate(BatchObjective(network, backend, x, y, cfg.estimator.chunk_elements),
                                     theta.detach(), gen)
            theta.grad = est.grad
            queries, loss_value = queries + est.queries, est.loss
            differences, zeros = differences + est.differences, zeros + est.zero_differences
        optimizer.step()
        scheduler.step()
        backend.project_(theta.data, gen)
        backend.advance()
        loss_sum, loss_n = loss_sum + loss_value, loss_n + 1
        bar.update(1)
        if (step + 1) % cfg.train.eval_every == 0 or step + 1 == n_steps:
            val_acc = accuracy(network, backend, theta.detach(), xva, yva, cfg.train.eval_batch_size)
            test_acc = accuracy(network, backend, theta.detach(), xte, yte, cfg.train.eval_batch_size)
            if estimator is not None:
                estimator.observe(epoch, val_acc)
            records.append({"step": step + 1, "epoch": round((step + 1) / per_epoch, 4),
                            "train_loss": loss_sum / loss_n, "val_accuracy": val_acc,
                            "test_accuracy": test_acc, "forward_queries": queries,
                            "phase": getattr(estimator, "phase", "fo"),
                            "zero_difference_fraction": round(zeros / differences, 4) if differences else 0.0,
                            "wall_s": round(time.perf_counter() - t0, 3)})
            if differences and zeros > differences / 2 and not zero_warned:
                zero_warned = True
                message = (f"{100 * zeros / differences:.0f} % of the loss differences since the last evaluation "
                           f"were exactly zero: the perturbations are too small for backend {backend.name!r}")
                warnings.append(message)
                (bar.write if progress else log)(f"hwsim: warning: {message}")
            loss_sum, loss_n, differences, zeros = 0.0, 0, 0, 0
            bar.set_postfix(loss=f"{records[-1]['train_loss']:.3f}", test_acc=f"{test_acc:.4f}",
                            queries=f"{queries:.3g}", refresh=False)
            if out_dir is not None:
                write_jsonl(out_dir / "metrics.jsonl", records)
    bar.close()

    final = records[-1]
    metrics = {
        "test_accuracy": final["test_accuracy"], "best_test_accuracy": max(r["test_accuracy"] for r in records),
        "val_accuracy": final["val_accuracy"], "steps": n_steps, "epochs": final["epoch"],
        "forward_queries": queries, "trainable_params": network.trainable_params,
        "dense_params": network.dense_params, "wall_s": round(time.perf_counter() - t0, 3),
        "backend": backend.name, "estimator": cfg.estimator.name, "seed": cfg.seed,
        "counters": backend.counters(), "warnings": warnings,
    }
    if out_dir is not None:
        save_params(out_dir / "params.pt", network, backend, theta.detach())
        write_json(out_dir / "metrics.json", metrics)
        plot_curves(records, out_dir / "curves.png",
                    f"{cfg.estimator.name} on {backend.name}: {network.trainable_params:,} params, "
                    f"test acc {100 * final['test_accuracy']:.2f} %")
    log(f"hwsim: test accuracy {100 * metrics['test_accuracy']:.2f} % (best {100 * metrics['best_test_accuracy']:.2f} %), "
        f"{queries:,} forward queries, {metrics['wall_s']:.1f} s" + (f"; results in {out_dir}" if out_dir else ""))
    return metrics


@torch.no_grad()
def evaluate(run_dir: Path, overrides: list[str] = ()) -> dict:
    """Deploy a finished run on a backend: test accuracy of its params.pt ("theta", the float weights)
    with its config.yaml changed by ``overrides`` (e.g. ``backend.name=fixed``, ``backend.bits=6``)."""
    run_dir = Path(run_dir)
    for name in ("config.yaml", "params.pt"):
        if not (run_dir / name).is_file():
            raise ConfigError(f"{run_dir} has no {name}: give a run directory written by `hwsim train`")
    cfg = load_config(str(run_dir / "config.yaml"), list(overrides))
    d = cfg.data
    data = load_dataset(d.name, d.path, d.val_size, d.train_limit, d.test_limit)
    network = build_network(cfg.model)
    backend = build_backend(cfg.backend, network)
    theta = backend.encode(backend.to_backend(torch.load(run_dir / "params.pt")["theta"]))
    x = torch.from_numpy(data.test.x).to(backend.device, backend.data_dtype)
    y = torch.from_numpy(data.test.y).to(backend.device)
    acc = accuracy(network, backend, theta, x, y, cfg.train.eval_batch_size)
    return {"run": str(run_dir), "test_accuracy": acc, "backend": backend.name,
            "backend_options": dict(cfg.backend.options), "counters": backend.counters()}
