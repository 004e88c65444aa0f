"""The queries of a ZO step spread over processes with torch.distributed (launched by torchrun).

Every rank builds the same run from the same config and seed, so every rank draws the same directions
from the run's generator. A step's queries are cut into contiguous shares, one per rank, in rank order;
each rank evaluates its share on its own backend instance (its own simulator; the same chip), the
per-query losses are gathered in query order, and every rank forms the identical update: parameters never
travel, only one loss per query (and the share's event counts, so that every rank holds the run's
totals). A query's loss depends only on the query (noisy backends draw its noise from streams keyed by
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

DEFAULT_TIMEOUT_S = 300.0


class RankLost(RuntimeError):
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

    def gather_shares(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """The (n,) tensor whose contiguous shares (:meth:`share`) the ranks hold, ``local`` being this
        rank's, assembled on every rank in one collective (float64 on the wire: float32 values exactly)."""
        if self.world == 1:
            return local
        width = max(hi - lo for lo, hi in (self.share(n, r) for r in range(self.world)))
        mine = torch.zeros(width, dtype=torch.float64)
        mine[:len(local)] = local.detach().cpu().to(torch.float64)
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        self._collective(torch.distributed.all_gather, parts, mine)
        self.gathered_bytes += self.world * width * 8
        out = torch.cat([part[:hi - lo] for part, (lo, hi) in zip(parts, (self.share(n, r) for r in range(self.world)))])
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
    evaluates its share of every call with the queries' places in the step as their keys, and every rank
    gets all losses in query order (one collective per call). The backend counts each rank's share apart;
    :meth:`finish` (once per step) adds every rank's counts to every rank's backend, in rank order."""

    def __init__(self, objective, ranks: Ranks):
        self.inner, self.ranks = objective, ranks
        self.queries = 0
        self.counts: dict = {}

    def losses(self, theta: torch.Tensor, deltas: torch.Tensor, start: int = 0) -> torch.Tensor:
        """As BatchObjective.losses: (Q,) losses at theta moved by deltas (Q, w) from ``start``."""
        lo, hi = self.ranks.share(len(deltas))
        return self._gathered(len(deltas), lambda: self.inner.losses(theta, deltas[lo:hi], start, self.queries + lo))

    def coordinate_losses(self, theta: torch.Tensor, idx: torch.Tensor, h: float) -> torch.Tensor:
        """As BatchObjective.coordinate_losses: (J,) losses at theta + h e_j for j in idx (J,)."""
        lo, hi = self.ranks.share(len(idx))
        return self._gathered(len(idx), lambda: self.inner.coordinate_losses(theta, idx[lo:hi], h, self.queries + lo))

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

    def _gathered(self, n: int, evaluate) -> torch.Tensor:
        backend = self.inner.backend
        with backend.counted_apart() as counts:
            local = evaluate()
        for key, amount in counts.items():
            self.counts[key] = self.counts.get(key, 0) + amount
        self.queries += n
        return self.ranks.gather_shares(local, n)
