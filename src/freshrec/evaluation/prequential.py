"""Prequential (test-then-train) ranking metrics, exactly as the protocol defines them.

For every event (user u, item i) the model ranks all items seen so far in the stream, excluding the items u
already acted on; HR@K counts i in the top K, NDCG@K adds 1/log2(rank+2). Every event counts, cold users
included. Results are kept overall, per fixed block of events (for sliding windows and "the last 20%"), and
never as one number per event, so memory stays bounded on an endless stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from freshrec.features.catalogue import CandidateSet
    from freshrec.interactions import Query
    from freshrec.models.base import Model


@dataclass
class RankingMetrics:
    """Aggregated figures of a stretch of the stream."""

    events: int
    hr: float
    ndcg: float
    rmse: float | None = None
    mae: float | None = None

    def as_dict(self, k: int) -> dict[str, float | int | None]:
        return {
            "events": self.events,
            f"hr@{k}": self.hr,
            f"ndcg@{k}": self.ndcg,
            "rmse": self.rmse,
            "mae": self.mae,
        }


def ranks_of_targets(
    scores: np.ndarray, target_columns: np.ndarray, excluded_rows: np.ndarray, excluded_columns: np.ndarray
) -> np.ndarray:
    """The 0-based rank of each row's target among the non-excluded columns; -1 where the target is absent.

    Ties are broken by column order (a stable sort by descending score), so a model gains nothing from
    scoring everything equal. Excluded cells never count; an excluded target (a repeat) is a miss.

    >>> scores = np.array([[0.9, 0.5, 0.7], [0.1, 0.1, 0.1]], dtype=np.float32)
    >>> ranks_of_targets(scores, np.array([1, 2]), np.array([0]), np.array([0])).tolist()
    [1, 2]
    """
    n = scores.shape[0]
    ranks = np.full(n, -1, dtype=np.int64)
    present = target_columns >= 0
    if not present.any():
        return ranks
    rows = np.flatnonzero(present)
    targets = target_columns[rows]
    # Two passes over the [rows, C] scores (">" and "=="), the excluded cells corrected one by one
    # afterwards: at 100,000 candidates this ranking is most of what a live trainer's evaluation and
    # publish gate cost, so no mask matrix is built.
    sub = scores if len(rows) == n else scores[rows]
    sub = sub.astype(np.float32, copy=False)
    if not np.isfinite(sub.sum(dtype=np.float64)):  # cheap NaN test; an inf also takes this exact path
        nan = np.isnan(sub)
        if nan.any():  # a NaN score must never look like a hit: it ranks as -inf (last, ties by column)
            sub = np.where(nan, np.float32(-np.inf), sub)
    picked = np.arange(len(rows))
    target_scores = sub[picked, targets][:, None]
    better = np.count_nonzero(sub > target_scores, axis=1)
    equal = sub == target_scores
    tied = np.count_nonzero(equal, axis=1)  # the target itself included
    tied_before = np.zeros(len(rows), dtype=np.int64)
    for row in np.flatnonzero(tied > 1):  # exact ties are rare with real-valued scores
        tied_before[row] = np.count_nonzero(equal[row, : targets[row]])
    # Excluded cells (each counted once) leave the counts they were in; an excluded target (a repeat the
    # user had already acted on) is not in the list, so it cannot be a hit.
    row_to_sub = np.full(n, -1, dtype=np.int64)
    row_to_sub[rows] = picked
    sub_rows = row_to_sub[excluded_rows]
    keep = (sub_rows >= 0) & (excluded_columns >= 0)
    width = np.int64(sub.shape[1])
    cells = np.unique(sub_rows[keep] * width + excluded_columns[keep])
    cell_rows, cell_columns = cells // width, cells % width
    values, target_of_cell = sub[cell_rows, cell_columns], target_scores[cell_rows, 0]
    np.subtract.at(better, cell_rows, values > target_of_cell)
    np.subtract.at(tied_before, cell_rows, (values == target_of_cell) & (cell_columns < targets[cell_rows]))
    target_excluded = np.zeros(len(rows), dtype=bool)
    target_excluded[cell_rows[cell_columns == targets[cell_rows]]] = True
    ranks[rows] = np.where(target_excluded, -1, better + tied_before)
    return ranks


def rank_candidates(model: Model, query: Query, candidates: CandidateSet) -> np.ndarray:
    """Each event's target rank under `model` among `candidates` (-1: not rankable): one `Model.score`
    over every candidate, then `ranks_of_targets`. The trainer's evaluation, the publish gate's second
    opinion and the cadence study all rank through it."""
    if len(candidates.targets) == 0:  # a sampled evaluation may rank no event of a small batch
        return np.zeros(0, dtype=np.int64)
    scores = model.score(query, candidates.candidates)
    return ranks_of_targets(scores, candidates.targets, candidates.excluded_rows, candidates.excluded_columns)


@dataclass
class PrequentialEvaluator:
    """Accumulates HR@K / NDCG@K (and RMSE / MAE when ratings are predicted) over a stream.

    Parameters
    ----------
    k
        Cut-off of the top-K list.
    block_size
        Events per block; windows and the final-fraction figures are built from whole blocks.
    """

    k: int = 10
    block_size: int = 100
    _hits: list[float] = field(default_factory=list)
    _gains: list[float] = field(default_factory=list)
    _counts: list[int] = field(default_factory=list)
    _squared_errors: list[float] = field(default_factory=list)
    _absolute_errors: list[float] = field(default_factory=list)
    _rated: list[int] = field(default_factory=list)
    _total_hits: float = 0.0
    _total_gains: float = 0.0

    def add(
        self,
        ranks: np.ndarray,
        predicted_ratings: np.ndarray | None = None,
        observed_ratings: np.ndarray | None = None,
    ) -> None:
        """Record one micro-batch, in event order.

        Parameters
        ----------
        ranks
            Each event's target rank (-1: not rankable, e.g. an item never seen before: a miss).
        predicted_ratings, observed_ratings
            Rating predictions made before learning, and the ratings; NaN observations are skipped.
        """
        hits = (ranks >= 0) & (ranks < self.k)
        gains = np.where(hits, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
        errors = np.full(len(ranks), np.nan)
        if predicted_ratings is not None and observed_ratings is not None:
            errors = np.asarray(predicted_ratings, dtype=np.float64) - observed_ratings
        self._total_hits += float(hits.sum())
        self._total_gains += float(gains.sum())
        offset, n = 0, len(ranks)
        while offset < n:
            if not self._counts or self._counts[-1] == self.block_size:
                for column in (self._hits, self._gains, self._squared_errors, self._absolute_errors):
                    column.append(0.0)
                self._counts.append(0)
                self._rated.append(0)
            part = slice(offset, offset + self.block_size - self._counts[-1])
            h, g, e = hits[part], gains[part], errors[part]
            rated = np.isfinite(e)
            self._hits[-1] += float(h.sum())
            self._gains[-1] += float(g.sum())
            self._squared_errors[-1] += float(np.sum(e[rated] ** 2))
            self._absolute_errors[-1] += float(np.sum(np.abs(e[rated])))
            self._rated[-1] += int(rated.sum())
            self._counts[-1] += len(h)
            offset += len(h)

    @property
    def events(self) -> int:
        return (len(self._counts) - 1) * self.block_size + self._counts[-1] if self._counts else 0

    def running(self) -> RankingMetrics:
        """Overall HR and NDCG so far in O(1) (for progress displays; no rating figures)."""
        events = self.events
        return RankingMetrics(
            events=events,
            hr=self._total_hits / events if events else 0.0,
            ndcg=self._total_gains / events if events else 0.0,
        )

    def summary(self, first_block: int = 0, last_block: int | None = None) -> RankingMetrics:
        """Metrics over blocks [first_block, last_block)."""
        part = slice(first_block, last_block)
        events = int(sum(self._counts[part]))
        rated = int(sum(self._rated[part]))
        hr = sum(self._hits[part]) / events if events else 0.0
        ndcg = sum(self._gains[part]) / events if events else 0.0
        rmse = float(np.sqrt(sum(self._squared_errors[part]) / rated)) if rated else None
        mae = sum(self._absolute_errors[part]) / rated if rated else None
        return RankingMetrics(events=events, hr=hr, ndcg=ndcg, rmse=rmse, mae=mae)

    def final_fraction(self, fraction: float = 0.2) -> RankingMetrics:
        """Metrics over the last `fraction` of the events so far (to the nearest block)."""
        start_event = self.events * (1.0 - fraction)
        return self.summary(first_block=int(round(start_event / self.block_size)))

    def windows(self, window_events: int) -> list[RankingMetrics]:
        """Consecutive windows of about `window_events` events each (whole blocks)."""
        per = max(1, round(window_events / self.block_size))
        return [self.summary(i, i + per) for i in range(0, len(self._counts), per)]

    def state_dict(self) -> dict[str, np.ndarray]:
        """The per-block sums and the totals (a restarted trainer's figures continue, never count twice).

        >>> evaluator = PrequentialEvaluator(k=2)
        >>> evaluator.add(np.array([0, 5, 1]))
        >>> again = PrequentialEvaluator(k=2)
        >>> again.load_state_dict(evaluator.state_dict())
        >>> again.summary() == evaluator.summary()
        True
        """
        state = {name: np.array(getattr(self, "_" + name), np.float64) for name in _BLOCK_SUMS}
        state["counts"] = np.array(self._counts, np.int64)
        state["rated"] = np.array(self._rated, np.int64)
        state["totals"] = np.array([self._total_hits, self._total_gains], np.float64)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        for name in _BLOCK_SUMS:
            setattr(self, "_" + name, [float(v) for v in state[name]])
        self._counts = [int(v) for v in state["counts"]]
        self._rated = [int(v) for v in state["rated"]]
        self._total_hits, self._total_gains = (float(v) for v in state["totals"])


#: The float sums `PrequentialEvaluator` keeps per block.
_BLOCK_SUMS = ("hits", "gains", "squared_errors", "absolute_errors")
