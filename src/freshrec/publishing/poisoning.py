"""Poisoning drills: a burst of bad events put into a clean stream, and a run of the live loop (trainer, gate,
guardrail, store) over it that measures what users got on the clean events after the burst.

The attacks (docs/decisions.md, "Poison guard"):
- `random_items`: the burst's events keep their users and times, their items are drawn uniformly from the
  catalogue (unpredictable noise);
- `promotion_by_new_accounts`: fake accounts added during the burst, each a short session alternating
  popular items (to look like everyone else) and one target item (a bandwagon shilling attack);
- `promotion_by_existing_accounts`: events added during the burst in which known users act on the target;
- `least_popular_items`: the burst's items replaced by the least popular ones (the implicit-feedback
  analogue of a flipped label: the opposite of what users choose).

Tests and `bench/poison.py` use it; it never writes outside the store directory it is given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from freshrec.evaluation.gate import GateDecision
from freshrec.evaluation.prequential import rank_candidates
from freshrec.events import EventBatch, KindWeights
from freshrec.features.catalogue import CandidateSet
from freshrec.features.state import FeatureConfig, LiveFeatures
from freshrec.models.base import Model
from freshrec.preprocess.encode import encode_ids
from freshrec.preprocess.pipeline import encode_events
from freshrec.preprocess.validate import EventValidator
from freshrec.publishing.publisher import ModelPublisher, PublisherConfig
from freshrec.publishing.store import ModelStore, StoreConfig
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream
from freshrec.training.loop import TrainingLoop
from freshrec.training.online import OnlineTrainer, TrainerConfig

#: Event ids of injected events start here (clear of the generator's).
INJECTED_EVENT_IDS = 10**12


def synthetic_events(config: SyntheticConfig) -> EventBatch:
    """The whole synthetic stream of `config`, validated, as one batch (the clean stream of a drill)."""
    validator = EventValidator()
    raw = SyntheticStream(config).batches(100_000)
    return EventBatch.concat([validator.validate(batch).events for batch in raw])


@dataclass
class Burst:
    """A clean stream with a burst in it.

    Attributes
    ----------
    stream
        The poisoned stream, in event-time order.
    start, end
        Where the burst starts and ends in `stream`; ``stream[end:]`` equals ``clean[clean_end:]``.
    clean
        The same stream without the burst (the control run learns it).
    clean_end
        Where the burst ends in `clean` (the start of the recovery, the clean events after the burst).
    target
        The promoted item's raw id (None when the attack promotes nothing).
    """

    stream: EventBatch
    start: int
    end: int
    clean: EventBatch
    clean_end: int
    target: int | None = None

    @classmethod
    def none(cls, clean: EventBatch, start: int, stop: int, target: int | None = None) -> Burst:
        """The clean stream itself, cut at the same places: the control run (measuring how often the
        `target` of the burst it controls is shown without it)."""
        return cls(clean, start, stop, clean, stop, target)


def random_items(clean: EventBatch, start: int, stop: int, seed: int = 0) -> Burst:
    """Events ``start:stop`` get items drawn uniformly from the items seen before the burst."""
    items = np.asarray(clean.item_id).copy()
    rng = np.random.default_rng(seed)
    items[start:stop] = rng.choice(np.unique(items[:start]), size=stop - start)
    return Burst(dataclasses.replace(clean, item_id=items), start, stop, clean, stop)


def least_popular_items(
    clean: EventBatch, start: int, stop: int, fraction: float = 0.1, seed: int = 0
) -> Burst:
    """Events ``start:stop`` get items drawn from the least popular `fraction` of the items seen before."""
    items = np.asarray(clean.item_id).copy()
    rng = np.random.default_rng(seed)
    ranked = _by_popularity(items[:start])
    items[start:stop] = rng.choice(ranked[-max(int(len(ranked) * fraction), 1) :], size=stop - start)
    return Burst(dataclasses.replace(clean, item_id=items), start, stop, clean, stop)


def promotion_by_new_accounts(
    clean: EventBatch,
    start: int,
    stop: int,
    share: float = 0.5,
    session_length: int = 6,
    fillers: int = 20,
    seed: int = 0,
) -> Burst:
    """Fake accounts (new user ids) added during events ``start:stop`` so that they make `share` of the
    burst's events: each one session of `session_length` events alternating one of the `fillers` most
    popular items and the target, the least popular item seen before the burst."""
    rng = np.random.default_rng(seed)
    ranked = _by_popularity(np.asarray(clean.item_id)[:start])
    target = int(ranked[-1])
    sessions = max(_injected(stop - start, share) // session_length, 1)
    times = clean.timestamp[start:stop]
    opened = np.sort(rng.uniform(times.min(), times.max(), sessions))
    gap = (times.max() - times.min()) / max(stop - start, 1)  # the stream's mean gap between events
    when = (opened[:, None] + np.arange(session_length)[None, :] * gap).ravel()
    users = np.repeat(_fresh_user_ids(clean, sessions), session_length)
    picks = rng.choice(ranked[:fillers], size=(sessions, session_length))
    items = np.where(np.arange(session_length)[None, :] % 2 == 1, target, picks).ravel()
    return _inject(clean, start, stop, when, users, items, target)


def promotion_by_existing_accounts(
    clean: EventBatch, start: int, stop: int, share: float = 0.5, seed: int = 0
) -> Burst:
    """Events added during ``start:stop`` (`share` of the burst's events) in which users seen before the
    burst act on the target, the least popular item seen before it."""
    rng = np.random.default_rng(seed)
    ranked = _by_popularity(np.asarray(clean.item_id)[:start])
    target = int(ranked[-1])
    n = _injected(stop - start, share)
    times = clean.timestamp[start:stop]
    when = np.sort(rng.uniform(times.min(), times.max(), n))
    users = rng.choice(np.unique(np.asarray(clean.user_id)[:start]), size=n)
    return _inject(clean, start, stop, when, users, np.full(n, target), target)


def _injected(burst_events: int, share: float) -> int:
    """Events to add to a burst of clean ones so that the added make `share` of them all."""
    return int(round(burst_events * share / (1.0 - share)))


def _by_popularity(items: np.ndarray) -> np.ndarray:
    """Distinct items, most frequent first (ties by id)."""
    keys, counts = np.unique(items, return_counts=True)
    return keys[np.argsort(-counts, kind="stable")]


def _fresh_user_ids(clean: EventBatch, n: int) -> np.ndarray:
    return int(np.max(np.asarray(clean.user_id))) + 1 + np.arange(n, dtype=np.int64)


def _inject(
    clean: EventBatch,
    start: int,
    stop: int,
    times: np.ndarray,
    users: np.ndarray,
    items: np.ndarray,
    target: int,
) -> Burst:
    n = len(times)
    added = EventBatch(
        event_id=INJECTED_EVENT_IDS + np.arange(n, dtype=np.int64),
        timestamp=np.asarray(times, dtype=np.float64),
        user_id=np.asarray(users, dtype=np.int64),
        item_id=np.asarray(items, dtype=np.int64),
        kind=np.zeros(n, dtype=np.int8),
        value=np.full(n, np.nan),
    )
    middle = EventBatch.concat([clean.take(slice(start, stop)), added])
    middle = middle.take(np.argsort(middle.timestamp, kind="stable"))
    stream = EventBatch.concat([clean.take(slice(0, start)), middle, clean.take(slice(stop, None))])
    return Burst(stream, start, start + len(middle), clean, stop, target)


@dataclass
class DrillOutcome:
    """What a drill measured.

    Attributes
    ----------
    burst, recovery
        The gate's decisions during the burst (the last `GateConfig.history` of them) and on the clean
        events after it.
    served_hr
        HR@K the served versions gave the clean events after the burst, as users got them (each event
        ranked by the version serving when it came, with the live feature state).
    parameters_hr
        HR@K of the same versions on the same events ranked with the clean stream's feature state: the
        damage of the parameters alone, without what the burst left in histories and seen items (a user
        whose real item was replaced by noise may repeat it later, which the clean run excludes as seen).
    exposure
        Share of the clean events after the burst whose user would have been shown the target in the top
        K (ranked with the clean stream's feature state; None without a target).
    first_publish
        Clean events after the burst until the first version was published (None: none was).
    publisher
        The publisher at the end (its gate, guardrail and status).
    history
        The store's rollback history.
    """

    burst: list[GateDecision]
    recovery: list[GateDecision]
    served_hr: float
    parameters_hr: float
    exposure: float | None
    first_publish: int | None
    publisher: ModelPublisher
    history: list[dict]

    @property
    def published_in_burst(self) -> int:
        return sum(decision.published for decision in self.burst)

    def published_per_part(self, parts: int) -> list[int]:
        """Publications in each of `parts` equal runs of the decisions after the burst."""
        size = len(self.recovery) // parts
        return [sum(d.published for d in self.recovery[i * size : (i + 1) * size]) for i in range(parts)]


def drill(
    burst: Burst,
    model: Callable[[], Model],
    directory: str | Path,
    config: PublisherConfig | None = None,
    batch_size: int = 256,
    k: int = 10,
    keep_versions: int = 20,
) -> DrillOutcome:
    """Learn `burst.stream` in the live loop with a publish attempt after every micro-batch (interval 0
    unless `config` says otherwise), and measure what the served versions gave the clean events after it.
    The store in `directory` keeps `keep_versions` versions."""
    candidate = model()
    config = config or PublisherConfig(interval_ms=0)
    clean_features = LiveFeatures(FeatureConfig(history_length=candidate.history_length, negative_window=0))
    clean_features.observe(encode_events(burst.clean.take(slice(0, burst.clean_end))))
    target = None if burst.target is None else encode_ids(np.array([burst.target]))[0]
    with ModelStore(StoreConfig(directory, keep_versions=keep_versions, fsync=False)) as store:
        publisher = ModelPublisher(candidate, store, config, metadata={"model": candidate.name})
        # Every kind at 1: the burst is of views and the stream's kinds are random, so kind weights would
        # change the attack's strength, not what the guard does about it.
        weights = KindWeights.uniform()
        trainer = OnlineTrainer(candidate, TrainerConfig(batch_size=batch_size, k=k, kind_weights=weights))
        loop = TrainingLoop(trainer, publisher=publisher)
        loop.feed_events(burst.stream.take(slice(0, burst.start)))
        decided = publisher.gate.published + publisher.gate.held
        loop.feed_events(burst.stream.take(slice(burst.start, burst.end)))
        count = publisher.gate.published + publisher.gate.held - decided
        during = list(publisher.gate.decisions)[-count:] if count else []
        recovery, hits, shown, first_publish = [], [], [], None
        after = burst.stream.take(slice(burst.end, None))
        for start in range(0, len(after), batch_size):
            block = after.take(slice(start, start + batch_size))
            hit, seen = _ranked_with_clean_features(publisher.shadow, clean_features, block, target, k)
            hits.append(hit)
            shown.append(seen)
            published = publisher.gate.published
            loop.feed_events(block)
            recovery.extend(list(publisher.gate.decisions)[-1:])
            if first_publish is None and publisher.gate.published > published:
                first_publish = start + len(block)
        history = store.history()
    events = sum(decision.window_events for decision in recovery)
    served = sum(decision.serving_hr * decision.window_events for decision in recovery)
    return DrillOutcome(
        burst=during,
        recovery=recovery,
        served_hr=served / events if events else float("nan"),
        parameters_hr=float(np.mean(np.concatenate(hits))) if hits else float("nan"),
        exposure=float(np.mean(np.concatenate(shown))) if target is not None and shown else None,
        first_publish=first_publish,
        publisher=publisher,
        history=history,
    )


def _ranked_with_clean_features(
    model: Model, features: LiveFeatures, block: EventBatch, target: np.uint64 | None, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each event of `block` (observed now by the clean `features`): whether `model` ranks its item in
    the top `k`, and whether it ranks `target` there (seen items excluded, as a recommendation would)."""
    observed = features.observe(encode_events(block), candidates=True)
    candidates = observed.candidates
    assert candidates is not None
    ranks = rank_candidates(model, observed.query, candidates)
    hits = (ranks >= 0) & (ranks < k)
    if target is None:
        return hits, np.zeros(len(block), dtype=bool)
    column = CandidateSet.for_keys(candidates.candidates, np.full(len(block), target, dtype=np.uint64))
    asked = dataclasses.replace(candidates, targets=column.targets)
    shown = rank_candidates(model, observed.query, asked)
    return hits, (shown >= 0) & (shown < k)
