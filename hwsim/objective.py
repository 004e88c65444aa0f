"""Mini-batch losses of a network at many parameter points, evaluated through a backend in batches.

This is the only thing the ZO estimators call: one backend call per layer per chunk of queries, the
same mini-batch for every query. On an exact backend the layers in front of the first perturbed tensor
run once for all queries; on a noisy one every query is a fresh evaluation from the inputs (unless the
host is said to cache those layers' outputs: ``cache_prefix``), with its noise drawn from streams keyed
by (step, query, layer) (:meth:`BatchObjective.key_noise`), so a query's loss does not depend on which
other queries share its chunk, its process or its rank.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch

from hwsim.backends.base import SparseDelta
from hwsim.model import Activation, Network, cross_entropy
from hwsim.zo import to_device

# Largest activation tensor (elements) one chunk of queries may create: bounds memory per chunk and
# keeps a chunk's activations within a CPU's last-level cache (2**22 float32 = 16 MiB; measured in
# benchmarks/bench_zo_step.py, docs/results.md).
DEFAULT_CHUNK_ELEMENTS = 2 ** 22
# On a GPU a chunk must be large enough that its kernels fill the device (thousands of small kernels were
# 18x slower for the paper-size PINN, docs/gpu.md): 1/64 of its memory in float32 elements, at most 2**28
# (1 GiB per activation tensor).
GPU_CHUNK_ELEMENTS, GPU_MEMORY_SHARE = 2 ** 28, 64


def chunk_elements(configured: int | None, device: torch.device) -> int:
    """``estimator.chunk_elements`` for a backend on ``device``: the configured value, or (None) the
    device's default: DEFAULT_CHUNK_ELEMENTS on the CPU, on a GPU the smaller of GPU_CHUNK_ELEMENTS and its
    memory / (4 GPU_MEMORY_SHARE). The chunking never changes a loss, only speed and memory."""
    if configured is not None:
        return configured
    if device.type == "cuda":
        memory = torch.cuda.get_device_properties(device).total_memory
        return min(GPU_CHUNK_ELEMENTS, memory // (4 * GPU_MEMORY_SHARE))
    return DEFAULT_CHUNK_ELEMENTS


class BatchObjective:
    """A loss of ``network`` on the batch x (B, in) at parameter points theta + delta: cross-entropy
    against labels y (B,), or ``loss``, any map of the outputs (Q, B, out) to losses (Q,) (e.g. a PDE
    residual over stencil points, hwsim.pinn)."""

    linear_shortcut = True           # CGE may move one layer's output linearly (multilinear backends)

    def __init__(self, network: Network, backend, x: torch.Tensor, y: torch.Tensor | None = None,
                 chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                 loss: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if (y is None) == (loss is None):
            raise ValueError("BatchObjective: give labels y (cross-entropy) or a loss function, not both")
        self.network, self.backend, self.x, self.y = network, backend, x, y
        self.space = backend.param_space(network)       # what theta holds: the backend's trained parameters
        self.loss = loss or (lambda out: cross_entropy(out, y))
        self.widest = max([network.in_features] + [getattr(layer, "out_features", 0) for layer in network.layers])
        self.chunk = max(1, chunk_elements // (x.shape[0] * self.widest))
        self.queries = 0
        self.stream: int | None = None       # key of this objective's noise streams (the step); None: unkeyed
        self._prefixes: dict = {}            # outputs of the layers before the first perturbed tensor
        self.fresh = not backend.capabilities.exact   # every query evaluated from the inputs

    def key_noise(self, stream: int, cache_prefix: bool = False) -> None:
        """Draw the noise of query q (its place in this objective's sequence of queries, see ``first``)
        from the backend's streams keyed by (stream, q, layer). ``cache_prefix``: on a noisy backend, let
        the host cache the outputs of the layers before the first perturbed tensor and reuse them for all
        queries (one noise draw, keyed as query -1); counted as ``prefix_cache_values``."""
        self.stream = stream
        self.fresh = not (self.backend.capabilities.exact or cache_prefix)

    def losses(self, theta: torch.Tensor, deltas: torch.Tensor, start: int = 0, first: int | None = None) -> torch.Tensor:
        """Losses (Q,) at theta (d,) moved by deltas (Q, w) on theta[start:start + w] (unchanged elsewhere).

        Tensors outside that window are shared by all queries, so on an exact backend the layers before
        the first moved tensor run once. Queries go to the backend in chunks of at most ``self.chunk``.
        ``first``: the place of deltas[0] in the step's sequence of queries (default: the queries this
        objective has evaluated so far), the key of its noise stream.
        """
        if start < 0 or start + deltas.shape[1] > theta.numel():
            raise ValueError(f"deltas of width {deltas.shape[1]} at {start} do not fit {theta.numel()} parameters")
        first = self.queries if first is None else first
        keys = torch.arange(first, first + len(deltas))
        out = [self._chunk_losses(theta, deltas[s:s + self.chunk], start, keys[s:s + self.chunk])
               for s in range(0, len(deltas), self.chunk)]
        self.queries += len(deltas)
        return torch.cat(out) if out else deltas.new_zeros(0)

    def block_losses(self, theta: torch.Tensor, blocks: list[tuple[torch.Tensor, int]]) -> list[torch.Tensor]:
        """Losses of a step's blocks of queries, in order: blocks[i] = (deltas (Q_i, w_i), start_i) as in
        :meth:`losses` -> [(Q_i,) losses, ...]."""
        return [self.losses(theta, deltas, start) for deltas, start in blocks]

    def step_inputs(self) -> list[torch.Tensor] | None:
        """The tensors by which one step's objective differs from another's of the same run: the batch
        x (B, in) and labels y (B,), which a replayed step (hwsim.graphs) copies into its own; None when the
        loss is a function of more than the batch (a PDE residual)."""
        return [self.x, self.y] if self.y is not None else None

    def forget_prefixes(self) -> None:
        """Drop the outputs of front layers kept for this step (:meth:`_prefix`): the next call recomputes
        them (a recorded step must record that work, hwsim.graphs)."""
        self._prefixes.clear()

    def block_costs(self, blocks: list[tuple[torch.Tensor, int]]) -> list[tuple[int, tuple, int]]:
        """The work of each of ``blocks`` (as in :meth:`block_losses`) in multiply-adds per input row, as
        (per query, key, once per key): a query runs the layers from its first moved tensor on; the layers
        in front run once per key: per block on a noisy backend (their product is shared by the block's
        queries, the noise is not), once per step on an exact one (their output is kept for every later
        block with the same front layers)."""
        macs = self.network.row_macs()
        costs = []
        for k, (_, start) in enumerate(blocks):
            first = self.network.layer_of(self.space.entry_at(start).name)[0]
            costs.append((sum(macs[first:]), ("block", k) if self.fresh else ("front", first), sum(macs[:first])))
        return costs

    def loss_at(self, theta: torch.Tensor) -> torch.Tensor:
        """The loss (scalar) at theta (d,), differentiable in theta when it requires grad (FO training)."""
        self._count_workload(1, ())
        return self._forward(self.space.unflatten(theta), None, set())

    def coordinate_losses(self, theta: torch.Tensor, idx: torch.Tensor, h: float, first: int | None = None) -> torch.Tensor:
        """Losses (J,) at theta + h * e_j for every coordinate j in idx (J,), a host tensor; ``first`` as in
        :meth:`losses` (idx[q] is query first + q).

        On a multilinear backend the perturbed layer's output is z + h * dz/dtheta_j, computed for all
        coordinates of a tensor at once (exact: the layer is linear in each of its tensors); the layers
        before it run once. Other backends evaluate every query in full, in chunks.
        """
        first = self.queries if first is None else first
        self.queries += len(idx)
        order = idx.argsort(stable=True)          # grouped by tensor on the host (no read of the device)
        idx, keys = idx[order], first + order
        if self.backend.capabilities.multilinear and self.linear_shortcut:
            losses = self._coordinate_losses_multilinear(theta, idx, h)
        else:
            losses = self._coordinate_losses_in_full(theta, idx, keys, h)
        if bool((order[1:] < order[:-1]).any()):
            losses = torch.empty_like(losses).index_copy_(0, to_device(order, theta), losses)
        return losses

    def _coordinate_losses_in_full(self, theta: torch.Tensor, idx: torch.Tensor, keys: torch.Tensor, h: float) -> torch.Tensor:
        """coordinate_losses for idx (J,) sorted ascending with the noise keys (J,) of its queries, every
        query a full evaluation, in chunks."""
        losses = []
        for entry, lo, hi in self._by_tensor(idx):
            for s in range(lo, hi, self.chunk):
                local = to_device(idx[s:min(hi, s + self.chunk)] - entry.offset, theta)
                deltas = torch.zeros(len(local), entry.numel, dtype=theta.dtype, device=theta.device)
                deltas[torch.arange(len(local), device=theta.device), local] = h
                losses.append(self._chunk_losses(theta, deltas, entry.offset, keys[s:s + len(local)]))
        return torch.cat(losses) if losses else theta.new_zeros(0)

    def _by_tensor(self, idx: torch.Tensor):
        """(ParamEntry, lo, hi) for every tensor that idx (host, sorted ascending) touches: idx[lo:hi] are
        its coordinates (found on the host: no read of the device)."""
        bounds = torch.searchsorted(idx, torch.tensor([e.offset for e in self.space.entries] + [self.space.size],
                                                      dtype=idx.dtype)).tolist()
        for entry, lo, hi in zip(self.space.entries, bounds, bounds[1:]):
            if lo < hi:
                yield entry, lo, hi

    def _coordinate_losses_multilinear(self, theta: torch.Tensor, idx: torch.Tensor, h: float) -> torch.Tensor:
        """coordinate_losses for idx (J,) sorted ascending on a multilinear backend (see there)."""
        net, backend = self.network, self.backend
        tensors = self.space.unflatten(theta)
        acts = [self.x]                              # acts[i]: input of layer i at theta; acts[-1]: output
        for i in range(len(net.layers)):
            acts.append(net.forward(backend, tensors, acts[i], start=i, stop=i + 1))
        losses = []
        for entry, lo, hi in self._by_tensor(idx):
            i, local = net.layer_of(entry.name)
            self._count_workload(hi - lo, () if local == "bias" else (i,))
            jvp = backend.coordinate_jvp(net.layers[i], self._layer_params(tensors, i), acts[i], local)
            for s in range(lo, hi, self.chunk):
                logits = self._propagate(tensors, acts, i, jvp(to_device(idx[s:min(hi, s + self.chunk)] - entry.offset, theta)), h)
                losses.append(self.loss(logits))
        return torch.cat(losses) if losses else theta.new_zeros(0)

    def _layer_params(self, tensors: dict, i: int) -> dict:
        return {n: tensors[f"{i}.{n}"] for n, _ in self.network.layers[i].param_shapes()}

    def _propagate(self, tensors: dict, acts: list, i: int, delta: SparseDelta, h: float) -> torch.Tensor:
        """Network outputs (J, B, out) when layer i's output moves by h * delta.

        Elementwise activations change only the touched entries; the next linear layer turns the
        sparse change of its input into a dense change of its output; later layers run per query.
        """
        net, backend = self.network, self.backend
        moved = delta.gather(acts[i + 1]) + h * delta.values
        j = i + 1
        while j < len(net.layers) and isinstance(net.layers[j], Activation):
            moved = backend.activation(net.layers[j].kind, moved)
            j += 1
        if j == len(net.layers):
            return delta.scatter(acts[j], moved)
        change = SparseDelta(moved - delta.gather(acts[j]), delta.index)
        out = acts[j + 1] + backend.linear_input_delta(net.layers[j], self._layer_params(tensors, j), change)
        return net.forward(backend, tensors, out, start=j + 1)

    def _chunk_losses(self, theta: torch.Tensor, deltas: torch.Tensor, start: int, keys: torch.Tensor) -> torch.Tensor:
        """Losses (Q,) of one chunk of queries deltas (Q, w) whose places in the step are keys (Q,)."""
        queries, stop = len(deltas), start + deltas.shape[1]
        tensors, batched, perturbed = self.space.unflatten(theta), set(), set()
        for e in self.space.entries:
            lo, hi = max(start, e.offset), min(stop, e.offset + e.numel)
            if lo < hi:
                perturbed.add(e.name)
                moved = theta[e.slice].expand(queries, e.numel).clone()
                moved[:, lo - e.offset:hi - e.offset] += deltas[:, lo - start:hi - start]
                tensors[e.name] = moved.reshape(queries, *e.shape)
            elif self.fresh:                  # shared by the queries (stride 0), but run per query
                tensors[e.name] = tensors[e.name].expand(queries, *e.shape)
            else:
                continue
            batched.add(e.name)
        self._count_workload(queries, {self.network.layer_of(n)[0] for n in perturbed if not n.endswith(".bias")})
        keyed = self.backend.keyed(self.stream, keys) if self.stream is not None else nullcontext()
        with keyed:
            return self._forward(tensors, queries, batched).to(theta.dtype).expand(queries)

    def _count_workload(self, queries: int, moved_layers) -> None:
        """What the device does for ``queries`` evaluations, whatever the simulator shares between them:
        each is a full forward pass of the batch, after programming the layers whose weights its
        perturbation moves (a bias is added electronically: moving it programs nothing)."""
        self.backend.count_passes(self.x.shape[0], queries)
        self.backend.count_programs(sorted(moved_layers), queries)

    def _forward(self, tensors: dict, queries: int, batched: set) -> torch.Tensor:
        """Losses (Q,) of one chunk: ``tensors`` named in ``batched`` carry the query axis. The layers in
        front of the first batched tensor run once per setting of their tensors for this objective (its
        step), not once per call: their output is kept for every later call with the same tensors."""
        first = min((self.network.layer_of(n)[0] for n in batched), default=len(self.network.layers))
        if queries is None or first == 0:
            return self.loss(self.network.forward(self.backend, tensors, self.x, queries, batched))
        h = self._prefix(tensors, first)
        return self.loss(self.network.forward(self.backend, tensors, h, queries, batched, start=first))

    def _prefix(self, tensors: dict, stop: int) -> torch.Tensor:
        """Output (B, F) of layers [0, stop) at ``tensors``, kept per (stop, storage and version of the
        tensors it read); a new value is counted as ``prefix_cache_values`` (what the host holds)."""
        names = [e.name for e in self.space.entries if self.network.layer_of(e.name)[0] < stop]
        key = (stop, tuple((tensors[n].data_ptr(), tensors[n]._version) for n in names))
        if key not in self._prefixes:
            h = self.network.forward(self.backend, tensors, self.x, stop=stop)
            self.backend.count("prefix_cache_values", h.numel())
            self._prefixes[key] = (h, [tensors[n] for n in names])     # the tensors kept alive: keys stay unique
        return self._prefixes[key][0]
