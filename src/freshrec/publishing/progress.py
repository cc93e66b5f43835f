"""The trainer's progress as servers show it (the dashboard, `/metrics`): prequential HR@K and NDCG@K over
event time, events learned per second, and the model's id tables, one point per gate decision.

It travels in the store's status document (``"trainer"``, beside the gate's ``"gate"``), which the trainer
replaces atomically and every server reads: no connection between the processes. The series is bounded
(`STATUS_POINTS`) and written as columns (`SERIES_FIELDS`, one list each), so the document stays small and
quick to write at every decision however long the stream runs; a restarted trainer continues the series
it finds in the store. Never reads the model's state, only its counters.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from freshrec.evaluation.prequential import RankingMetrics

__all__ = ["SERIES_FIELDS", "STATUS_POINTS", "TrainerProgress", "series_rows"]

#: Points of the series in the status document: one per gate decision, about one per publish interval
#: (10 minutes of the demo's), a few tens of kilobytes of JSON.
STATUS_POINTS = 600
#: The columns of the series: event time and wall time of the point (Unix seconds), events trained, the
#: running prequential HR@K and NDCG@K, the HR@K of the window the gate judged, events learned per second
#: since the previous point, and the tables' admitted / expired / evicted counters summed.
SERIES_FIELDS = (
    "event_time",
    "wall_time",
    "events_trained",
    "hr",
    "ndcg",
    "window_hr",
    "events_per_second",
    "admitted",
    "expired",
    "evicted",
)


class TrainerProgress:
    """Collects the figures between two gate decisions (`observe`) and adds a point per decision
    (`record`); `figures` is the status document's ``"trainer"`` part.

    >>> progress = TrainerProgress(clock=iter([100.0, 102.0]).__next__)
    >>> progress.observe(1_700_000_000.0, RankingMetrics(events=50, hr=0.2, ndcg=0.1), events_trained=50)
    >>> progress.record(window_hr=0.25, tables={})
    >>> progress.observe(1_700_000_060.0, RankingMetrics(events=250, hr=0.3, ndcg=0.15), events_trained=250)
    >>> progress.record(window_hr=0.32, tables={})
    >>> series = progress.figures()["series"]  # columns, one value per point
    >>> series["event_time"], series["hr"], series["events_per_second"]
    ([1700000000.0, 1700000060.0], [0.2, 0.3], [None, 100.0])
    """

    def __init__(self, points: int = STATUS_POINTS, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._series: deque[tuple[Any, ...]] = deque(maxlen=points)
        self._event_time = -math.inf
        self._prequential: RankingMetrics | None = None
        self._events_trained = 0
        self._learning_events_per_second: float | None = None
        self._tables: dict[str, dict[str, int]] = {}
        self._last: tuple[float, int] | None = None  # wall time and events trained at the last point

    def observe(self, event_time: float, prequential: RankingMetrics | None, events_trained: int) -> None:
        """A training step: the newest event time it learned, the running prequential figures and the
        events trained so far."""
        if math.isfinite(event_time):
            self._event_time = max(self._event_time, event_time)
        if prequential is not None:
            self._prequential = prequential
        self._events_trained = events_trained

    def note_speed(self, learning_events_per_second: float) -> None:
        """The trainer's learning speed: events/s of its feature updates and learning steps alone, what it
        could learn if events came faster (the series' ``events_per_second`` is what it did learn)."""
        if learning_events_per_second > 0:
            self._learning_events_per_second = learning_events_per_second

    def record(self, window_hr: float | None, tables: dict[str, dict[str, int]]) -> None:
        """A gate decision: add a point (when a step was observed since the stream began) with the HR@K
        of the window just judged and the tables' sizes now."""
        self._tables = tables
        if not math.isfinite(self._event_time):
            return
        now = self._clock()
        rate = None
        if self._last is not None and now > self._last[0]:
            rate = max(self._events_trained - self._last[1], 0) / (now - self._last[0])
        self._last = (now, self._events_trained)
        prequential = self._prequential
        self._series.append(
            (
                self._event_time,
                round(now, 3),
                self._events_trained,
                _rounded(prequential.hr) if prequential is not None else None,
                _rounded(prequential.ndcg) if prequential is not None else None,
                _rounded(window_hr),
                _rounded(rate),
                _total(tables, "admitted"),
                _total(tables, "expired"),
                _total(tables, "evicted"),
            )
        )

    def figures(self) -> dict[str, Any]:
        """The latest figures and the series, as plain JSON (None for what is not measured yet)."""
        last = dict(zip(SERIES_FIELDS, self._series[-1], strict=True)) if self._series else {}
        prequential = self._prequential
        return {
            "events_trained": self._events_trained,
            "event_time": self._event_time if math.isfinite(self._event_time) else None,
            "hr": _rounded(prequential.hr) if prequential is not None else None,
            "ndcg": _rounded(prequential.ndcg) if prequential is not None else None,
            "events_evaluated": prequential.events if prequential is not None else None,
            "events_per_second": last.get("events_per_second"),
            "learning_events_per_second": _rounded(self._learning_events_per_second),
            "tables": self._tables,
            "series": self._columns(),
        }

    def _columns(self) -> dict[str, list[Any]]:
        columns: list[list[Any]] = [[] for _ in SERIES_FIELDS]
        for point in self._series:
            for column, value in zip(columns, point, strict=True):
                column.append(value)
        return dict(zip(SERIES_FIELDS, columns, strict=True))

    def resume(self, saved: dict[str, Any] | None) -> None:
        """Continue the series of a status document's ``"trainer"`` part (a restarted trainer's)."""
        series = saved.get("series") if saved else None
        if not isinstance(series, dict):
            return
        self._series.extend(tuple(row.get(name) for name in SERIES_FIELDS) for row in series_rows(series))


def _rounded(value: float | None) -> float | None:
    return round(float(value), 6) if value is not None and math.isfinite(value) else None


def _total(tables: dict[str, dict[str, int]], counter: str) -> int | None:
    """The sum of one counter over the tables that keep it (None when none does: a count model)."""
    values = [sizes[counter] for sizes in tables.values() if counter in sizes]
    return sum(values) if values else None


def series_rows(series: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The points of a status document's columns, one dict each (missing columns: None).

    >>> series_rows({"event_time": [1.0, 2.0], "hr": [0.1, 0.2]})[1]["hr"]
    0.2
    """
    columns = [series.get(name) for name in SERIES_FIELDS]
    length = min((len(c) for c in columns if isinstance(c, list)), default=0)
    return [
        {
            name: column[i] if isinstance(column, list) else None
            for name, column in zip(SERIES_FIELDS, columns, strict=True)
        }
        for i in range(length)
    ]
