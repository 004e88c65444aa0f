"""Turn validated config sections into the objects of a run: network, backend, estimator, optimizer."""
from __future__ import annotations

import math

import torch

from hwsim.arch.spec import map_network, resolve
from hwsim.backends import Backend, create_backend
from hwsim.config import BackendConfig, ConfigError, EstimatorConfig, ModelConfig, OptimizerConfig, check_steps
from hwsim.host_memory import require
from hwsim.model import Activation, Linear, Network, TTLinear
from hwsim.params import ParamSpace
from hwsim.tt import TTShape
from hwsim.zo import CGE, RGE, Hybrid


def build_network(cfg: ModelConfig) -> Network:
    layers = []
    for i, lc in enumerate(cfg.layers):
        where = f"model.layers[{i}]"
        try:
            if lc.type == "linear":
                layers.append(Linear(lc.in_features, lc.out_features, lc.bias))
            elif lc.type == "tt_linear":
                shape = TTShape.build(lc.in_features, lc.out_features, lc.rank, lc.in_factors,
                                      lc.out_factors, lc.num_cores)
                layers.append(TTLinear(lc.in_features, lc.out_features, lc.bias, shape))
            else:
                layers.append(Activation(lc.type))
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
    try:
        network = Network(layers, cfg.init_gain)
    except ValueError as e:
        raise ConfigError(f"model.layers: {e}") from None
    require("model.layers", network.trainable_params * 8 * 8,
            f"{network.trainable_params:,} parameters (float64, with copies, gradient and optimizer state)")
    return network


def build_backend(cfg: BackendConfig, network: Network, architecture: dict | None = None) -> Backend:
    """The configured backend on its architecture (the config's ``architecture:`` keys), bound to ``network``."""
    backend = create_backend(cfg.name, **cfg.options)
    backend.bind(network, resolve(backend, architecture))
    return backend


def build_mapping(architecture: dict, network: Network, backend: Backend):
    """The backend's architecture with the config's ``architecture:`` keys, and ``network`` mapped onto it
    (its architecture kind's mapping); a bad key is a ConfigError naming it."""
    return map_network(network, backend, resolve(backend, architecture))


def perturbation_warnings(cfg: EstimatorConfig, backend: Backend) -> list[str]:
    """The backend's warnings about the estimator's perturbation sizes (e.g. mu below one LSB)."""
    mus = {"rge": [("rge", cfg.rge.mu)], "cge": [("cge", cfg.cge.mu)],
           "hybrid": [("rge", cfg.rge.mu), ("cge", cfg.cge.mu)]}.get(cfg.name, [])
    found = [(key, backend.check_perturbation(mu)) for key, mu in mus]
    return [f"estimator.{key}.mu: {msg}" for key, msg in found if msg]


def build_estimator(cfg: EstimatorConfig, space: ParamSpace, backend: Backend):
    """The ZO estimator of ``cfg`` (None for ``fo``, which trains by autograd)."""
    if cfg.name == "fo":
        if not backend.capabilities.differentiable:
            raise ConfigError(f"estimator.name: 'fo' needs a differentiable backend; {backend.name!r} is not")
        return None
    r, c = cfg.rge, cfg.cge
    if cfg.name in ("rge", "hybrid"):
        require("estimator.rge.num_queries", 3 * r.num_queries * space.size * 8,        # a step's directions
                f"{r.num_queries:,} directions of {space.size:,} parameters (float64, a few copies)")
    rge = RGE(space, r.num_queries, r.mu, r.distribution, r.form, r.per_tensor, r.sign)
    cge = CGE(space, c.mu, c.form, c.subset)
    if cfg.name == "rge":
        return rge
    if cfg.name == "cge":
        return cge
    return Hybrid(rge, cge, cfg.switch_epoch, cfg.patience)


def build_optimizer(cfg: OptimizerConfig, params: list[torch.Tensor], total_steps: int):
    """A stock torch.optim optimizer and a per-step LR scheduler."""
    if cfg.name == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
        opt = cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    s = cfg.schedule
    if s.name == "constant":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    elif s.name == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=s.step_size, gamma=s.gamma)
    elif s.name == "exponential":
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=s.gamma ** (1.0 / s.step_size))
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps), eta_min=s.min_lr)
    return opt, sched


def steps_per_epoch(train_size: int, batch_size: int) -> int:
    """Mini-batches per epoch (the last partial batch is dropped so every step sees batch_size rows)."""
    if batch_size > train_size:
        raise ConfigError(f"train.batch_size: {batch_size} is larger than the {train_size} training examples")
    return train_size // batch_size


def total_steps(steps: int | None, epochs: int | None, per_epoch: int) -> int:
    if steps is not None:
        return steps
    total = int(math.ceil(epochs * per_epoch))
    check_steps("train.epochs", total)
    return total
