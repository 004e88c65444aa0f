"""YAML experiment configs validated into typed dataclasses, with errors that name the key path.

Sections: seed, data, model, backend, architecture, estimator, optimizer, train, energy. Unknown keys and bad values are
rejected (``ConfigError("estimator.rge.mu: expected a number > 0, got -1")``). ``--set a.b=value``
overrides are applied to the raw YAML before validation; values are parsed as YAML scalars.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal, Optional, Union

import yaml

from hwsim import yaml12
from hwsim.backends.base import DEFAULT_BACKEND
from hwsim.errors import ConfigError
from hwsim.schema import from_dict
from hwsim.text import excerpt





# The most optimizer steps a run may take: 10^9 steps are decades at the fastest step hwsim measures
# (~0.05 s), so more is a typo; refused before anything is allocated.
MAX_STEPS = 10 ** 9


def _positive(path: str, value, strict: bool = True) -> None:
    if value is not None and (value <= 0 if strict else value < 0):
        raise ConfigError(f"{path}: expected a number {'>' if strict else '>='} 0, got {value}")


def check_steps(path: str, steps: int) -> None:
    """Refuse a run of more than MAX_STEPS optimizer steps (``path``: the key that set them)."""
    if steps > MAX_STEPS:
        raise ConfigError(f"{path}: {steps:,} steps is not allowed; use at most {MAX_STEPS:,} steps")


@dataclass
class DataConfig:
    name: Literal["mnist", "fashion_mnist", "idx"] = "mnist"
    path: Optional[str] = None
    val_size: int = 5000
    train_limit: Optional[int] = None
    test_limit: Optional[int] = None        # evaluate on the first N test images (slow backends)

    def check(self, p: str) -> None:
        _positive(f"{p}.val_size", self.val_size, strict=False)
        _positive(f"{p}.train_limit", self.train_limit)
        _positive(f"{p}.test_limit", self.test_limit)


@dataclass
class LayerConfig:
    type: Literal["tt_linear", "linear", "relu", "tanh", "sin"]
    in_features: Optional[int] = None
    out_features: Optional[int] = None
    bias: bool = True
    rank: Union[int, list[int], None] = None
    in_factors: Optional[list[int]] = None
    out_factors: Optional[list[int]] = None
    num_cores: Optional[int] = None

    def check(self, p: str) -> None:
        linear = self.type in ("tt_linear", "linear")
        for key in ("in_features", "out_features"):
            if linear and getattr(self, key) is None:
                raise ConfigError(f"{p}.{key}: required for a {self.type} layer")
        tt_keys = ("rank", "in_factors", "out_factors", "num_cores")
        if self.type != "tt_linear":
            extra = [k for k in tt_keys if getattr(self, k) is not None]
            if extra:
                raise ConfigError(f"{p}.{extra[0]}: only tt_linear layers take TT settings")
        if not linear and (self.in_features is not None or self.out_features is not None):
            raise ConfigError(f"{p}: an activation layer takes no sizes")
        if self.type == "tt_linear" and self.rank is None:
            raise ConfigError(f"{p}.rank: required for a tt_linear layer (an int or the K-1 internal ranks)")


@dataclass
class ModelConfig:
    layers: list[LayerConfig] = field(default_factory=list)
    init_gain: float = 2 ** 0.5

    def check(self, p: str) -> None:
        if not self.layers:
            raise ConfigError(f"{p}.layers: at least one layer is required")
        _positive(f"{p}.init_gain", self.init_gain)


@dataclass
class RGEConfig:
    num_queries: int = 10
    mu: float = 0.01
    distribution: Literal["rademacher", "gaussian", "sphere"] = "rademacher"
    form: Literal["forward", "antithetic"] = "forward"
    per_tensor: bool = False
    sign: bool = False

    def check(self, p: str) -> None:
        _positive(f"{p}.num_queries", self.num_queries)
        _positive(f"{p}.mu", self.mu)


@dataclass
class CGEConfig:
    mu: float = 0.01
    form: Literal["forward", "central"] = "forward"
    subset: float = 1.0

    def check(self, p: str) -> None:
        _positive(f"{p}.mu", self.mu)
        if not 0 < self.subset <= 1:
            raise ConfigError(f"{p}.subset: expected a probability in (0, 1], got {self.subset}")


@dataclass
class EstimatorConfig:
    name: Literal["rge", "cge", "hybrid", "fo"] = "rge"
    rge: RGEConfig = field(default_factory=RGEConfig)
    cge: CGEConfig = field(default_factory=CGEConfig)
    switch_epoch: Optional[int] = None
    patience: Optional[int] = None
    chunk_elements: Optional[int] = None     # null: the backend device's default (hwsim.objective.chunk_elements)
    cache_prefix: bool = False       # noisy backends: reuse the layers before the first perturbed tensor
    cuda_graphs: bool = True         # replay RGE steps from a CUDA graph where the step allows it (hwsim.graphs)

    def check(self, p: str) -> None:
        if self.name == "hybrid" and self.switch_epoch is None and self.patience is None:
            raise ConfigError(f"{p}.switch_epoch: hybrid needs switch_epoch or patience (or both)")
        _positive(f"{p}.switch_epoch", self.switch_epoch, strict=False)
        _positive(f"{p}.patience", self.patience)
        _positive(f"{p}.chunk_elements", self.chunk_elements)


@dataclass
class ScheduleConfig:
    name: Literal["constant", "step", "exponential", "cosine"] = "constant"
    step_size: int = 1000
    gamma: float = 0.5
    min_lr: float = 0.0

    def check(self, p: str) -> None:
        _positive(f"{p}.step_size", self.step_size)
        _positive(f"{p}.gamma", self.gamma)
        _positive(f"{p}.min_lr", self.min_lr, strict=False)


@dataclass
class OptimizerConfig:
    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def check(self, p: str) -> None:
        _positive(f"{p}.lr", self.lr)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{p}.betas: expected two numbers in [0, 1), got {self.betas}")
        _positive(f"{p}.momentum", self.momentum, strict=False)
        _positive(f"{p}.weight_decay", self.weight_decay, strict=False)


@dataclass
class CheckpointConfig:
    """When a run saves its whole state (hwsim.checkpoint): every ``every_steps`` steps and/or when
    ``every_s`` seconds have passed since the last save, always at the end; the newest ``keep`` stay."""

    every_steps: Optional[int] = None
    every_s: Optional[float] = 120.0
    keep: int = 3

    def check(self, p: str) -> None:
        _positive(f"{p}.every_steps", self.every_steps)
        _positive(f"{p}.every_s", self.every_s)
        _positive(f"{p}.keep", self.keep)


@dataclass
class TrainConfig:
    steps: Optional[int] = None
    epochs: Optional[int] = None
    batch_size: int = 256
    eval_every: int = 200
    eval_batch_size: int = 2000
    init: Optional[str] = None     # fine-tune: start from a run's params.pt (its decoded float weights)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def check(self, p: str) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise ConfigError(f"{p}.steps: give exactly one of {p}.steps and {p}.epochs")
        for key in ("steps", "epochs", "batch_size", "eval_every", "eval_batch_size"):
            _positive(f"{p}.{key}", getattr(self, key))
        if self.steps is not None:
            check_steps(f"{p}.steps", self.steps)        # epochs: checked once the epoch length is known


@dataclass
class BackendConfig:
    """``name`` plus the backend's own options (validated by that backend's Options dataclass)."""

    name: str = DEFAULT_BACKEND
    options: dict = field(default_factory=dict)

    @classmethod
    def prepare(cls, raw: dict) -> dict:
        """``backend: {name: ..., <option>: ...}`` -> name and options."""
        return {"name": raw.get("name", DEFAULT_BACKEND), "options": {k: v for k, v in raw.items() if k != "name"}}


@dataclass
class RunConfig:
    """The sections every run has; :class:`Config` adds data and train, :class:`PinnConfig` pde and train."""

    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    architecture: dict = field(default_factory=dict)   # keys of the backend's architecture (hwsim.arch)
    energy: dict = field(default_factory=dict)   # device-table overrides by entry name (hwsim.energy)

    def to_dict(self) -> dict:
        raw = dataclasses.asdict(self)
        raw["backend"] = {"name": self.backend.name, **self.backend.options}
        order = ("seed", "data", "pde", "model", "backend", "architecture", "estimator", "optimizer", "train", "energy")
        return {key: raw[key] for key in order if key in raw}


@dataclass
class Config(RunConfig):
    """A training run (``hwsim train``)."""

    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class DerivativesConfig:
    """How the PDE's derivatives of u are estimated (hwsim.pinn.derivatives)."""

    method: Literal["stein_grid", "stein_mc", "fd", "autodiff"] = "stein_grid"
    sigma: float = 0.1          # Gaussian smoothing scale of the Stein estimators
    level: int = 3              # Smolyak level of stein_grid
    samples: int = 1024         # stein_mc: antithetic pairs per step
    h: float = 0.1              # fd step

    def check(self, p: str) -> None:
        for key in ("sigma", "level", "samples", "h"):
            _positive(f"{p}.{key}", getattr(self, key))


