"""The reference systems of PROTOCOL.md, as straightforward, separate implementations: the fixed yardstick
that freshrec's own models are measured against.

Each reference keeps dense numpy matrices (fine for MovieLens' 1.7k items) and runs the strict protocol one
event at a time (B = 1): score every item seen so far in the stream, exclude the items the user already acted
on, rank the event's item (ties broken by first-seen order), then learn the event. These sketches must never
import freshrec's models or evaluation: they are the independent check on them, and they are not meant for
large catalogues (memory grows with items x items).

>>> users, items = np.array([1, 2, 3]), np.array([10, 10, 10])
>>> run_popularity(users, items, np.arange(3.0))["hr"]  # the first event introduces item 10: a miss
0.6666666666666666
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

_SECONDS_PER_DAY = 86_400.0
#: Fraction of the stream, at its end, reported separately (the model has warmed up).
_LAST_FRACTION = 0.2
#: Weight of an item's count added to co-occurrence scores: it only orders equal scores by popularity
#: (cold users get popular items); the PROTOCOL figures were measured with it.
_TIE_BREAK = 1e-9


class DenseReference(Protocol):
    """A B = 1 reference model over dense user and item indices (items numbered in first-seen order)."""

    def scores(self, user: int, timestamp: float) -> np.ndarray:
        """float64 scores of items ``0..n`` (at least every item seen so far); higher is better."""
        ...

    def learn(self, user: int, item: int, timestamp: float) -> None:
        """Take in one event (called after the event was scored)."""
        ...


def _dense_codes(ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense codes 0..n-1 of `ids`, numbered in order of first appearance, and n."""
    unique, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    code_of_unique = np.empty(len(unique), dtype=np.int64)
    code_of_unique[np.argsort(first, kind="stable")] = np.arange(len(unique))
    return code_of_unique[inverse.reshape(-1)], len(unique)


def prequential_top_k(
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    timestamps: np.ndarray,
    make_reference: Callable[[int, int], DenseReference],
    k: int = 10,
) -> dict[str, float]:
    """Test-then-train HR@K / NDCG@K of a reference over a stream, one event at a time (B = 1).

    Parameters
    ----------
    user_ids, item_ids, timestamps
        The stream; it is replayed in timestamp order (a stable sort: ties keep the given order).
    make_reference
        Builds the reference from (number of users, number of items).
    k
        Cut-off of the top-K list.

    Returns
    -------
    dict
        ``hr``, ``ndcg`` over all events, ``hr_last20``, ``ndcg_last20`` over the last 20% of the events,
        ``events_per_second`` of the loop (scoring of all items included).
    """
    order = np.argsort(np.asarray(timestamps, dtype=np.float64), kind="stable")
    times = np.asarray(timestamps, dtype=np.float64)[order]
    users, n_users = _dense_codes(np.asarray(user_ids)[order])
    items, n_items = _dense_codes(np.asarray(item_ids)[order])
    n = len(times)
    reference = make_reference(n_users, n_items)
    seen = np.zeros((n_users, n_items), dtype=bool)
    hits = np.zeros(n, dtype=np.float64)
    gains = np.zeros(n, dtype=np.float64)
    known = 0  # items 0..known-1 have been seen: first-seen numbering makes "seen so far" a prefix

    started = time.perf_counter()
    for event, (user, item, timestamp) in enumerate(
        zip(users.tolist(), items.tolist(), times.tolist(), strict=True)
    ):
        if item < known:  # an item first seen at this event cannot be recommended: a miss
            scores = reference.scores(user, timestamp)[:known].astype(np.float64, copy=True)
            target = scores[item]
            scores[seen[user, :known]] = -np.inf
            scores[item] = target  # a repeat of an item the user saw is ranked by its own score
            rank = int(np.count_nonzero(scores > target) + np.count_nonzero(scores[:item] == target))
            if rank < k:
                hits[event] = 1.0
                gains[event] = 1.0 / np.log2(rank + 2.0)
        reference.learn(user, item, timestamp)
        seen[user, item] = True
        known = max(known, item + 1)
    seconds = time.perf_counter() - started

    tail = slice(int(n * (1.0 - _LAST_FRACTION)), n)
    return {
        "hr": float(hits.mean()) if n else 0.0,
        "ndcg": float(gains.mean()) if n else 0.0,
        "hr_last20": float(hits[tail].mean()) if n else 0.0,
        "ndcg_last20": float(gains[tail].mean()) if n else 0.0,
        "events_per_second": n / seconds if seconds > 0 else 0.0,
    }


