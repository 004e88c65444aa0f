"""Network description: TT-linear, linear and activation layers over one ParamSpace.

The network never computes a linear layer itself: it hands each one to a Backend. Tensor names in the
ParamSpace are ``"<layer index>.<name>"``, e.g. ``"0.core2"`` or ``"2.bias"``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import torch

from hwsim.params import ParamSpace
from hwsim.tt import TTShape

ACTIVATIONS = ("relu", "tanh", "sin")


@dataclass(frozen=True)
class Linear:
    """Dense y = x W^T + b with W (out, in)."""

    in_features: int
    out_features: int
    bias: bool = True

    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        shapes = [("weight", (self.out_features, self.in_features))]
        return shapes + ([("bias", (self.out_features,))] if self.bias else [])

    @property
    def dense_params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)

    def init(self, weight_std: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
        w = torch.randn(self.out_features, self.in_features, generator=generator, dtype=torch.float64)
        return {"weight": w * weight_std, **self._zero_bias()}

    def _zero_bias(self) -> dict[str, torch.Tensor]:
        return {"bias": torch.zeros(self.out_features, dtype=torch.float64)} if self.bias else {}


@dataclass(frozen=True)
class TTLinear(Linear):
    """y = x W^T + b with W (out, in) held as a TT matrix of shape ``tt`` (cores ``core0..coreK-1``)."""

    tt: TTShape = None  # type: ignore[assignment]

    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        shapes = [(f"core{k}", s) for k, s in enumerate(self.tt.core_shapes)]
        return shapes + ([("bias", (self.out_features,))] if self.bias else [])

    @property
    def core_names(self) -> list[str]:
        return [f"core{k}" for k in range(self.tt.num_cores)]

    def init(self, weight_std: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
        s = self.tt.init_std(weight_std)
        cores = {f"core{k}": torch.randn(shape, generator=generator, dtype=torch.float64) * s
                 for k, shape in enumerate(self.tt.core_shapes)}
        return {**cores, **self._zero_bias()}


@dataclass(frozen=True)
class Activation:
    kind: str

    def __post_init__(self):
        if self.kind not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.kind!r}")

    def param_shapes(self) -> list:
        return []


Layer = Union[Linear, TTLinear, Activation]


class Network:
    """A feed-forward stack of layers with all trainable tensors in one :class:`ParamSpace`."""

    def __init__(self, layers: Sequence[Layer], init_gain: float = math.sqrt(2.0)):
        self.layers = list(layers)
        self.init_gain = init_gain
        self.space = ParamSpace((f"{i}.{n}", s) for i, layer in enumerate(self.layers)
                                for n, s in layer.param_shapes())
        linears = [layer for layer in self.layers if isinstance(layer, Linear)]
        if not linears:
            raise ValueError("a network needs at least one linear layer")
        for a, b in zip(linears, linears[1:]):
            if a.out_features != b.in_features:
                raise ValueError(f"layer sizes do not chain: {a.out_features} outputs feed {b.in_features} inputs")
        self.in_features, self.out_features = linears[0].in_features, linears[-1].out_features
        self.dense_params = sum(layer.dense_params for layer in linears)
        self.linear_indices = [i for i, layer in enumerate(self.layers) if isinstance(layer, Linear)]

    @property
    def trainable_params(self) -> int:
        return self.space.size

    def init_params(self, generator: torch.Generator) -> torch.Tensor:
        """Initial flat parameters (float64, shape (size,)): weights N(0, (gain/sqrt(fan_in))^2), zero biases."""
        named = {}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Linear):
                std = self.init_gain / math.sqrt(layer.in_features)
                named.update({f"{i}.{n}": t for n, t in layer.init(std, generator).items()})
        return self.space.flatten(named)

    def forward(self, backend, tensors: Mapping[str, torch.Tensor], x: torch.Tensor,
                queries: int | None = None, batched: frozenset[str] | set[str] = frozenset(),
                start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Output of layers [start, stop) for inputs x (B, in) or (Q, B, in) through ``backend``.

        tensors: every ParamSpace name -> tensor; those named in ``batched`` carry a leading query
        axis Q=queries. Layers before the first batched tensor run once for all queries.
        Returns (Q, B, out) if anything is batched or x has a query axis, else (B, out).
        """
        h = x
        stop = len(self.layers) if stop is None else stop
        for i, layer in enumerate(self.layers[start:stop], start):
            if isinstance(layer, Activation):
                h = backend.activation(layer.kind, h)
                continue
            names = [n for n, _ in layer.param_shapes()]
            keys = [f"{i}.{n}" for n in names]
            if any(k in batched for k in keys):
                local = {n: tensors[k] if k in batched else tensors[k].expand(queries, *tensors[k].shape)
                         for n, k in zip(names, keys)}
                h = backend.linear(layer, local, h, queries)
            else:
                h = backend.linear(layer, {n: tensors[k] for n, k in zip(names, keys)}, h, None)
        return h

    def row_macs(self) -> list[int]:
        """Multiply-adds per input row of every layer (0 for activations; a TT layer's core-by-core
        contraction)."""
        return [layer.tt.direct_flops(1) if isinstance(layer, TTLinear) else
                layer.in_features * layer.out_features if isinstance(layer, Linear) else 0 for layer in self.layers]

    def layer_of(self, name: str) -> tuple[int, str]:
        """ParamSpace name "3.core1" -> (layer index 3, local name "core1")."""
        i, local = name.split(".", 1)
        return int(i), local

    def describe(self) -> str:
        """One line per layer, for logs and reports."""
        rows = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, TTLinear):
                t = layer.tt
                rows.append(f"{i}: tt_linear {layer.in_features}->{layer.out_features} in{t.in_factors} "
                            f"out{t.out_factors} ranks{t.ranks} bias={layer.bias}")
            elif isinstance(layer, Linear):
                rows.append(f"{i}: linear {layer.in_features}->{layer.out_features} bias={layer.bias}")
            else:
                rows.append(f"{i}: {layer.kind}")
        return "\n".join(rows)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the batch axis: logits (..., B, C), labels (B,) -> (...)."""
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, labels.expand(*logp.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    return -picked.mean(dim=-1)
