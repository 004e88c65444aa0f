"""The Backend seam: the protocol every simulated hardware implements, its record, and the registry.

Above the seam (model, ZO estimators, training loops, energy, reports) everything is hardware-agnostic;
below it each backend decides how a linear layer is really computed (float, integers, photonic meshes,
Verilog, a micro-controller's kernels).

A backend's record is its class's declaration: ``name``, ``summary``, ``Options`` (a dataclass of typed
fields, converted and checked like every config section: ``backend.<key>`` in messages), ``capabilities``
and ``architecture`` (the hwsim.arch.kind.ArchitectureKind its work is charged on: its keys, mapping,
cost model and device figures). The layers above know a backend only through it and the accessors
below. Backends register in the entry-point group ``hwsim.backends`` (pyproject.toml), hwsim's own as
any third party's: ``[project.entry-points."hwsim.backends"] mychip = "pkg.mod:MyBackend"``
(docs/architecture.md walks through one).
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, ClassVar, Literal

import torch

from hwsim.arch.engine import DIGITAL
from hwsim.arch.kind import ArchitectureKind
from hwsim.arch.workload import Widths, core_shapes
from hwsim.errors import ConfigError
from hwsim.schema import from_dict
from hwsim.text import excerpt

ENTRY_POINT_GROUP = "hwsim.backends"
DEFAULT_BACKEND = "ideal"           # a config without backend.name runs here


DeviceChoice = Literal["cpu", "cuda", "auto"]     # a backend's ``device`` option (see resolve_device)


def resolve_device(choice: str) -> torch.device:
    """The torch device of a backend's ``device`` option: cpu | cuda | auto (CUDA when torch sees one);
    'cuda' without a CUDA device is a ConfigError naming the key."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("backend.device: 'cuda' was asked for but torch sees no CUDA device; use 'cpu' or 'auto'")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


@dataclass(frozen=True)
class Capabilities:
    """What a backend guarantees; the layers above use it to decide which shortcuts are allowed.

    exact: the same parameters and inputs always give the same outputs (no noise), so evaluations
        may be shared or reused between queries.
    differentiable: outputs carry autograd graphs (needed for the first-order baseline only).
    multilinear: a TT layer's output is exactly linear in each core, so the effect of perturbing one
        core may be computed from the unperturbed layer (the CGE shortcut).
    chip_instances: fabricated instances differ (option ``chip_seed`` draws one): ``hwsim compare``
        evaluates several and reports their spread.
    devices: the torch device types the backend computes on; a backend with more than the CPU has an
        option ``device`` (cpu | cuda | auto) that :func:`resolve_device` turns into ``Backend.device``.
    replayable: a call is device work alone (no host work, no draws, no counts the device computes) and
        its event counts depend on shapes alone, so a recorded step may be replayed with the recorded
        counts added (CUDA graphs, hwsim.graphs).
    """

    exact: bool
    differentiable: bool
    multilinear: bool
    chip_instances: bool = False
    devices: tuple[str, ...] = ("cpu",)
    replayable: bool = False