class GlobalPopularity:
    """Count of each item so far."""

    def __init__(self, n_users: int, n_items: int) -> None:
        self.counts = np.zeros(n_items, dtype=np.float64)

    def scores(self, user: int, timestamp: float) -> np.ndarray:
        return self.counts

    def learn(self, user: int, item: int, timestamp: float) -> None:
        self.counts[item] += 1.0


class DecayedPopularity:
    """Sum over an item's events of ``2 ** (-age / half_life)``, kept per item with the time of its update."""

    def __init__(self, n_users: int, n_items: int, half_life_days: float = 7.0) -> None:
        self.half_life = half_life_days * _SECONDS_PER_DAY
        self.counts = np.zeros(n_items, dtype=np.float64)
        self.updated = np.zeros(n_items, dtype=np.float64)

    def scores(self, user: int, timestamp: float) -> np.ndarray:
        return self.counts * np.exp2(-(timestamp - self.updated) / self.half_life)

    def learn(self, user: int, item: int, timestamp: float) -> None:
        age = timestamp - self.updated[item]
        self.counts[item] = self.counts[item] * np.exp2(-age / self.half_life) + 1.0
        self.updated[item] = timestamp


class IncrementalSGD:
    """ISGD (Vinagre, Jorge & Gama 2014): positive-only incremental matrix factorisation.

    Each event pulls ``a_u . b_i`` towards 1 by one SGD step on the user vector, then on the item vector
    (with the updated user vector), as in the paper's Algorithm 1. Vectors start at N(0, 0.1) when the user
    or item first appears.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        factors: int = 10,
        learning_rate: float = 0.05,
        regularization: float = 0.01,
        seed: int = 0,
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.factors = factors
        self.users = np.zeros((n_users, factors), dtype=np.float64)
        self.items = np.zeros((n_items, factors), dtype=np.float64)
        self.user_started = np.zeros(n_users, dtype=bool)
        self.item_started = np.zeros(n_items, dtype=bool)
        self.learning_rate = learning_rate
        self.regularization = regularization

    def scores(self, user: int, timestamp: float) -> np.ndarray:
        if not self.user_started[user]:
            self.users[user] = self.rng.normal(0.0, 0.1, self.factors)
            self.user_started[user] = True
        return self.items @ self.users[user]

    def learn(self, user: int, item: int, timestamp: float) -> None:
        if not self.user_started[user]:
            self.users[user] = self.rng.normal(0.0, 0.1, self.factors)
            self.user_started[user] = True
        if not self.item_started[item]:
            self.items[item] = self.rng.normal(0.0, 0.1, self.factors)
            self.item_started[item] = True
        a, b = self.users[user], self.items[item]
        error = 1.0 - float(a @ b)
        a += self.learning_rate * (error * b - self.regularization * a)
        b += self.learning_rate * (error * a - self.regularization * b)


class RecentCooccurrence:
    """Symmetric item co-occurrence counts between each event's item and the user's last `history` items.

    On event (u, i) with u's last `history` items h, ``C[h, i]`` and ``C[i, h]`` grow by 1 (by
    ``recency ** age`` in the tuned variant, age 0 = the most recent); u's score of c is
    ``sum_h recency ** age(h) * C[h, c]``, divided by ``(count(c) + 1) ** exponent``, plus a tiny
    popularity tie-breaker.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        history: int = 20,
        recency: float = 1.0,
        exponent: float = 0.0,
        weigh_learning: bool = False,
    ) -> None:
        self.matrix = np.zeros((n_items, n_items), dtype=np.float64)
        self.counts = np.zeros(n_items, dtype=np.float64)
        self.histories: list[list[int]] = [[] for _ in range(n_users)]
        self.history = history
        # weights[-1] is the most recent item's (age 0).
        self.weights = recency ** np.arange(history - 1, -1, -1, dtype=np.float64)
        self.exponent = exponent
        self.weigh_learning = weigh_learning

    def scores(self, user: int, timestamp: float) -> np.ndarray:
        recent = self.histories[user]
        tie_break = _TIE_BREAK * self.counts
        if not recent:
            return tie_break
        scores = self.weights[-len(recent) :] @ self.matrix[recent]
        if self.exponent:
            scores = scores / (self.counts + 1.0) ** self.exponent
        return scores + tie_break

    def learn(self, user: int, item: int, timestamp: float) -> None:
        recent = self.histories[user]
        if recent:
            amount = self.weights[-len(recent) :] if self.weigh_learning else np.ones(len(recent))
            # np.add.at: an item repeated in the history adds once per occurrence.
            np.add.at(self.matrix, (recent, item), amount)
            np.add.at(self.matrix, (item, recent), amount)
        self.counts[item] += 1.0
        recent.append(item)
        if len(recent) > self.history:
            del recent[0]


