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
    of the objects gathered from all ranks so far (pickled; what travels between the ranks)."""

    rank: int = 0
    world: int = 1
    gathered_bytes: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the run directory and logs."""
        return self.rank == 0

    def share(self, n: int) -> tuple[int, int]:
        """[lo, hi) of this rank's contiguous share of n items (shares differ by at most one item)."""
        return self.rank * n // self.world, (self.rank + 1) * n // self.world

    def all_gather(self, obj) -> list:
        """``obj`` of every rank, in rank order (pickled; tensors arrive bit for bit)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        try:
            torch.distributed.all_gather_object(out, obj)
        except RuntimeError as e:
            raise RankLost(f"rank {self.rank}: another rank did not answer ({str(e).splitlines()[0]})") from None
        self.gathered_bytes += sum(len(pickle.dumps(o)) for o in out)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (e.g. a stop signal reached one of them)."""
        return any(self.all_gather(bool(flag)))


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
    evaluates its share with the queries' places in the step as their keys, then every rank gets all
    losses in query order and adds every share's event counts to its backend, in rank order."""

    def __init__(self, objective, ranks: Ranks):
        self.inner, self.ranks = objective, ranks
        self.queries = 0

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

    def _gathered(self, n: int, evaluate) -> torch.Tensor:
        backend = self.inner.backend
        with backend.counted_apart() as counts:
            local = evaluate()
        shares = self.ranks.all_gather((local.cpu(), dict(counts)))
        for _, share_counts in shares:
            backend.add_counts(share_counts)
        self.queries += n
        return torch.cat([losses for losses, _ in shares]).to(local.device)
