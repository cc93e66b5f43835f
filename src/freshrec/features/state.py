"""The live feature state: everything that moves event by event rather than by gradient steps, advanced by
one call per batch.

- each user's recent items, with their times (and values, for models that read them): `UserHistory`;
- the items each user has acted on, excluded from their recommendations: `SeenItems`;
- the catalogue of items seen so far, the candidates of every ranking: `Catalogue`;
- the recent item occurrences negatives are drawn from: `RecentItemSampler`.

`LiveFeatures.observe` advances all of them through a batch, in event order, and returns what each event
saw just before it (its query, the candidates it is ranked against, its sampled negatives). The trainer,
the server's log follower, the cadence study and the library API all advance their feature state through
it and nowhere else. It never learns parameters and never looks ahead: an event's query and candidates
hold only what came before it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from freshrec.events import KindWeights
from freshrec.features.catalogue import CandidateSet, Catalogue
from freshrec.features.history import HistoryConfig, UserHistory
from freshrec.features.sampler import RecentItemSampler
from freshrec.features.seen import SeenConfig, SeenItems
from freshrec.interactions import EncodedBatch, Interactions, Query
from freshrec.model_state import State, under_prefix, with_prefix

__all__ = ["FeatureConfig", "LiveFeatures", "ObservedBatch"]

_NO_ITEMS = np.zeros(0, dtype=np.uint64)


@dataclass
class FeatureConfig:
    """What the live feature state keeps.

    Parameters
    ----------
    history_length
        Items remembered per user (the longest history any model reads; 0: none).
    history_values
        Also keep each history event's value, for models that read `Query.history_values`.
    user_capacity
        Users remembered at once (history and seen items); the least recently active are forgotten.
    seen_items
        Keep each user's seen items (what rankings exclude).
    catalogue
        Keep the catalogue of items seen so far (the candidates of rankings).
    negative_window
        Recent item occurrences negatives are drawn from (0: no sampler, no negatives).
    seed
        Seeds the negative sampler.
    """

    history_length: int = 50
    history_values: bool = False
    user_capacity: int = 1_000_000
    seen_items: bool = True
    catalogue: bool = True
    negative_window: int = 20_000
    seed: int = 0


@dataclass
class ObservedBatch:
    """A batch as the feature state saw it, before anything was learned from it.

    Attributes
    ----------
    batch
        The events.
    query
        Each event's user, time and history just before it (earlier events of the batch included).
    negatives
        uint64 [B, M] items drawn from the recent occurrences before the batch (None when none asked).
    candidates
        What ranking the batch needs (None when not asked for): the catalogue with the items first
        seen in the batch, and each event's exclusions.
    history_seconds, candidate_seconds, negative_seconds
        Where the call's time went (the trainer reports them as features, scoring and learning time).
    """

    batch: EncodedBatch
    query: Query
    negatives: np.ndarray | None
    candidates: CandidateSet | None
    history_seconds: float = 0.0
    candidate_seconds: float = 0.0
    negative_seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.batch)

    def interactions(self, kind_weights: KindWeights | None = None) -> Interactions:
        """What a model learns from: the queries, positives, values, kinds, negatives and each event's
        weight by its kind (none without `kind_weights`)."""
        batch = self.batch
        negatives = self.negatives if self.negatives is not None else np.zeros((len(batch), 0), np.uint64)
        weights = None if kind_weights is None else kind_weights.of(batch.kinds)
        return Interactions(self.query, batch.item_keys, batch.values, batch.kinds, negatives, weights)


class LiveFeatures:
    """Histories, seen items, catalogue and negative sampler, advanced together by `observe`.

    >>> features = LiveFeatures(FeatureConfig(history_length=2, user_capacity=10, negative_window=8))
    >>> seen = features.observe(EncodedBatch.of([1, 1, 2], [10, 11, 10], [1.0, 2.0, 3.0]), negatives=2,
    ...                         candidates=True)
    >>> seen.query.history_keys.tolist()  # user 1's second event sees its first
    [[0, 0], [0, 10], [0, 0]]
    >>> seen.candidates.targets.tolist(), seen.negatives.shape  # first sightings are not rankable
    ([-1, -1, 0], (3, 2))
    >>> features.seen_items(1).tolist(), len(features.catalogue)
    ([10, 11], 2)
    """

    def __init__(self, config: FeatureConfig | None = None) -> None:
        self.config = config = config or FeatureConfig()
        self.history = UserHistory(
            HistoryConfig(config.history_length, config.user_capacity, config.history_values)
        )
        self.seen = SeenItems(SeenConfig(capacity=config.user_capacity)) if config.seen_items else None
        self.catalogue = Catalogue() if config.catalogue else None
        self.sampler = (
            RecentItemSampler(config.negative_window, config.seed) if config.negative_window > 0 else None
        )

    def observe(self, batch: EncodedBatch, negatives: int = 0, candidates: bool = False) -> ObservedBatch:
        """Advance every part through `batch`, event by event, and return what each event saw before it.

        Parameters
        ----------
        negatives
            Items to draw per event from the recent occurrences before the batch (needs a sampler).
        candidates
            Also build the batch's `CandidateSet` (needs the catalogue and the seen items).
        """
        started = time.perf_counter()
        users, items, times = batch.user_keys, batch.item_keys, batch.timestamps
        query = self.history.query_and_record(users, items, times, batch.values)
        history_done = time.perf_counter()
        candidate_set = None
        if candidates:
            if self.catalogue is None or self.seen is None:
                raise ValueError("candidates need a feature state that keeps the catalogue and seen items")
            candidate_set = CandidateSet.prepare(self.catalogue, self.seen, query, items)
        elif self.catalogue is not None:
            self.catalogue.add(items)
        if self.seen is not None:
            self.seen.record(users, items, times)
        candidates_done = time.perf_counter()
        drawn = None
        if self.sampler is not None:
            if negatives:
                drawn = self.sampler.sample(len(batch), negatives, fallback=items)
            self.sampler.add(items)
        elif negatives:
            raise ValueError("negatives need a feature state with a negative sampler (negative_window > 0)")
        return ObservedBatch(
            batch,
            query,
            drawn,
            candidate_set,
            history_seconds=history_done - started,
            candidate_seconds=candidates_done - history_done,
            negative_seconds=time.perf_counter() - candidates_done,
        )

    def query(self, user_keys: np.ndarray, timestamps: np.ndarray, length: int | None = None) -> Query:
        """The users' queries now (their last `length` items, all kept ones by default), recording
        nothing: what a request is answered from."""
        if length == 0 or self.history.length == 0:
            return Query.without_history(user_keys, timestamps)
        query = self.history.query(user_keys, timestamps)
        if length is not None and length < query.history_length:
            query.history_keys = query.history_keys[:, -length:]
            query.history_times = query.history_times[:, -length:]
            if query.history_values is not None:
                query.history_values = query.history_values[:, -length:]
        return query

    def seen_items(self, user_key: int) -> np.ndarray:
        """uint64 keys of the items the user acted on (empty when seen items are not kept)."""
        return self.seen.items_of(user_key) if self.seen is not None else _NO_ITEMS

    @property
    def candidates(self) -> np.ndarray:
        """uint64 keys of every item seen so far, in first-seen order (empty without a catalogue)."""
        return self.catalogue.keys if self.catalogue is not None else _NO_ITEMS

    # ------------------------------------------------------------------ state
    def _parts(self) -> dict[str, object]:
        parts: dict[str, object] = {"history.": self.history}
        for prefix, part in (
            ("seen.", self.seen),
            ("catalogue.", self.catalogue),
            ("sampler.", self.sampler),
        ):
            if part is not None:
                parts[prefix] = part
        return parts

    def state_dict(self) -> State:
        """Every part's state under its prefix (``history.``, ``seen.``, ``catalogue.``, ``sampler.``)."""
        state: State = {}
        for prefix, part in self._parts().items():
            state.update(with_prefix(part.state_dict(), prefix))  # type: ignore[attr-defined]
        return state

    def load_state_dict(self, state: State) -> None:
        """Restore `state_dict` output of a feature state with the same config."""
        for prefix, part in self._parts().items():
            part.load_state_dict(under_prefix(state, prefix))  # type: ignore[attr-defined]