Result = dict[str, float]


def run_popularity(user_ids: np.ndarray, item_ids: np.ndarray, timestamps: np.ndarray, k: int = 10) -> Result:
    """Global popularity so far (PROTOCOL: HR@10 0.0769, NDCG@10 0.0373 on MovieLens-100K)."""
    return prequential_top_k(user_ids, item_ids, timestamps, GlobalPopularity, k)


def run_popularity_decayed(
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    timestamps: np.ndarray,
    k: int = 10,
    half_life_days: float = 7.0,
) -> Result:
    """Popularity decayed with a half-life in event time (PROTOCOL, 7 days: HR@10 0.0771, NDCG@10 0.0384)."""

    def make(n_users: int, n_items: int) -> DenseReference:
        return DecayedPopularity(n_users, n_items, half_life_days)

    return prequential_top_k(user_ids, item_ids, timestamps, make, k)


def run_isgd(
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    timestamps: np.ndarray,
    k: int = 10,
    factors: int = 10,
    learning_rate: float = 0.05,
    regularization: float = 0.01,
    seed: int = 0,
) -> Result:
    """ISGD incremental MF, k=10, lr 0.05, reg 0.01 (PROTOCOL: HR@10 0.0555, NDCG@10 0.0269; the figure
    moves by about +-0.001 with the random initialisation, i.e. with `seed`)."""

    def make(n_users: int, n_items: int) -> DenseReference:
        return IncrementalSGD(n_users, n_items, factors, learning_rate, regularization, seed)

    return prequential_top_k(user_ids, item_ids, timestamps, make, k)


def run_cooccurrence(
    user_ids: np.ndarray, item_ids: np.ndarray, timestamps: np.ndarray, k: int = 10, history: int = 20
) -> Result:
    """Item co-occurrence with the user's last 20 items (PROTOCOL: HR@10 0.1627, NDCG@10 0.0835)."""

    def make(n_users: int, n_items: int) -> DenseReference:
        return RecentCooccurrence(n_users, n_items, history)

    return prequential_top_k(user_ids, item_ids, timestamps, make, k)


def run_cooccurrence_tuned(
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    timestamps: np.ndarray,
    k: int = 10,
    history: int = 20,
    recency: float = 0.9,
    exponent: float = 0.5,
) -> Result:
    """Co-occurrence, last 20 items weighted 0.9^age, score / (item count + 1)^0.5 (PROTOCOL: HR@10 0.1949,
    NDCG@10 0.1010). The counts are plain (not recency-weighted), as in the PROTOCOL run."""

    def make(n_users: int, n_items: int) -> DenseReference:
        return RecentCooccurrence(n_users, n_items, history, recency, exponent)

    return prequential_top_k(user_ids, item_ids, timestamps, make, k)
