"""Rows of one dynamic embedding table spread over the ranks of a torch.distributed group.

The split: every rank keeps the whole id -> row directory (`freshrec.keyindex.KeyIndex`, admission sketch,
counters, change flags) and runs it on the same global micro-batch, so every rank assigns, admits, evicts
and expires exactly as one table over the whole stream would, without a message; the rows themselves
(weights and optimizer state, the bulk of a table) are sharded: global row ``r`` lives on rank
``r % world_size`` at local row ``r // world_size``. A rank asks the owners for the rows its part of the
step reads (one ``all_to_all`` for the counts, one for the row numbers, one for the values) and sends the
gradients of those rows back to them in ``backward()`` (one more), where each owner runs fbgemm's fused
update over every rank's gradients of its rows at once: the same sum of gradients per row, the same
update, as a single table learning the whole batch. Why this split and not TorchRec's: docs/decisions.md.

Every call here is a collective: every rank of the group makes the same calls in the same order, each with
its own rows (possibly none).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from freshrec.embeddings.table import DynamicEmbeddingTable

__all__ = [
    "Collectives",
    "RowSharding",
    "collectives",
    "even_shares",
    "exchange_rows",
    "gather_shares",
    "merge_shard_states",
]


class Collectives:
    """The torch.distributed calls freshrec makes, timed and counted: what a step spends communicating
    (`seconds`) and the bytes this rank sent (`bytes_sent`), for the trainer's figures."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.bytes_sent = 0
        self.calls = 0

    def _count(self, started: float, sent: torch.Tensor) -> None:
        self.seconds += time.perf_counter() - started
        self.bytes_sent += sent.numel() * sent.element_size()
        self.calls += 1

    def all_to_all(
        self,
        out: torch.Tensor,
        tensor: torch.Tensor,
        out_splits: list[int] | None = None,
        in_splits: list[int] | None = None,
        group: Any = None,
    ) -> None:
        started = time.perf_counter()
        dist.all_to_all_single(out, tensor, out_splits, in_splits, group=group)
        self._count(started, tensor)

    def all_reduce(self, tensor: torch.Tensor, op: Any = None, group: Any = None) -> None:
        started = time.perf_counter()
        dist.all_reduce(tensor, op=op if op is not None else dist.ReduceOp.SUM, group=group)
        self._count(started, tensor)

    def all_gather(self, out: list[torch.Tensor], tensor: torch.Tensor, group: Any = None) -> None:
        started = time.perf_counter()
        dist.all_gather(out, tensor, group=group)
        self._count(started, tensor)


#: This process's collectives (one process is one rank).
collectives = Collectives()


