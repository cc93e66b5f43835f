"""The online trainer over several ranks of torch.distributed (gloo on CPU, NCCL on GPUs), synchronous.

Each rank reads its own partitions of the stream. At every step the ranks exchange their micro-batches
(one ``all_gather``), so every rank holds the same global batch in time order;
from there:

- the live feature state (histories, seen items, catalogue, negative sampler) advances through the global
  batch on every rank, so every rank draws the same negatives, exactly as one trainer at the global batch
  size would;
- each rank evaluates and learns its share of the global batch (`Interactions.share`: an even split), the
  model's id rows sharded over the ranks by row (`freshrec.embeddings.sharded`: each rank's rows read from
  and their gradients sent back to their owners) and its dense gradients summed over the ranks before the
  optimizer's step (``all_reduce``);
- the shares' ranks and losses are gathered, so every rank's evaluator and counters are the global ones.

In synchronous mode N ranks at B events each therefore learn what one rank learns at N x B: the same row
per id within float rounding, the same HR@10 (tests/training/test_distributed.py). What is replicated (the
feature state and the id -> row directory: every rank runs them on the whole batch) does not get faster
with more ranks; what is split (the loss, its gradients, the rows and their optimizer state) does. The
costs per step are in docs/scaling.md.

Every method that takes a batch is a collective: every rank calls it, in the same order, each with its
own events (possibly none).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from freshrec.embeddings.sharded import RowSharding, collectives, even_shares
from freshrec.errors import ConfigError
from freshrec.evaluation.gate import ScoredBatch
from freshrec.evaluation.prequential import ranks_of_targets
from freshrec.events import EventBatch
from freshrec.features.state import FeatureConfig, ObservedBatch
from freshrec.interactions import EncodedBatch
from freshrec.models.base import GradientSum, LearnStats, Model, RatingPredictor
from freshrec.preprocess.pipeline import encode_events
from freshrec.training.online import OnlineTrainer, StepResult, TrainerConfig

__all__ = ["DistributedTrainer", "even_shares", "gather_batch", "sum_gradients"]

#: Columns of an encoded batch on the wire: user key, item key (bits as float64), time, value, kind.
_COLUMNS = 5


def gather_batch(batch: EncodedBatch, width: int, group: object = None) -> EncodedBatch:
    """Every rank's `batch` (at most `width` events, the same `width` on every rank), concatenated in rank
    order and put in time order (ties keep that order): the same global batch on every rank. One
    ``all_gather`` of fixed-size buffers whose first row carries the count."""
    n = len(batch)
    if n > width:
        raise ValueError(f"a rank's micro-batch holds at most {width} events, got {n}")
    world = dist.get_world_size(group)
    packed = np.zeros((width + 1, _COLUMNS), dtype=np.float64)
    packed[0, 0] = n
    packed[1 : n + 1, 0] = batch.user_keys.view(np.float64)
    packed[1 : n + 1, 1] = batch.item_keys.view(np.float64)
    packed[1 : n + 1, 2] = batch.timestamps
    packed[1 : n + 1, 3] = batch.values
    packed[1 : n + 1, 4] = batch.kinds
    parts = [torch.empty(width + 1, _COLUMNS, dtype=torch.float64) for _ in range(world)]
    collectives.all_gather(parts, torch.from_numpy(packed), group=group)
    rows = np.concatenate([part.numpy()[1 : int(part[0, 0]) + 1] for part in parts])
    # The keys travel as the bits of float64s: contiguous copies of their columns read them back.
    merged = EncodedBatch(
        np.ascontiguousarray(rows[:, 0]).view(np.uint64),
        np.ascontiguousarray(rows[:, 1]).view(np.uint64),
        rows[:, 2].copy(),
        rows[:, 3].copy(),
        rows[:, 4].astype(np.int8),
    )
    return merged.in_time_order()


def sum_gradients(group: object = None) -> GradientSum:
    """A `freshrec.models.base.GradientSum` over `group`: every parameter's gradient summed over the ranks
    in one flat ``all_reduce``. A parameter no rank has a gradient for keeps none (Adam skips it, as one
    process would); one that only some ranks have counts zero on the others."""

    def synchronise(parameters: list[torch.nn.Parameter]) -> None:
        # One buffer: every gradient (zeros where this rank has none), then a presence flag per parameter.
        flat = torch.cat(
            [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel()) for p in parameters]
            + [torch.tensor([float(p.grad is not None) for p in parameters])]
        )
        collectives.all_reduce(flat, group=group)
        present = flat[-len(parameters) :].tolist()
        offset = 0
        for parameter, anywhere in zip(parameters, present, strict=True):
            size = parameter.numel()
            if anywhere > 0:
                parameter.grad = flat[offset : offset + size].view_as(parameter).clone()
            offset += size

    return synchronise


class DistributedTrainer(OnlineTrainer):
    """`OnlineTrainer` whose steps are shared by the ranks of a torch.distributed group (see the module
    docstring). Build it on every rank, after ``torch.distributed.init_process_group``, with a new model
    that `learns_shares`; `TrainerConfig.batch_size` is each rank's micro-batch.

    Raises
    ------
    ConfigError
        The model cannot learn in shares, or a table's share of rows exceeds its ``rank_capacity``.
    """

    def __init__(
        self,
        model: Model,
        config: TrainerConfig | None = None,
        features: FeatureConfig | None = None,
        group: object = None,
    ) -> None:
        if not dist.is_initialized():
            raise ConfigError("a DistributedTrainer needs torch.distributed.init_process_group first")
        super().__init__(model, config, features)
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        if isinstance(model, RatingPredictor):
            raise ConfigError(f"model {model.name!r} predicts ratings; train it with one rank")
        # A model that cannot learn in shares refuses here, by name (`Model.shard`).
        model.shard(RowSharding(self.rank, self.world_size, group), sum_gradients(group))

    def process(self, events: EncodedBatch | EventBatch) -> list[StepResult]:
        """This rank's events in micro-batches of `batch_size`, stepped in lockstep with the other ranks:
        as many steps as the rank with the most batches needs, an empty share where this one has none."""
        batch = encode_events(events) if isinstance(events, EventBatch) else events
        size = self.config.batch_size
        steps = torch.tensor([-(-len(batch) // size)], dtype=torch.int64)
        collectives.all_reduce(steps, op=dist.ReduceOp.MAX, group=self.group)
        return [self.step(batch.take(slice(s * size, (s + 1) * size))) for s in range(int(steps))]

    def step(self, batch: EncodedBatch) -> StepResult:
        """One synchronous step over every rank's `batch` (a collective)."""
        return super().step(gather_batch(batch, self.config.batch_size, self.group))

    def _share(self, n: int) -> slice:
        return even_shares(n, self.world_size)[self.rank]

    def evaluate(self, observed: ObservedBatch) -> ScoredBatch:
        """Rank this rank's share of the (sampled) events, then gather every share's ranks: each rank's
        evaluator adds the whole batch's, as one trainer would."""
        candidates, query = observed.candidates, observed.query
        if candidates is None:
            raise ConfigError("evaluate needs batches observed with candidates (TrainerConfig.evaluate)")
        rows = np.arange(len(observed))
        if self.config.evaluate_fraction < 1.0:
            rows = np.flatnonzero(self._evaluation_rng.random(len(rows)) < self.config.evaluate_fraction)
        candidates, query = candidates.take(rows), query.take(rows)
        mine = np.arange(len(rows))[self._share(len(rows))]
        share = candidates.take(mine)
        # Always score, even no rows: the model's row exchanges are collectives every rank joins.
        scores = self.model.score(query.take(mine), share.candidates)
        ranks = ranks_of_targets(scores, share.targets, share.excluded_rows, share.excluded_columns)
        ranks = self._gather_shares(ranks.astype(np.int64), len(rows))
        self.evaluator.add(ranks)
        return ScoredBatch(candidates, ranks, query)

    def learn(self, observed: ObservedBatch) -> LearnStats:
        """This rank's share of the step; the reported loss is the whole batch's (the shares' parts
        summed)."""
        interactions = observed.interactions(self.config.kind_weights)
        interactions.share = self._share(len(interactions))
        stats = self.model.learn(interactions)
        loss = torch.tensor(
            [stats.loss if stats.loss is not None else 0.0, stats.loss is not None], dtype=torch.float64
        )
        collectives.all_reduce(loss, group=self.group)
        stats.loss = float(loss[0]) if loss[1] > 0 else None
        self.last_stats = stats
        if stats.loss is not None and np.isfinite(stats.loss):
            self.totals.losses.append(stats.loss)
        return stats

    def _gather_shares(self, values: np.ndarray, n: int) -> np.ndarray:
        """Every rank's int64 `values` of its share of range(n), in order (one all_gather)."""
        shares = even_shares(n, self.world_size)
        widest = max(s.stop - s.start for s in shares)
        padded = torch.zeros(widest, dtype=torch.int64)
        padded[: len(values)] = torch.from_numpy(values)
        parts = [torch.empty(widest, dtype=torch.int64) for _ in range(self.world_size)]
        collectives.all_gather(parts, padded, group=self.group)
        return np.concatenate(
            [part.numpy()[: s.stop - s.start] for part, s in zip(parts, shares, strict=True)]
        )