class Backend(ABC):
    """Executes the linear layers (and activations) of a network for a batch of queries.

    Shapes: ``params`` maps tensor names of one layer to tensors; when ``queries`` is an int every
    tensor carries a leading query axis Q=queries, else none. ``x`` is (B, in) or (Q, B, in). The result
    is (Q, B, out) when either side has a query axis, else (B, out).
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""                            # one line for `hwsim info`
    capabilities: ClassVar[Capabilities]
    architecture: ClassVar[ArchitectureKind] = DIGITAL     # what the backend's work is charged on

    @dataclass
    class Options:
        """Backend-specific options: the keys allowed under ``backend:`` in a config besides ``name``."""

    def __init__(self, options: "Backend.Options | None" = None):
        self.options = options if options is not None else self.Options()
        self._device = resolve_device(getattr(self.options, "device", "cpu"))
        self._counters: Counter = Counter()
        self._pending: dict[str, torch.Tensor] = {}      # counts still on the device (see count)
        self._keys: tuple[int, torch.Tensor] | None = None      # (stream, query places) inside keyed()
        self._streams: dict[tuple[int, int], torch.Generator] = {}

    @property
    def device(self) -> torch.device:
        """Where the backend's tensors live (its ``device`` option; the CPU for a backend without one)."""
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def data_dtype(self) -> torch.dtype:
        """The dtype input data should arrive in."""
        return self.dtype

    def to_backend(self, t: torch.Tensor) -> torch.Tensor:
        """Move host data or parameters to this backend's device and dtype."""
        return t.to(device=self.device, dtype=self.dtype)

    def bind(self, network: Any, architecture: Any = None) -> None:
        """Prepare for ``network`` (a hwsim.model.Network) on ``architecture`` (hwsim.arch.spec; None: the
        shipped one) before any call; backends whose numerics depend on a layer's place (formats, the
        blocks of a mapping) set them up here."""

    def architecture_keys(self) -> dict[str, tuple[Any, str]]:
        """Architecture keys this backend's simulation itself sets: {key: (value, backend option)}."""
        return {}

    def layer_widths(self, index: int, layer: Any) -> "Widths":
        """Operand widths of linear layer ``index`` on the device (hwsim.arch.workload.Widths): float MACs at
        this backend's dtype unless a backend says otherwise."""
        bits = torch.finfo(self.dtype).bits
        return Widths(True, bits, bits, (bits,) * len(core_shapes(layer)), bits)

    def storage_bits(self) -> tuple[int, int]:
        """(parameter bits, activation bits) the device stores each value in (its memory figures,
        hwsim.energy.memory): the backend's dtype unless a backend says otherwise."""
        bits = torch.finfo(self.dtype).bits
        return bits, bits

    def memory_limit(self) -> int | None:
        """Bytes the device has for a training state (parameters, optimizer state, live activations);
        None: no limit simulated. A run whose BP-free training state needs more is refused."""
        return None

    def live_rows(self, rows: int) -> int:
        """Input rows whose activations the device holds at once when a pass has ``rows`` (its memory figures,
        hwsim.energy.memory): all of them unless the device streams a pass in smaller groups."""
        return rows

    def param_space(self, network: Any) -> Any:
        """The hwsim.params.ParamSpace of what this backend trains: the network's float weights unless the
        hardware trains something else of another shape (e.g. MZI phases). Its tensor names are the
        network's; :meth:`linear` receives each layer's tensors in this space."""
        return network.space

    def encode(self, theta: torch.Tensor) -> torch.Tensor:
        """Float weights (..., d) -> this backend's trainable parameters (identity unless the backend
        trains something else, e.g. integer codes)."""
        return theta

    def decode(self, theta: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode`: the float weights the parameters stand for."""
        return theta

    def project_(self, theta: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """After an optimizer step, bring theta (d,) back to what the hardware can hold (in place)."""

    def advance(self, steps: int = 1) -> None:
        """Simulated time passes by ``steps`` optimizer steps (hardware that drifts moves here)."""

    def check_perturbation(self, mu: float) -> str | None:
        """A warning when a ZO perturbation of size mu cannot register on this hardware, else None."""
        return None

    @abstractmethod
    def linear(self, layer: Any, params: dict[str, torch.Tensor], x: torch.Tensor,
               queries: int | None) -> torch.Tensor:
        """Evaluate one linear layer (``hwsim.model.Linear`` or ``TTLinear``); shapes in the class doc."""

    def coordinate_jvp(self, layer: Any, params: dict[str, torch.Tensor], x: torch.Tensor,
                       name: str) -> Callable[[torch.Tensor], "SparseDelta"]:
        """For ``capabilities.multilinear`` backends: the exact change of the layer output per unit step
        of coordinates of tensor ``name``. Returns f(idx (J,) flat indices into that tensor) -> SparseDelta
        with J rows. params carry no query axis; x is (B, in)."""
        raise NotImplementedError(f"backend {self.name!r} is not multilinear: it has no coordinate shortcut")

    def linear_input_delta(self, layer: Any, params: dict[str, torch.Tensor], delta: "SparseDelta") -> torch.Tensor:
        """For ``capabilities.multilinear`` backends: the exact change (J, B, out) of the layer output when
        its input (B, in) moves by ``delta`` (the layer is linear in its input)."""
        raise NotImplementedError(f"backend {self.name!r} is not multilinear: it has no coordinate shortcut")

    def activation(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        """Elementwise activation ``relu``, ``tanh`` or ``sin`` (host float by default)."""
        self.count(f"activation_{kind}", x.numel())
        return _ACTIVATIONS[kind](x)

    @contextmanager
    def keyed(self, stream: int, queries: torch.Tensor):
        """Within: the calls evaluate queries whose places in step ``stream`` are ``queries`` (Q,) (the
        query axis of the calls, in order), and a backend that draws noise per evaluation draws query q's
        from its own stream (:meth:`noise_stream`), so that it does not depend on which queries are
        evaluated together, in which process. Exact backends have nothing to draw."""
        saved = self._keys, self._streams
        self._keys, self._streams = (stream, queries), {}
        try:
            yield
        finally:
            self._keys, self._streams = saved

    def noise_stream(self, stream: int, query: int, part: int, seed: int = 0) -> torch.Generator:
        """The generator of (``stream``, ``query``, ``part``) inside :meth:`keyed`: made on first use from a
        hash of the four numbers (``seed``: the backend's own, e.g. its chip), then consumed in call order."""
        gen = self._streams.get((query, part))
        if gen is None:
            digest = hashlib.blake2b(f"{seed},{stream},{query},{part}".encode(), digest_size=8).digest()
            gen = self._streams[(query, part)] = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
        return gen

    def state_dict(self) -> dict:
        """What a checkpoint must hold to continue this backend exactly: its counters and (subclasses) all
        state that changes while a run goes on (drift, calibration, random generators). State that
        :meth:`bind` rebuilds from the options (formats, frozen chip variations) is not included."""
        return {"counters": self.counters()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` into a backend built and bound as the saved one was."""
        self._counters, self._pending = Counter(state["counters"]), {}

    def count(self, key: str, amount: "int | float | torch.Tensor" = 1) -> None:
        """Add ``amount`` to counter ``key`` (ints stay exact; a float amount makes a float counter). A
        tensor amount (an integer count the device computed, 0-dim) stays on the device until the
        counters are read: no host synchronisation per call on a GPU."""
        if isinstance(amount, torch.Tensor):
            self._pending[key] = self._pending[key] + amount if key in self._pending else amount
            return
        self._counters[key] += amount if isinstance(amount, float) else int(amount)

    def _settle(self) -> None:
        """Bring the counts still on the device into the counters (one host read per counter)."""
        for key, amount in self._pending.items():
            self._counters[key] += int(amount)
        self._pending.clear()

    def count_passes(self, rows: int, passes: int = 1) -> None:
        """``passes`` forward passes of ``rows`` input rows each through the whole network (a query's
        evaluation, or one batch of an evaluation): the workload the architecture's mapping charges
        (hwsim.arch.workload.Workload), counted by the callers above the seam, whatever the simulator shared."""
        self.count(f"passes_rows{rows}", passes)

    def count_programs(self, layers, times: int = 1) -> None:
        """The weights of linear ``layers`` (indices) are set on the device ``times`` times."""
        for i in layers:
            self.count(f"programs_layer{i}", times)

    @contextmanager
    def counted_apart(self):
        """Within: events are counted in a fresh Counter (yielded) and not in the backend's own; give them
        back with :meth:`add_counts` (hwsim.distributed adds every rank's share this way)."""
        self._settle()
        saved, self._counters = self._counters, Counter()
        try:
            yield self._counters
        finally:
            self._settle()
            self._counters = saved

    def add_counts(self, counts: dict) -> None:
        """Add event counts (name -> amount) to the backend's counters."""
        for key, amount in counts.items():
            self.count(key, amount)

    def counters(self) -> dict[str, int]:
        """What was executed since the last reset (MACs, calls, rows, ...)."""
        self._settle()
        return dict(self._counters)

    def reset_counters(self) -> None:
        self._counters.clear()
        self._pending.clear()


@dataclass
class SparseDelta:
    """J changes of a (B, F) activation, each touching T features: row q adds values[q, b, t] at feature
    index[q, t]. values (J, B, T); index (J, T) long."""

    values: torch.Tensor
    index: torch.Tensor

    def gather(self, full: torch.Tensor) -> torch.Tensor:
        """The touched entries of an unperturbed activation full (B, F), as (J, B, T)."""
        return full.T.contiguous()[self.index].transpose(1, 2)     # row gathers: faster than columns

    def scatter(self, full: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Dense (J, B, F) copies of full (B, F) with the touched entries replaced by values (J, B, T)."""
        out = full.unsqueeze(0).repeat(len(self.index), 1, 1)
        return out.scatter_(2, self.index.unsqueeze(1).expand(values.shape), values)


_ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "sin": torch.sin}


def _entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def backend_names() -> list[str]:
    """Names of all registered backends, sorted."""
    return sorted(_entry_points())


def backend_class(name: str) -> type[Backend]:
    """The Backend class (its record) registered as ``name``; an unknown name is a ConfigError listing the
    known ones."""
    known = _entry_points()
    if name not in known:
        raise ConfigError(f"backend.name: unknown backend {excerpt(name)}; known backends: {', '.join(sorted(known))}")
    module, _, attr = known[name].partition(":")
    obj = __import__(module, fromlist=[attr])
    return getattr(obj, attr)


def create_backend(name: str, **options: Any) -> Backend:
    """Instantiate backend ``name`` with its options (raw values of a config's ``backend:`` section,
    converted and checked by its Options schema: a ConfigError names the key)."""
    return backend_class(name)(from_dict(backend_class(name).Options, options, "backend"))
