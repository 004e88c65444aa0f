"""ParamSpace: the map between one flat parameter vector and named tensors.

The optimizer and the ZO estimators see only the flat vector theta of length ``size``; the model and
the backends see named tensors. A leading query axis Q on the flat vector carries through.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch


@dataclass(frozen=True)
class ParamEntry:
    """One named tensor inside the flat vector: ``flat[offset:offset + numel]`` viewed as ``shape``."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.numel)


class ParamSpace:
    """Ordered named shapes laid out back to back in one flat vector."""

    def __init__(self, shapes: Iterable[tuple[str, tuple[int, ...]]]):
        self.entries: list[ParamEntry] = []
        offset = 0
        for name, shape in shapes:
            if any(e.name == name for e in self.entries):
                raise ValueError(f"duplicate parameter name {name!r}")
            self.entries.append(ParamEntry(name, tuple(shape), offset))
            offset += math.prod(shape)
        self.size = offset
        self.by_name = {e.name: e for e in self.entries}

    def __len__(self) -> int:
        return len(self.entries)

    def entry_at(self, offset: int) -> ParamEntry:
        """The entry holding flat position ``offset``."""
        for e in self.entries:
            if e.offset <= offset < e.offset + e.numel:
                return e
        raise IndexError(f"position {offset} is outside the {self.size} parameters")

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``flat`` (..., size) as named tensors (..., *shape)."""
        if flat.shape[-1] != self.size:
            raise ValueError(f"flat vector has {flat.shape[-1]} entries, the parameter space {self.size}")
        lead = flat.shape[:-1]
        return {e.name: flat[..., e.slice].reshape(*lead, *e.shape) for e in self.entries}

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`unflatten`: named tensors (..., *shape) -> (..., size)."""
        parts = []
        for e in self.entries:
            t = tensors[e.name]
            parts.append(t.reshape(*t.shape[:t.dim() - len(e.shape)], e.numel))
        return torch.cat(parts, dim=-1)
