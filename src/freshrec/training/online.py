"""The online trainer: for each micro-batch, advance the live feature state, score the batch with the model
as it stands (evaluation), then take one learning step on it (test-then-train).

Feature state (user histories, seen items, catalogue, negatives) moves event by event inside a batch;
learned parameters move once per batch, after the batch was scored. The trainer never looks ahead:
nothing an event's score depends on was learned from that event or a later one. It returns what it scored
and what it learned (`StepResult`); deciding what to publish is the publisher's, composed with the trainer
by the live loop (`freshrec.training.loop`), never called from here.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from freshrec.errors import ConfigError
from freshrec.evaluation.gate import ScoredBatch
from freshrec.evaluation.prequential import PrequentialEvaluator, rank_candidates
from freshrec.events import EventBatch, KindWeights
from freshrec.features.sampler import RecentItemSampler
from freshrec.features.state import FeatureConfig, LiveFeatures, ObservedBatch
from freshrec.interactions import EncodedBatch
from freshrec.model_state import State, load_rng_state, rng_state, under_prefix, with_prefix
from freshrec.models.base import LearnStats, Model, RatingPredictor
from freshrec.preprocess.pipeline import encode_events

__all__ = [
    "BatchTiming",
    "OnlineTrainer",
    "RecentItemSampler",
    "StepResult",
    "TrainerConfig",
    "TrainerTotals",
]


@dataclass
class TrainerConfig:
    """How the online loop cuts and feeds the stream (the ``[trainer]`` section of a configuration file).

    Parameters
    ----------
    batch_size
        Events per micro-batch (B in the protocol): scored together, then learned together.
    negatives
        Sampled negative items per event, drawn from the recent item distribution.
    negative_window
        How many recent item occurrences the negative sampler draws from (recent popularity).
    evaluate
        Score each batch before learning it (prequential metrics). Off, only learning is timed.
    evaluate_fraction
        Share of the events ranked when evaluating, drawn uniformly at random (seeded): 1.0 ranks every
        event, as the protocol's benchmarks do. Each ranked event costs a pass over the whole catalogue,
        once for the metrics and once more for the publish gate's serving version, so a live trainer with
        a large catalogue at a few hundred events/s spends more on judging than on learning; a fraction
        keeps the metrics and the gate unbiased at a fraction of the cost (their windows take
        proportionally longer to fill).
    k
        Cut-off of HR@K / NDCG@K.
    user_capacity
        Users whose history and seen items are kept (least recently active forgotten first).
    seed
        Seed of the negative sampler.
    torch_threads
        Torch intra-op threads of the training process (None: leave torch's default). One is fastest
        here: a micro-batch's sparse update is too small to split, and a second thread only contends with
        the data path and the server (BENCHMARKS.md, "throughput").
    kind_weights
        How much an event of each kind counts when the model learns (`freshrec.events.KindWeights`:
        ``[trainer.kind_weights] purchase = 6.0``); every kind at 1 ignores kinds.
    """

    batch_size: int = 256
    negatives: int = 4
    negative_window: int = 20_000
    evaluate: bool = True
    evaluate_fraction: float = 1.0
    k: int = 10
    user_capacity: int = 1_000_000
    seed: int = 0
    torch_threads: int | None = 1
    kind_weights: KindWeights = field(default_factory=KindWeights)

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive number of events, got {self.batch_size!r}")
        if not 0.0 < self.evaluate_fraction <= 1.0:
            raise ConfigError(
                f"evaluate_fraction must be in (0, 1] (the share of events ranked), got "
                f"{self.evaluate_fraction!r}"
            )

    def features(self, model: Model, rankable: bool | None = None) -> FeatureConfig:
        """The feature state this trainer keeps for `model`: histories as long as the model reads, and
        the catalogue and seen items when batches are ranked (`rankable`, by default `evaluate`)."""
        rank = self.evaluate if rankable is None else rankable
        return FeatureConfig(
            history_length=model.history_length,
            history_values=model.reads_history_values,
            user_capacity=self.user_capacity,
            seen_items=rank,
            catalogue=rank,
            negative_window=self.negative_window,
            seed=self.seed,
        )


@dataclass
class BatchTiming:
    """Wall time of one micro-batch, split by phase (seconds)."""

    events: int
    features: float
    scoring: float
    learning: float


@dataclass
class TrainerTotals:
    events: int = 0
    batches: int = 0
    features_seconds: float = 0.0
    scoring_seconds: float = 0.0
    learning_seconds: float = 0.0
    #: The most recent finite losses (bounded: the stream is endless).
    losses: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))

    @property
    def learning_events_per_second(self) -> float:
        """Events/s of feature updates plus learning, without top-K evaluation."""
        seconds = self.features_seconds + self.learning_seconds
        return self.events / seconds if seconds > 0 else 0.0


@dataclass
class StepResult:
    """What one micro-batch step did.

    Attributes
    ----------
    observed
        The batch as the feature state saw it before learning (queries, candidates, negatives).
    scored
        How the model ranked the batch before learning it (None without evaluation): what the publish
        gate judges the candidate on.
    stats
        What the learning step reported.
    timing
        Where the step's time went.
    """

    observed: ObservedBatch
    scored: ScoredBatch | None
    stats: LearnStats
    timing: BatchTiming

    @property
    def events(self) -> int:
        return len(self.observed)


class OnlineTrainer:
    """Test-then-train over a stream of encoded (validated, deduplicated) event batches.

    Parameters
    ----------
    model
        The model learned.
    config
        Micro-batch size, negatives, evaluation.
    features
        The feature state to keep (default: `TrainerConfig.features` of the model).

    >>> from freshrec.events import Event
    >>> from freshrec.models.popularity import PopularityModel
    >>> trainer = OnlineTrainer(PopularityModel(), TrainerConfig(batch_size=2, k=1))
    >>> pairs = [("a", 1), ("b", 1), ("c", 2), ("c", 1), ("d", 1)]
    >>> _ = trainer.process(EventBatch.from_events(Event(str(n), n, u, i) for n, (u, i) in enumerate(pairs)))
    >>> trainer.evaluator.summary().hr  # the first sightings of items 1 and 2 miss, the other three hit
    0.6
    """

    def __init__(
        self, model: Model, config: TrainerConfig | None = None, features: FeatureConfig | None = None
    ) -> None:
        self.model = model
        self.config = config = config or TrainerConfig()
        if config.torch_threads is not None:
            import torch  # here, not at module level: count-based models never need torch

            torch.set_num_threads(config.torch_threads)
        self.features = LiveFeatures(features or config.features(model))
        self.evaluator = PrequentialEvaluator(k=config.k)
        self._evaluation_rng = np.random.default_rng(config.seed + 1)
        self.totals = TrainerTotals()
        self.last_stats = LearnStats()
        #: The newest event time stepped through (epoch seconds; NaN before the first batch).
        self.newest_event_time = float("nan")

    def process(self, events: EncodedBatch | EventBatch) -> list[StepResult]:
        """`step` through every micro-batch of `events` (already in event-time order). Raw events
        (`EventBatch`, already valid and deduplicated) are encoded first."""
        batch = encode_events(events) if isinstance(events, EventBatch) else events
        size = self.config.batch_size
        return [self.step(batch.take(slice(start, start + size))) for start in range(0, len(batch), size)]

    def step(self, batch: EncodedBatch) -> StepResult:
        """One micro-batch: feature state, evaluation (if enabled), one learning step."""
        observed = self.features.observe(
            batch, negatives=self.config.negatives, candidates=self.config.evaluate
        )
        evaluated = time.perf_counter()
        scored = self.evaluate(observed) if self.config.evaluate else None
        scoring = time.perf_counter() - evaluated + observed.candidate_seconds
        learning_started = time.perf_counter()
        stats = self.learn(observed)
        learning = time.perf_counter() - learning_started + observed.negative_seconds
        timing = BatchTiming(len(batch), observed.history_seconds, scoring, learning)
        if len(batch):
            self.newest_event_time = float(np.fmax(self.newest_event_time, batch.timestamps.max()))
        totals = self.totals
        totals.events += len(batch)
        totals.batches += 1
        totals.features_seconds += timing.features
        totals.scoring_seconds += timing.scoring
        totals.learning_seconds += timing.learning
        return StepResult(observed, scored, stats, timing)

    def observe(self, events: EncodedBatch | EventBatch) -> None:
        """Advance the feature state through `events` without scoring or learning: how a restarted
        trainer catches up on events its model already learned before the crash."""
        batch = encode_events(events) if isinstance(events, EventBatch) else events
        self.features.observe(batch)

    def evaluate(self, observed: ObservedBatch) -> ScoredBatch:
        """Rank every event's item among the items seen before it, excluding what its user already saw,
        and add the ranks (and rating errors) to the evaluator.

        Returns the ranking, which the publish gate reuses instead of scoring the candidate again. With
        `TrainerConfig.evaluate_fraction` below 1 only a random sample of the events is ranked (and rated);
        the catalogue and the seen items follow every event all the same."""
        candidates, query = observed.candidates, observed.query
        if candidates is None:
            raise ConfigError("evaluate needs batches observed with candidates (TrainerConfig.evaluate)")
        items, values = observed.batch.item_keys, observed.batch.values
        if self.config.evaluate_fraction < 1.0:
            rows = np.flatnonzero(self._evaluation_rng.random(len(items)) < self.config.evaluate_fraction)
            candidates, query, items, values = (
                candidates.take(rows),
                query.take(rows),
                items[rows],
                values[rows],
            )
        ranks = rank_candidates(self.model, query, candidates)
        predicted = None
        if isinstance(self.model, RatingPredictor) and np.isfinite(values).any():
            predicted = self.model.predict_ratings(query, items)
        self.evaluator.add(ranks, predicted, values if predicted is not None else None)
        return ScoredBatch(candidates, ranks, query)

    def learn(self, observed: ObservedBatch) -> LearnStats:
        """One learning step of the model on an observed batch."""
        self.last_stats = stats = self.model.learn(observed.interactions(self.config.kind_weights))
        if stats.loss is not None and np.isfinite(stats.loss):
            self.totals.losses.append(stats.loss)
        return stats

    # ------------------------------------------------------------------ state
    def state_dict(self) -> State:
        """The trainer's own state besides the model's: the feature state (``features.*``), the
        evaluator's sums (``evaluator.*``), the evaluation sampler's position and the count of events
        learned."""
        state = with_prefix(self.features.state_dict(), "features.")
        state.update(with_prefix(self.evaluator.state_dict(), "evaluator."))
        state["evaluation_rng"] = rng_state(self._evaluation_rng)
        state["totals"] = np.array([self.totals.events, self.totals.batches], dtype=np.int64)
        return state

    def load_state_dict(self, state: State) -> None:
        self.features.load_state_dict(under_prefix(state, "features."))
        if "evaluator.totals" in state:  # (saved recommenders of the first format have none)
            self.evaluator.load_state_dict(under_prefix(state, "evaluator."))
        load_rng_state(self._evaluation_rng, state["evaluation_rng"])
        self.totals.events, self.totals.batches = (int(v) for v in np.asarray(state["totals"]).reshape(-1))
