"""The queries of a ZO step spread over processes with torch.distributed (launched by torchrun).

Every rank builds the same run from the same config and seed, so every rank draws the same directions
from the run's generator. A step's queries (all its blocks at once) are shared out by their cost: whole
blocks to ranks where that balances (no rank repeats what a backend does once per block), else contiguous
shares in rank order. Each rank evaluates its share on its own backend instance (its own simulator; the
same chip), the per-query losses are gathered in query order, and every rank forms the identical update:
parameters never travel, only one loss per query (and the share's event counts, so that every rank holds
the run's totals). A query's loss depends only on the query (noisy backends draw its noise from streams keyed by
(step, query, layer), hwsim.objective), so a run gives the same numbers on any number of ranks.

Launch: ``torchrun --nproc-per-node N -m hwsim train CONFIG ...`` (``--nnodes``/rendezvous for several
machines), or ``hwsim train CONFIG --nproc N`` on one machine. gloo on CPU. Only rank 0 writes the run
directory and logs; a rank that dies makes the others fail once the collective timeout passes
(``HWSIM_DIST_TIMEOUT_S``, default 300 s; torchrun also stops the surviving workers at once).
"""
from __future__ import annotations

import datetime
import os
import pickle
from dataclasses import dataclass

import torch

from hwsim.errors import RunFailed

DEFAULT_TIMEOUT_S = 300.0


class RankLost(RunFailed):
    """A collective did not complete: another rank died or stopped answering."""