@dataclass
class PdeConfig:
    problem: Literal["hjb", "heat"] = "hjb"
    dim: int = 20               # spatial dimensions; the network sees dim + 1 inputs (x, t)
    points: int = 100           # collocation points per step, redrawn every step
    test_points: int = 10000    # uniform test points, the same every evaluation (drawn from seed + 1)
    derivatives: DerivativesConfig = field(default_factory=DerivativesConfig)

    def check(self, p: str) -> None:
        for key in ("dim", "points", "test_points"):
            _positive(f"{p}.{key}", getattr(self, key))


@dataclass
class PinnTrainConfig:
    steps: int = 1000
    eval_every: int = 100
    eval_batch_size: int = 10000
    smoothed_points: int = 1000  # at the end, the error of the smoothed model u_s (Stein methods) on
                                 # the first N test points (N x grid size evaluations; 0 = skip)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def check(self, p: str) -> None:
        for key in ("steps", "eval_every", "eval_batch_size"):
            _positive(f"{p}.{key}", getattr(self, key))
        check_steps(f"{p}.steps", self.steps)
        _positive(f"{p}.smoothed_points", self.smoothed_points, strict=False)


@dataclass
class PinnConfig(RunConfig):
    """A physics-informed run (``hwsim pinn``): the model is N(x, t) of the problem's ansatz."""

    pde: PdeConfig = field(default_factory=PdeConfig)
    train: PinnTrainConfig = field(default_factory=PinnTrainConfig)


