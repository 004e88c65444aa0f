"""What a run asks of the device, and the shapes every architecture's mapping starts from.

A run counts its workload above the Backend seam (forward passes, programmings, the heaters' held load:
hwsim.backends.Backend.count_passes / count_programs); an architecture kind (hwsim.arch.kind) maps the
network onto its hardware and turns a :class:`Workload` into events. The events do not depend on how
the simulator grouped its work: not on chunks, ranks or evaluation batching.

Shapes of a TT layer's core step k (hwsim.tt.Step): T_k = r_k n_k terms per value, V_k values and
S_k = D_k R_k sub-vectors per row; a dense layer is a one-core TT layer (1, in, out, 1).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from hwsim.model import TTLinear

@dataclass(frozen=True)
class Widths:
    """A linear layer's operands on the device, in bits: ``float`` MACs (at ``weight`` bits) or integer;
    ``results``: each core step's result (the last is the layer output); ``bias``: bias words."""

    float: bool
    input: int
    weight: int
    results: tuple[int, ...]
    bias: int = 32


@dataclass
class Workload:
    """What a run asked of the device, from its counters: ``passes`` {rows: forward passes of that many
    rows through the whole network}, ``programs`` {layer index: times its weights were (re)programmed},
    ``held_pi`` {region "<layer>.<tensor>": sum over the rows through it of the region's sum |phase| / pi
    while they passed}: divided by the rows, the mean load the region's heaters held."""

    passes: dict[int, int] = field(default_factory=dict)
    programs: dict[int, int] = field(default_factory=dict)
    held_pi: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_counters(cls, counters: dict) -> "Workload":
        w = cls()
        for key, n in counters.items():
            if not n:
                continue
            if m := re.fullmatch(r"passes_rows(\d+)", key):
                w.passes[int(m[1])] = w.passes.get(int(m[1]), 0) + int(n)
            elif m := re.fullmatch(r"programs_layer(\d+)", key):
                w.programs[int(m[1])] = int(n)
            elif key.startswith("held_pi_rows:"):
                w.held_pi[key[len("held_pi_rows:"):]] = float(n)
        return w

    @property
    def rows(self) -> int:
        """Input rows through the network, all passes."""
        return sum(b * n for b, n in self.passes.items())

    @property
    def pass_count(self) -> int:
        return sum(self.passes.values())

    def groups(self, lanes: int) -> int:
        """Groups of at most ``lanes`` rows: every pass fills its own (its rows share one weight setting)."""
        return sum(-(-b // lanes) * n for b, n in self.passes.items())


def core_shapes(layer) -> list[tuple[int, int, int, int]]:
    """(r, n, m, r') of every core of a linear layer; a dense weight is one core (1, in, out, 1)."""
    return list(layer.tt.core_shapes) if isinstance(layer, TTLinear) else [(1, layer.in_features, layer.out_features, 1)]


def tensor_names(layer) -> list[str]:
    return list(layer.core_names) if isinstance(layer, TTLinear) else ["weight"]


def pow2_bytes(bits: int) -> int:
    """The smallest power of two bytes holding ``bits``."""
    return 1 << max(0, math.ceil(math.log2(max(1, -(-bits // 8)))))


def fmt_bytes(n: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"