@dataclass
class Ranks:
    """This process's place among the ranks of a run (rank 0 of 1 when not distributed), and the bytes
    gathered from all ranks so far (what travels between the ranks: losses, counts, flags)."""

    rank: int = 0
    world: int = 1
    gathered_bytes: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the run directory and logs."""
        return self.rank == 0

    def share(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """[lo, hi) of the contiguous share of n items of ``rank`` (default this one); shares differ by at
        most one item and follow rank order."""
        r = self.rank if rank is None else rank
        return r * n // self.world, (r + 1) * n // self.world

    def all_gather(self, obj) -> list:
        """``obj`` of every rank, in rank order (pickled: for small objects of any shape)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        self._collective(torch.distributed.all_gather_object, out, obj)
        self.gathered_bytes += sum(len(pickle.dumps(o)) for o in out)
        return out

    def shares_by_cost(self, costs: list[int]) -> list[tuple[int, int]]:
        """[lo, hi) of every rank's contiguous share of len(costs) items, in rank order, of about equal total
        cost: an item goes to the rank whose slice of the total holds its middle (integer costs >= 0, so
        every rank computes the same shares; equal counts when all are zero)."""
        total = sum(costs)
        if total <= 0:
            return [self.share(len(costs), r) for r in range(self.world)]
        bounds, before = [0] * (self.world + 1), 0
        for i, c in enumerate(costs):
            owner = min(self.world - 1, (2 * before + c) * self.world // (2 * total))
            bounds[owner + 1] = i + 1
            before += c
        for r in range(1, self.world + 1):       # ranks that got nothing end where the one before ends
            bounds[r] = max(bounds[r], bounds[r - 1])
        return list(zip(bounds[:-1], bounds[1:]))

    def assign(self, sizes: list[int], costs: list[tuple[int, tuple, int]]) -> list[list[tuple[int, int]]]:
        """Which of a step's queries each rank evaluates: per rank, [lo, hi) ranges of the queries, which
        come in blocks of ``sizes``; costs[k] = (integer cost per query of block k, key, cost once per
        key and rank), as BatchObjective.block_costs gives them (every rank computes the same answer).

        With at least as many blocks as ranks, whole blocks go to the ranks, the costliest first, each to
        the rank that ends least loaded with it (ties: the lower rank), if that leaves no rank above 5/4
        of an equal share of the total: what a backend does once per block (program a chip, run the
        layers in front) is then not repeated on every rank, and each rank gets a mix of the network's
        blocks, so costs the model misjudges for one layer's blocks even out. Otherwise contiguous shares
        of about equal cost (:meth:`shares_by_cost`, a key's cost on the first query that needs it)."""
        edges, flat, seen = [0], [], set()
        for size, (each, key, once) in zip(sizes, costs):
            edges.append(edges[-1] + size)
            flat += [each] * size
            if size and key not in seen:
                seen.add(key)
                flat[-size] += once
        total = sum(flat)
        if len(sizes) >= self.world and total > 0:
            loads, held, owner = [0] * self.world, [set() for _ in range(self.world)], [0] * len(sizes)
            for k in sorted(range(len(sizes)), key=lambda k: (-(sizes[k] * costs[k][0] + costs[k][2]), k)):
                each, key, once = costs[k]
                added = [sizes[k] * each + (0 if key in held[r] else once) for r in range(self.world)]
                owner[k] = min(range(self.world), key=lambda r: (loads[r] + added[r], r))
                loads[owner[k]] += added[owner[k]]
                held[owner[k]].add(key)
            if 4 * self.world * max(loads) <= 5 * total:
                return [[(edges[k], edges[k + 1]) for k in range(len(sizes)) if owner[k] == r] for r in range(self.world)]
        return [[share] for share in self.shares_by_cost(flat)]

    def gather_assigned(self, local: torch.Tensor, ranges: list[list[tuple[int, int]]]) -> torch.Tensor:
        """The (n,) tensor of which rank r holds the ranges [lo, hi) ``ranges[r]`` (together: every item
        once), ``local`` being this rank's values in the order of its ranges, assembled on every rank in
        one collective (float64 on the wire: float32 values exactly)."""
        if self.world == 1:
            return local
        counts = [sum(hi - lo for lo, hi in mine) for mine in ranges]
        width = max(1, max(counts))
        mine = torch.zeros(width, dtype=torch.float64)
        mine[:len(local)] = local.detach().cpu().to(torch.float64)
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        self._collective(torch.distributed.all_gather, parts, mine)
        self.gathered_bytes += self.world * width * 8
        out = torch.empty(sum(counts), dtype=torch.float64)
        for part, held in zip(parts, ranges):
            at = 0
            for lo, hi in held:
                out[lo:hi] = part[at:at + hi - lo]
                at += hi - lo
        return out.to(local.dtype).to(local.device)

    def first_set(self, value: int | None) -> int | None:
        """The value of the lowest rank that has one (e.g. a stop signal that reached only some ranks)."""
        if self.world == 1:
            return value
        flag = torch.tensor([value if value is not None else -1, self.rank], dtype=torch.int64)
        parts = [torch.empty_like(flag) for _ in range(self.world)]
        self._collective(torch.distributed.all_gather, parts, flag)
        self.gathered_bytes += self.world * 16
        return next((int(p[0]) for p in parts if int(p[0]) >= 0), None)

    def barrier(self) -> None:
        """Wait until every rank is here."""
        if self.world > 1:
            self._collective(torch.distributed.barrier)

    def close(self, clean: bool = True) -> None:
        """Leave the process group (before the interpreter exits: gloo's threads torn down at exit abort
        the process, which torchrun reports as a failed rank). ``clean``: every rank ends without an error,
        so they first meet at a barrier: a rank that tears its gloo connections down while another still
        finishes its last collective on them can abort ("terminate called without an active exception",
        seen once in ~100 two-rank runs); after an error no barrier (the other ranks may be gone)."""
        if self.world > 1 and torch.distributed.is_initialized():
            if clean:
                try:
                    self.barrier()
                except RankLost:
                    pass
            torch.distributed.destroy_process_group()

    def _collective(self, op, *args) -> None:
        try:
            op(*args)
        except RuntimeError as e:
            raise RankLost(f"rank {self.rank}: another rank did not answer ({str(e).splitlines()[0]})") from None


def from_environment() -> Ranks:
    """The ranks torchrun describes in the environment (WORLD_SIZE, RANK, MASTER_ADDR, ...), with the gloo
    process group initialised; a single rank when WORLD_SIZE is absent or 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    if not torch.distributed.is_initialized():
        timeout = float(os.environ.get("HWSIM_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
        torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout))
    return Ranks(torch.distributed.get_rank(), torch.distributed.get_world_size())


class ShardedObjective:
    """An objective (hwsim.objective.BatchObjective) whose queries are spread over ``ranks``: each rank
    evaluates its share of every call (:meth:`block_losses`: all of a step's RGE blocks in one call) with the
    queries' places in the step as their keys, and every rank gets all losses in query order (one
    collective per call). The backend counts each rank's share apart;
    :meth:`finish` (once per step) adds every rank's counts to every rank's backend, in rank order."""

    def __init__(self, objective, ranks: Ranks):
        self.inner, self.ranks = objective, ranks
        self.queries = 0
        self.counts: dict = {}

    def losses(self, theta: torch.Tensor, deltas: torch.Tensor, start: int = 0) -> torch.Tensor:
        """As BatchObjective.losses: (Q,) losses at theta moved by deltas (Q, w) from ``start``."""
        return self.block_losses(theta, [(deltas, start)])[0]

    def block_losses(self, theta: torch.Tensor, blocks: list[tuple[torch.Tensor, int]]) -> list[torch.Tensor]:
        """As BatchObjective.block_losses, the queries of all blocks shared out at once by their cost
        (BatchObjective.block_costs, Ranks.assign): whole blocks to ranks where that balances."""
        sizes = [len(deltas) for deltas, _ in blocks]
        ranges = self.ranks.assign(sizes, self.inner.block_costs(blocks))
        starts = [sum(sizes[:k]) for k in range(len(sizes))]

        def evaluate() -> torch.Tensor:
            parts = []
            for lo, hi in ranges[self.ranks.rank]:
                for (deltas, start), at in zip(blocks, starts):
                    a, b = max(lo - at, 0), min(hi - at, len(deltas))
                    if a < b:
                        parts.append(self.inner.losses(theta, deltas[a:b], start, self.queries + at + a))
            return torch.cat(parts) if parts else theta.new_zeros(0)

        return list(self._gathered(ranges, evaluate).split(sizes))

    def coordinate_losses(self, theta: torch.Tensor, idx: torch.Tensor, h: float) -> torch.Tensor:
        """As BatchObjective.coordinate_losses: (J,) losses at theta + h e_j for j in idx (J,)."""
        ranges = [[self.ranks.share(len(idx), r)] for r in range(self.ranks.world)]
        lo, hi = ranges[self.ranks.rank][0]
        return self._gathered(ranges, lambda: self.inner.coordinate_losses(theta, idx[lo:hi], h, self.queries + lo))

    def loss_at(self, theta: torch.Tensor) -> torch.Tensor:
        """The loss at theta, computed on every rank (first-order baseline: nothing to share)."""
        return self.inner.loss_at(theta)

    def key_noise(self, stream: int, cache_prefix: bool = False) -> None:
        self.inner.key_noise(stream, cache_prefix)

    def finish(self) -> None:
        """Give every rank the step's event counts of all ranks (one collective)."""
        for counts in self.ranks.all_gather(self.counts):
            self.inner.backend.add_counts(counts)
        self.counts = {}

    def _gathered(self, ranges: list[list[tuple[int, int]]], evaluate) -> torch.Tensor:
        backend = self.inner.backend
        with backend.counted_apart() as counts:
            local = evaluate()
        for key, amount in counts.items():
            self.counts[key] = self.counts.get(key, 0) + amount
        self.queries += sum(hi - lo for held in ranges for lo, hi in held)
        return self.ranks.gather_assigned(local, ranges)