def apply_override(raw: dict, assignment: str) -> None:
    """Apply ``"a.b.c=value"`` to the raw mapping (value parsed as YAML; list items by index).

    Setting ``backend.name`` to another backend drops the previous backend's options."""
    if "=" not in assignment:
        raise ConfigError(f"--set {excerpt(assignment)}: expected key.path=value")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {excerpt(assignment)}: {excerpt(key.strip())} is not a key path; use names joined by dots, "
                          f"e.g. train.steps=200")
    node = raw
    for i, part in enumerate(parts[:-1]):
        step = int(part) if isinstance(node, list) and part.isdigit() else part
        try:
            nxt = node[step]
        except (KeyError, IndexError, TypeError):
            if isinstance(node, dict):
                nxt = node[step] = {}
            else:
                raise ConfigError(f"--set {key}: {'.'.join(parts[:i + 1])} does not exist") from None
        node = nxt
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {key}: {excerpt(last)} is not an index of that list")
        node[int(last)] = _scalar(key, text)
    elif isinstance(node, dict):
        value = _scalar(key, text)
        if parts == ["backend", "name"] and node.get("name") != value:
            node.clear()              # another backend: the old one's options do not apply to it
        node[last] = value
    else:
        raise ConfigError(f"--set {key}: {'.'.join(parts[:-1])} is not a mapping")


def _scalar(key: str, text: str):
    """The YAML value of ``--set key=text``; a syntax error names the key."""
    try:
        return yaml12.load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: {excerpt(text)} is not a valid YAML value ({_problem(e)})") from None


def _problem(e: yaml.YAMLError) -> str:
    """What a YAML error found, on one line (a reader error's reason, a parser error's problem)."""
    return getattr(e, "problem", None) or getattr(e, "reason", None) or " ".join(str(e).split())


def shipped_configs() -> list[str]:
    """Names of the experiment configs shipped inside the package (hwsim/configs/*.yaml)."""
    return sorted(p.name[:-5] for p in resources.files("hwsim.configs").iterdir() if p.name.endswith(".yaml"))


def read_raw(source: str) -> dict:
    """Raw mapping from a YAML file path or a shipped config name (e.g. ``mnist_tt_zo``)."""
    path = Path(source)
    if path.is_dir():
        raise ConfigError(f"config {excerpt(source)}: is a directory; give a YAML file or a shipped config name")
    if path.is_file():
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config {excerpt(source)}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    else:
        shipped = resources.files("hwsim.configs") / f"{source}.yaml"
        if not shipped.is_file():
            raise ConfigError(f"config {excerpt(source)}: no such file and no shipped config of that name; "
                              f"shipped: {', '.join(shipped_configs())}")
        text = shipped.read_text()
    try:
        raw = yaml12.load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"config {excerpt(source)}: not valid YAML{where} ({_problem(e)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {excerpt(source)}: the YAML must be a mapping of sections")
    return raw


def load_config(source: str, overrides: list[str] = (), kind: type = Config):
    """Read, override and validate a config: a training run (:class:`Config`, ``hwsim train``) or a
    PINN run (:class:`PinnConfig`, ``hwsim pinn``); a config of the other kind is named as such."""
    raw = read_raw(source)
    for assignment in overrides:
        apply_override(raw, assignment)
    if kind is Config and "pde" in raw:
        raise ConfigError(f"config {excerpt(source)} has a pde section: it is a PINN config; run it with `hwsim pinn`")
    if kind is PinnConfig and "data" in raw:
        raise ConfigError(f"config {excerpt(source)} has a data section: it is a training config; run it with `hwsim train`")
    return from_dict(kind, raw)
