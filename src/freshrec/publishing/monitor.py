"""Figures of the stream the trainer learns from, for `/metrics`: loss spikes, and shifts of the input (event
rate, share of events from users or on items never seen before).

They are reported, never acted on: a surge of new users or a faster stream is often real (a campaign, a
launch), so these are for an operator's alerts, next to the gate's and the guardrail's own counters. A
figure that cannot be measured (no loss for a count-based model, no history kept) is None, never NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from freshrec.evaluation.gate import RunningLevel, ScoredBatch
from freshrec.interactions import NO_KEY


@dataclass
class MonitorConfig:
    """How the stream figures are smoothed.

    Parameters
    ----------
    windows
        Running means follow about this many values: gate windows for the input shares and the event
        rate, training steps for the loss.
    warmup
        Values before a running mean is reported (and before a loss can count as a spike).
    spike_z
        A loss is a spike when it exceeds its running mean by this many running standard deviations.
    """

    windows: int = 20
    warmup: int = 5
    spike_z: float = 4.0


class StreamMonitor:
    """Accumulates the figures of each gate window (`observe` per step, `close_window` per decision).

    >>> from freshrec.features.catalogue import CandidateSet
    >>> from freshrec.interactions import Query
    >>> history = np.array([[0, 0], [0, 5]], dtype=np.uint64)  # the first event's user has no history
    >>> query = Query(np.array([1, 2], np.uint64), np.array([0.0, 10.0]), history, np.zeros((2, 2)))
    >>> candidates = CandidateSet.for_keys(np.array([5], np.uint64), np.array([5, 6], np.uint64))
    >>> monitor = StreamMonitor()
    >>> monitor.observe(ScoredBatch(candidates, np.array([0, -1]), query), loss=None, events=2)
    >>> monitor.close_window()
    >>> figures = monitor.figures()
    >>> figures["unknown_user_share"], figures["unknown_item_share"], figures["event_rate"]
    (0.5, 0.5, 0.1)
    """

    def __init__(self, config: MonitorConfig | None = None) -> None:
        self.config = config = config or MonitorConfig()
        self.loss_spikes = 0
        self.loss_last: float | None = None
        self._loss = RunningLevel(config.windows, config.warmup)
        self._loss_variance = 0.0
        self._means = {name: RunningLevel(config.windows, config.warmup) for name in _SHIFTS}
        self._last: dict[str, float | None] = dict.fromkeys(_SHIFTS)
        self._reset_window()

    def _reset_window(self) -> None:
        self._events = 0
        self._scored = 0
        self._users_measured = 0
        self._unknown_users = 0
        self._unknown_items = 0
        self._first_time = math.inf
        self._last_time = -math.inf

    def observe(self, scored: ScoredBatch, loss: float | None, events: int) -> None:
        """One training step: the events it scored (`scored`), its loss, the events it learned."""
        self._observe_loss(loss)
        self._events += events
        n = len(scored.candidates.targets)
        if n == 0:
            return
        self._scored += n
        self._unknown_items += int(np.count_nonzero(scored.candidates.targets < 0))
        history = scored.query.history_keys
        if history.ndim == 2 and history.shape[1] > 0:
            self._users_measured += n
            self._unknown_users += int(np.count_nonzero((history == NO_KEY).all(axis=1)))
        times = scored.query.timestamps
        self._first_time = min(self._first_time, float(np.min(times)))
        self._last_time = max(self._last_time, float(np.max(times)))

    def _observe_loss(self, loss: float | None) -> None:
        if loss is None or not math.isfinite(loss):
            return  # a non-finite loss is the gate's to refuse, not a spike of a running mean
        level = self._loss
        if level.count >= self.config.warmup:
            deviation = self.config.spike_z * math.sqrt(self._loss_variance)
            if deviation > 0 and loss > level.mean + deviation:
                self.loss_spikes += 1
        # An exponential variance beside the exponential mean (West 1979), with the mean's weight.
        weight = 1.0 / min(level.count + 1, level.windows)
        delta = loss - level.mean
        level.add(loss)
        self._loss_variance = (1.0 - weight) * (self._loss_variance + weight * delta * delta)
        self.loss_last = loss

    def close_window(self) -> None:
        """The gate decided on the window: its figures become the last ones and join the running means."""
        span = self._last_time - self._first_time
        shares = {
            "event_rate": (self._events - 1) / span if span > 0 and self._events > 1 else None,
            "unknown_user_share": _share(self._unknown_users, self._users_measured),
            "unknown_item_share": _share(self._unknown_items, self._scored),
        }
        for name, value in shares.items():
            if value is not None:
                self._last[name] = value
                self._means[name].add(value)
        self._reset_window()

    def figures(self) -> dict[str, float | int | None]:
        """Flat figures for the status document (see docs/operations.md, "Poisoned input")."""
        loss_mean = self._loss.value
        figures: dict[str, float | int | None] = {
            "loss_last": self.loss_last,
            "loss_mean": loss_mean if math.isfinite(loss_mean) else None,
            "loss_spikes": self.loss_spikes,
        }
        for name in _SHIFTS:
            mean = self._means[name].value
            figures[name] = self._last[name]
            figures[f"{name}_mean"] = mean if math.isfinite(mean) else None
        return figures


#: Input figures measured per window, each reported with its running mean.
_SHIFTS = ("event_rate", "unknown_user_share", "unknown_item_share")


def _share(count: int, total: int) -> float | None:
    return count / total if total else None