@dataclass(frozen=True)
class RowSharding:
    """Where a table's rows live: rank `rank` of `world_size` holds the global rows ``r`` with
    ``r % world_size == rank``.

    Parameters
    ----------
    rank, world_size
        This process's place in the group.
    group
        The torch.distributed process group the rows are exchanged over (None: the default group).

    >>> sharding = RowSharding(rank=1, world_size=2)
    >>> sharding.owned(np.array([0, 1, 2, 3])).tolist(), sharding.local_rows(7)
    ([False, True, False, True], 3)
    """

    rank: int
    world_size: int
    group: Any = None

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")

    def owner(self, rows: np.ndarray) -> np.ndarray:
        return rows % self.world_size

    def owned(self, rows: np.ndarray) -> np.ndarray:
        return rows % self.world_size == self.rank

    def local(self, rows: np.ndarray) -> np.ndarray:
        """Local row of each global row this rank owns."""
        return rows // self.world_size

    def local_rows(self, global_rows: int) -> int:
        """How many rows this rank stores of a table of `global_rows` rows."""
        return max(0, (global_rows - self.rank + self.world_size - 1) // self.world_size)


def even_shares(n: int, world_size: int) -> list[slice]:
    """`world_size` contiguous slices covering range(n), sizes differing by at most one.

    >>> even_shares(5, 2)
    [slice(0, 3, None), slice(3, 5, None)]
    """
    bounds = [-(-n * r // world_size) for r in range(world_size + 1)]
    return [slice(bounds[r], bounds[r + 1]) for r in range(world_size)]


class _GatherShares(torch.autograd.Function):
    """Every rank's share of rows [share, D] -> all rows [n, D] in forward; in backward, the gradient of
    all rows summed over the ranks (every rank's loss read every row), of which each keeps its share."""

    @staticmethod
    def forward(ctx: Any, share: torch.Tensor, n: int, sharding: RowSharding) -> torch.Tensor:  # type: ignore[override]
        shares = even_shares(n, sharding.world_size)
        widest = max(s.stop - s.start for s in shares)
        padded = torch.zeros(widest, *share.shape[1:], dtype=share.dtype)
        padded[: len(share)] = share
        parts = [torch.empty_like(padded) for _ in shares]
        collectives.all_gather(parts, padded, group=sharding.group)
        ctx.own, ctx.sharding = shares[sharding.rank], sharding
        return torch.cat([part[: s.stop - s.start] for part, s in zip(parts, shares, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        summed = grad.contiguous().clone()
        collectives.all_reduce(summed, group=ctx.sharding.group)
        return summed[ctx.own], None, None


def gather_shares(share: torch.Tensor, n: int, sharding: RowSharding) -> torch.Tensor:
    """All `n` rows from every rank's `even_shares` part of them (differentiable; a collective): how
    ranks split a computation over rows that every rank's loss then reads whole."""
    return _GatherShares.apply(share, n, sharding)


@dataclass
class _Route:
    """Where each requested row went: the order that groups the requests by owner, and the counts."""

    order: torch.Tensor  # request position of each row in owner-grouped order
    sent: list[int]  # rows asked of each owner
    received: list[int]  # rows each rank asked of this one
    asked: np.ndarray  # local rows of this rank that the others asked for, in the received order


def _route(rows: np.ndarray, sharding: RowSharding) -> _Route:
    """Tell every owner which of its rows this rank reads (two all_to_all: the counts, then the rows)."""
    world, group = sharding.world_size, sharding.group
    owners = sharding.owner(rows)
    order = np.argsort(owners, kind="stable")
    sent = torch.from_numpy(np.bincount(owners, minlength=world).astype(np.int64))
    received = torch.empty(world, dtype=torch.int64)
    collectives.all_to_all(received, sent, group=group)
    sent_list, received_list = sent.tolist(), received.tolist()
    asked = torch.empty(sum(received_list), dtype=torch.int64)
    collectives.all_to_all(
        asked, torch.from_numpy(np.ascontiguousarray(rows[order])), received_list, sent_list, group=group
    )
    return _Route(torch.from_numpy(order), sent_list, received_list, sharding.local(asked.numpy()))


def _answer(route: _Route, values: torch.Tensor, dim: int, sharding: RowSharding) -> torch.Tensor:
    """Send each asker the values of the rows it asked for; return this rank's rows in request order."""
    gathered = torch.empty(sum(route.sent), dim)
    collectives.all_to_all(gathered, values, route.sent, route.received, group=sharding.group)
    out = torch.empty_like(gathered)
    out[route.order] = gathered
    return out


def exchange_rows(table: DynamicEmbeddingTable, rows: np.ndarray, sharding: RowSharding) -> torch.Tensor:
    """float32 [len(rows), dim] copies of the global `rows`, from their owners (outside autograd)."""
    route = _route(rows, sharding)
    return _answer(route, table.local_weights(route.asked), table.dim, sharding)


class ShardedLookup(torch.autograd.Function):
    """Rows read from their owners in forward; their gradients sent back, and applied by each owner's fused
    update, in backward. `anchor` is a parameter that requires grad, so autograd calls backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, anchor: torch.Tensor, table: DynamicEmbeddingTable, rows: np.ndarray, sharding: RowSharding
    ) -> torch.Tensor:
        route = _route(rows, sharding)
        ctx.route, ctx.table, ctx.sharding = route, table, sharding
        return _answer(route, table.local_weights(route.asked), table.dim, sharding)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, ...]:  # type: ignore[override]
        route, table, sharding = ctx.route, ctx.table, ctx.sharding
        outgoing = grad.contiguous()[route.order]
        incoming = torch.empty(len(route.asked), table.dim)
        collectives.all_to_all(incoming, outgoing, route.received, route.sent, group=sharding.group)
        table.apply_local_gradients(route.asked, incoming)
        return None, None, None, None


def merge_shard_states(states: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One model's `state_dict` from the states of its ranks (rank order): what a single process holding
    every row would have saved. Each sharded table (``<prefix>sharding`` in its state) gets its ``weights``
    and ``momentum`` back from their owners (global row r from rank r % N, local row r // N); everything
    else (the directory, sketch, counters, dense weights) is the same on every rank and taken from rank 0.

    >>> shard = lambda rank: {"t.sharding": np.array([rank, 2]), "t.counters": np.zeros(3, np.int64),
    ...     "t.weights": np.full((2, 1), rank, np.float32), "t.momentum": np.zeros(2, np.float32)}
    >>> merge_shard_states([shard(0), shard(1)])["t.weights"][:, 0].tolist()
    [0.0, 1.0, 0.0, 1.0]
    """
    world = len(states)
    merged = {key: value for key, value in states[0].items() if not key.endswith("sharding")}
    for key in states[0]:
        if not key.endswith("sharding"):
            continue
        prefix = key[: -len("sharding")]
        for rank, state in enumerate(states):
            saved = np.asarray(state[key]).reshape(-1).tolist()
            if saved != [rank, world]:
                raise ValueError(f"state {rank} holds rank {saved[0]} of {saved[1]}, not {rank} of {world}")
        for name in ("weights", "momentum"):
            parts = [np.asarray(state[prefix + name]) for state in states]
            if parts[0].size == 0:  # no optimizer state (SGD)
                continue
            rows = sum(len(part) for part in parts)
            whole = np.empty((rows, *parts[0].shape[1:]), dtype=parts[0].dtype)
            for rank, part in enumerate(parts):
                whole[rank::world] = part
            merged[prefix + name] = whole
    return merged
