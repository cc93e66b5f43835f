"""The freshness study: how much quality a model loses when it is updated less often.

One stream is replayed prequentially (test-then-train, ../shared/PROTOCOL.md) once, and each micro-batch is
ranked by four copies of the same model that differ only in how often the copy that *serves* is updated:

- ``per-batch``: the online trainer's model itself, updated after every micro-batch;
- ``hourly``: a served copy frozen between event-time hour boundaries, where it receives the learning
  copy's state (``drain_changes`` / ``apply_changes``: exact and proportional to what changed);
- ``daily``: at each event-time day boundary a fresh model is retrained from scratch on all earlier days'
  events (several shuffled epochs of the model's own ``learn`` with the trainer's recent-item negative
  sampler; one pass in time order for counting models, whose ``learn`` reports no loss: by default taken
  as the online learner's state at the boundary, which is what that pass counts), then frozen;
- ``frozen``: the online model until a fraction (default 50%) of the events, then a frozen copy of it.

Feature state (histories, seen items, the catalogue of candidates) is live and shared by all four, as a
feature store would be: only learned parameters are stale. Learning goes in the protocol's micro-batches
of B events, so every cadence's learner is the online trainer's; scoring is cut at every refresh boundary,
so a copy refreshed at a boundary serves from the first event after it, with the learner's state as it is
then (which, as for the per-batch cadence itself, lags by less than one micro-batch). An earlier version
also cut the *learning* at boundaries: on MovieLens-100K (~19 events per hour) that made the online
learner's batches tiny, which cost a two-tower model with in-batch negatives a third of its HR@10.

The learning copies of ``per-batch`` and ``hourly`` (and ``frozen`` before its freeze) would learn exactly
the same thing from the same batches and negatives, so they are one model: the study learns online once.
A retrain reads only events before its day boundary; nothing scored is ever learned before it is scored.
The study holds the whole stream in memory (the daily retrain needs every earlier event): it is meant for
data sets up to some millions of events, never for an endless stream.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from freshrec.errors import ConfigError, FreshrecError
from freshrec.evaluation.prequential import (
    PrequentialEvaluator,
    RankingMetrics,
    rank_candidates,
)
from freshrec.interactions import EncodedBatch, Interactions, Query
from freshrec.models.base import Model, StateChanges
from freshrec.preprocess.encode import encode_ids
from freshrec.preprocess.pipeline import IngestPipeline, PipelineConfig
from freshrec.sources.base import Source
from freshrec.training.online import OnlineTrainer, RecentItemSampler, TrainerConfig

__all__ = [
    "CADENCES",
    "CadenceConfig",
    "CadenceReport",
    "CadenceResult",
    "CadenceStudy",
    "EncodedEvents",
    "PlotUnavailableError",
    "Refresh",
    "new_user_day_share",
    "run_cadence_study",
]

#: The four update cadences, in the order they are reported.
CADENCES: tuple[str, ...] = ("per-batch", "hourly", "daily", "frozen")

ModelFactory = Callable[[], Model]
BatchObserver = Callable[[int, int, Mapping[str, Model]], None]


class PlotUnavailableError(FreshrecError):
    """matplotlib, needed only to draw the study's plot, is not installed."""


@dataclass
class CadenceConfig:
    """How the study cuts, feeds and refreshes.

    Parameters
    ----------
    trainer
        The online loop's settings (micro-batch size B, negatives, negative window, K, seed, user capacity,
        torch threads), used by every cadence's learning.
    refresh_seconds
        Event-time period of the ``hourly`` cadence's refreshes (boundaries aligned to the epoch, UTC).
    retrain_seconds
        Event-time period of the ``daily`` cadence's retrains (aligned to the epoch: UTC midnight).
    retrain_epochs
        Passes over the earlier events per retrain of a model that learns by gradient (its ``learn``
        reports a loss). Counting models always get one pass: a second would count every event twice.
    retrain_order
        Order of the events in each retrain epoch of a gradient model: ``"shuffled"`` (a new permutation
        per epoch, as batch training does) or ``"time"``. Counting models always count in time order.
    retrain_batch_size
        Events per ``learn`` call when retraining (None: the trainer's B, so the loss and the negatives per
        step are those of online learning).
    counting_retrain
        How a counting model (popularity, co-occurrence: its ``learn`` reports no loss) is "retrained" at a
        day boundary: ``"snapshot"`` takes the online learner's state at the boundary, which is what one
        pass over the earlier days in time order counts (up to how the pass is cut into batches);
        ``"replay"`` really counts every earlier event again in a fresh model (slow: O(days x events)).
    frozen_fraction
        Share of the events after which the ``frozen`` cadence stops learning.
    window_events
        Events per window of the per-window HR@K / NDCG@K series (the plot's points).
    last_fraction
        The final share of the stream reported separately (the protocol's "last 20%").
    """

    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    refresh_seconds: float = 3_600.0
    retrain_seconds: float = 86_400.0
    retrain_epochs: int = 3
    retrain_order: Literal["shuffled", "time"] = "shuffled"
    retrain_batch_size: int | None = None
    counting_retrain: Literal["snapshot", "replay"] = "snapshot"
    frozen_fraction: float = 0.5
    window_events: int = 2_000
    last_fraction: float = 0.2

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(f"CadenceConfig: {what}")

        need(self.refresh_seconds > 0, f"refresh_seconds must be > 0, got {self.refresh_seconds}")
        need(self.retrain_seconds > 0, f"retrain_seconds must be > 0, got {self.retrain_seconds}")
        need(self.retrain_epochs >= 1, f"retrain_epochs must be >= 1, got {self.retrain_epochs}")
        need(
            self.retrain_order in ("shuffled", "time"),
            f"retrain_order must be 'shuffled' or 'time', got {self.retrain_order!r}",
        )
        need(
            self.retrain_batch_size is None or self.retrain_batch_size >= 1,
            f"retrain_batch_size must be >= 1 or None, got {self.retrain_batch_size}",
        )
        need(
            self.counting_retrain in ("snapshot", "replay"),
            f"counting_retrain must be 'snapshot' or 'replay', got {self.counting_retrain!r}",
        )
        need(0 < self.frozen_fraction < 1, f"frozen_fraction must be in (0, 1), got {self.frozen_fraction}")
        need(self.window_events >= 1, f"window_events must be >= 1, got {self.window_events}")
        need(0 < self.last_fraction <= 1, f"last_fraction must be in (0, 1], got {self.last_fraction}")
        need(self.trainer.batch_size >= 1, f"trainer.batch_size must be >= 1, got {self.trainer.batch_size}")

    def labels(self) -> dict[str, str]:
        """A reader's name of each cadence under this configuration."""
        return {
            "per-batch": f"(a) updated every micro-batch (B = {self.trainer.batch_size})",
            "hourly": f"(b) served copy refreshed every {_period(self.refresh_seconds)}",
            "daily": f"(c) retrained from scratch every {_period(self.retrain_seconds)}",
            "frozen": f"(d) trained on the first {self.frozen_fraction:.0%}, then frozen",
        }


def _period(seconds: float) -> str:
    """'hour', 'day', '6 hours', '90 s': how a period reads in a label."""
    for unit, size in (("day", 86_400.0), ("hour", 3_600.0), ("minute", 60.0)):
        if seconds % size == 0:
            count = int(seconds // size)
            return unit if count == 1 else f"{count} {unit}s"
    return f"{seconds:g} s"


@dataclass
class EncodedEvents(EncodedBatch):
    """A whole stream after the ingest pipeline (validated, deduplicated, encoded), in event-time order,
    with the pipeline's counts: what a study replays.

    Attributes
    ----------
    read, rejected, duplicates
        Records read from the source, rejected by validation, dropped as repeats.

    >>> events = EncodedEvents.from_columns([1, 2, 1], [10, 11, 10], [3.0, 1.0, 2.0])
    >>> events.timestamps.tolist(), len(events)  # sorted into event-time order
    ([1.0, 2.0, 3.0], 3)
    """

    read: int = 0
    rejected: int = 0
    duplicates: int = 0

    @classmethod
    def from_source(cls, source: Source, pipeline: PipelineConfig | None = None) -> EncodedEvents:
        """Read `source` to its end through the ingest pipeline (the replay's)."""
        ingest = IngestPipeline(pipeline)
        parts = []
        for raw in source.batches(ingest.config.read_size):
            parts.append(ingest.process(raw).events)
            source.commit(raw.end_offset)
        counts = ingest.counts
        return cls._of(EncodedBatch.concat(parts), counts.read, counts.rejected, counts.duplicates)

    @classmethod
    def from_columns(
        cls, user_ids: Any, item_ids: Any, timestamps: Any, **values_and_kinds: Any
    ) -> EncodedEvents:
        """Events from raw id columns (tests, notebooks), with optional ``values`` and ``kinds`` columns:
        encoded, put in time order (ties keep order)."""
        users, items = encode_ids(np.asarray(user_ids)), encode_ids(np.asarray(item_ids))
        batch = EncodedBatch.of(users, items, timestamps, **values_and_kinds)
        return cls._of(batch, read=len(batch))

    def head(self, count: int) -> EncodedEvents:
        """The first `count` events in event-time order (all of them when there are fewer): a quick study of
        a long stream's start, where the daily retrain's cost (which grows with days x events) stays small.

        >>> EncodedEvents.from_columns([1, 2, 3], [10, 11, 12], [3.0, 1.0, 2.0]).head(2).timestamps.tolist()
        [1.0, 2.0]
        """
        if count < 1:
            raise ConfigError(f"max_events must be >= 1, got {count}")
        return self._of(self.take(slice(0, count)), self.read, self.rejected, self.duplicates)

    @classmethod
    def _of(cls, batch: EncodedBatch, read: int, rejected: int = 0, duplicates: int = 0) -> EncodedEvents:
        # The protocol replays in event-time order, ties in arrival order: a stable sort keeps them.
        ordered = batch.in_time_order()
        return cls(
            ordered.user_keys,
            ordered.item_keys,
            ordered.timestamps,
            ordered.values,
            ordered.kinds,
            read=read,
            rejected=rejected,
            duplicates=duplicates,
        )


@dataclass(frozen=True)
class Refresh:
    """One update of a served copy: which cadence, before which event (index and time), and how many
    events the new served state learned from (all of them before `event_index`)."""

    cadence: str
    event_index: int
    timestamp: float
    trained_events: int
    epochs: int = 1
    seconds: float = 0.0


@dataclass
class CadenceResult:
    """One cadence's figures over the whole stream and over its last part."""

    cadence: str
    label: str
    overall: RankingMetrics
    last: RankingMetrics
    refreshes: int
    scoring_seconds: float
    refresh_seconds: float


@dataclass
class CadenceReport:
    """What the study measured: figures per cadence, per-window series over event time, timings.

    ``windows_hr[c][w]`` is cadence c's HR@K over window w (`window_events` consecutive events);
    ``window_days[w]`` the window's mean event time in days since the first event.
    """

    source: str
    model: str
    config: CadenceConfig
    events: int
    start_time: float
    end_time: float
    results: list[CadenceResult]
    window_days: np.ndarray
    window_sizes: np.ndarray
    windows_hr: dict[str, np.ndarray]
    windows_ndcg: dict[str, np.ndarray]
    frozen_at_event: int
    retrain_epochs: int
    counting_model: bool
    new_user_day_share: float
    seconds: float
    online_learning_seconds: float
    read: int = 0
    rejected: int = 0
    duplicates: int = 0

    def result(self, cadence: str) -> CadenceResult:
        """The figures of one cadence (one of `CADENCES`)."""
        for result in self.results:
            if result.cadence == cadence:
                return result
        raise ConfigError(f"cadence {cadence!r} is not in this report; choose one of {', '.join(CADENCES)}")

    @property
    def span_days(self) -> float:
        return (self.end_time - self.start_time) / 86_400.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able summary (numbers only; arrays as lists)."""
        k = self.config.trainer.k
        return {
            "source": self.source,
            "model": self.model,
            "events": self.events,
            "span_days": self.span_days,
            "new_user_day_share": self.new_user_day_share,
            "frozen_at_event": self.frozen_at_event,
            "retrain_epochs": self.retrain_epochs,
            "counting_model": self.counting_model,
            "seconds": self.seconds,
            "online_learning_seconds": self.online_learning_seconds,
            "read": self.read,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "config": asdict(self.config),
            "cadences": {
                r.cadence: {
                    "label": r.label,
                    f"hr@{k}": r.overall.hr,
                    f"ndcg@{k}": r.overall.ndcg,
                    f"hr@{k}_last": r.last.hr,
                    f"ndcg@{k}_last": r.last.ndcg,
                    "refreshes": r.refreshes,
                    "scoring_seconds": r.scoring_seconds,
                    "refresh_seconds": r.refresh_seconds,
                }
                for r in self.results
            },
            "windows": {
                "days": self.window_days.tolist(),
                "events": self.window_sizes.tolist(),
                "hr": {c: v.tolist() for c, v in self.windows_hr.items()},
                "ndcg": {c: v.tolist() for c, v in self.windows_ndcg.items()},
            },
        }

    def markdown(self) -> str:
        """A table of every cadence's figures, with the facts a reader needs to judge them."""
        k = self.config.trainer.k
        last = f"last {self.config.last_fraction:.0%}"
        per_batch = self.result("per-batch").last
        header = [
            "cadence",
            "refreshes",
            f"HR@{k}",
            f"NDCG@{k}",
            f"HR@{k} {last}",
            f"NDCG@{k} {last}",
            f"HR@{k} {last} vs (a)",
        ]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in self.results:
            ratio = f"{r.last.hr / per_batch.hr:.2f}x" if per_batch.hr > 0 else "n/a"
            refreshes = "every batch" if r.cadence == "per-batch" else f"{r.refreshes:,}"
            cells = [
                r.label,
                refreshes,
                f"{r.overall.hr:.4f}",
                f"{r.overall.ndcg:.4f}",
                f"{r.last.hr:.4f}",
                f"{r.last.ndcg:.4f}",
                ratio,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        if not self.counting_model:
            epochs = "1 epoch" if self.retrain_epochs == 1 else f"{self.retrain_epochs} epochs"
            retrain = f"{epochs}, {self.config.retrain_order} order"
        elif self.config.counting_retrain == "replay":
            retrain = "one pass in time order (a counting model: its learn() takes no gradient step)"
        else:
            retrain = (
                "one pass in time order (a counting model: its learn() takes no gradient step), taken as "
                "the online learner's state at the boundary, which is what that pass counts (up to the "
                "micro-batch in progress)"
            )
        notes = [
            f"{self.source}, model `{self.model}`: {self.events:,} events over {self.span_days:.1f} days; "
            f"{self.new_user_day_share:.1%} of events come from a user first seen that same day.",
            f"Daily retrain: a fresh model, {retrain}, on every earlier day's events; before the first "
            "boundary the daily cadence serves an untrained model.",
            f"(d) follows (a) until event {self.frozen_at_event:,}, so the two differ only afterwards.",
            f"Study time {self.seconds:.0f} s (online learning {self.online_learning_seconds:.0f} s, "
            f"daily retrains {self.result('daily').refresh_seconds:.0f} s).",
        ]
        return "\n".join([*lines, "", *[f"- {note}" for note in notes]])

    def write_plot(self, path: str | Path) -> Path:
        """Draw HR@K per window over event time for every cadence into a PNG file at `path`."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as error:
            raise PlotUnavailableError(
                "write_plot needs matplotlib: `pip install matplotlib` (or skip the plot)"
            ) from error
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A Figure with its own Agg canvas, not pyplot: no global backend state, safe in any process.
        figure = Figure(figsize=(9.0, 4.5), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        labels = self.config.labels()
        # Cadences often coincide for long stretches: widths and dashes keep every line visible on top.
        styles = {"per-batch": ("-", 2.6), "hourly": ("--", 1.5), "daily": ("-.", 1.5), "frozen": (":", 2.0)}
        for cadence in CADENCES:
            style, width = styles[cadence]
            axes.plot(
                self.window_days,
                self.windows_hr[cadence],
                label=labels[cadence],
                linestyle=style,
                linewidth=width,
            )
        if 0 < self.frozen_at_event < self.events:
            frozen_day = self._day_of_event(self.frozen_at_event)
            axes.axvline(frozen_day, color="grey", linestyle=":", linewidth=1.0, label="(d) frozen here")
        k = self.config.trainer.k
        axes.set_xlabel("event time (days since the first event)")
        axes.set_ylabel(f"HR@{k} per {self.config.window_events:,} events")
        axes.set_title(f"Update cadence: {self.source}, {self.model}")
        axes.set_ylim(bottom=0.0)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small", loc="best")
        figure.savefig(path, format="png", dpi=110)
        return path

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write ``cadence.md``, ``cadence.json`` and (with matplotlib) ``cadence.png`` into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = {"markdown": directory / "cadence.md", "json": directory / "cadence.json"}
        written["markdown"].write_text(self.markdown() + "\n")
        written["json"].write_text(json.dumps(self.as_dict(), indent=2) + "\n")
        written["plot"] = self.write_plot(directory / "cadence.png")
        return written

    def _day_of_event(self, index: int) -> float:
        # Windows are consecutive runs of events: interpolate the freeze point between window centres.
        centres = (np.cumsum(self.window_sizes) - self.window_sizes / 2.0).astype(np.float64)
        return float(np.interp(index, centres, self.window_days))


class CadenceStudy:
    """Replays encoded events once and ranks every micro-batch with the four cadences' served models.

    Parameters
    ----------
    model_factory
        Builds a fresh model with fixed settings: the online model, the served copies and each daily
        retrain come from it.
    config
        Cadences and the online loop's settings.

    >>> from freshrec.models.popularity import PopularityModel
    >>> days = np.repeat(np.arange(4.0), 50) * 86_400 + np.tile(np.arange(50.0), 4) * 60
    >>> events = EncodedEvents.from_columns(np.arange(200) % 7, np.arange(200) % 13, days)
    >>> report = CadenceStudy(PopularityModel).run(events)
    >>> [r.refreshes for r in report.results]  # per-batch, hourly, daily, frozen
    [0, 3, 3, 1]
    """

    def __init__(self, model_factory: ModelFactory, config: CadenceConfig | None = None) -> None:
        self.model_factory = model_factory
        self.config = config or CadenceConfig()
        #: Every refresh of a served copy, in stream order (of the latest `run`).
        self.refreshes: list[Refresh] = []
        #: Each cadence's rank of every event's target (int32 [n]; -1: a miss that could not rank, e.g. an
        #: item never seen before), of the latest `run`: for slicing the figures by any subset of events.
        self.ranks: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ public
    def run(
        self, events: EncodedEvents, source: str = "events", on_batch: BatchObserver | None = None
    ) -> CadenceReport:
        """Replay `events` through the four cadences and report.

        Parameters
        ----------
        source
            The stream's name, for the report.
        on_batch
            Called before each micro-batch is scored with ``(start, stop, served)``: the batch's event
            range and the model each cadence serves it with (for progress displays and tests; must not
            change the models).
        """
        started = time.perf_counter()
        config, trainer = self.config, self.config.trainer
        if trainer.torch_threads is not None:
            import torch  # here, not at module level: counting models never need torch

            torch.set_num_threads(trainer.torch_threads)
        n = len(events)
        online = self._new_model()
        self._pristine = online.state_dict()  # what "from scratch" means for every retrain
        served = self._copy_of(online)
        daily = self._copy_of(online)  # serves, untrained, until the first day boundary
        online.drain_changes()  # from here on, drained changes are exactly what the copies lack
        frozen: Model | None = None
        frozen_at = int(n * config.frozen_fraction)
        # Deltas drained from the learner that a copy has not applied yet (the daily copy takes them only
        # while the model counts: a gradient model's daily model is retrained instead).
        pending: dict[str, list[StateChanges]] = {"hourly": [], "daily": []}
        # Whether a cadence's served state equals the learner's right now: it then ranks like it.
        current = {"hourly": True, "daily": False, "frozen": True}

        # The online learner is the trainer's own loop: its feature state and its learning step.
        learner = OnlineTrainer(online, trainer, features=trainer.features(online, rankable=True))
        evaluators = {c: PrequentialEvaluator(k=trainer.k) for c in CADENCES}
        self.ranks = ranks = {c: np.full(n, -1, dtype=np.int32) for c in CADENCES}
        scoring_seconds = dict.fromkeys(CADENCES, 0.0)
        refresh_seconds = dict.fromkeys(CADENCES, 0.0)
        learning_seconds = 0.0
        # The daily retrain reads every earlier event with the history it had: keep them all.
        length = online.history_length
        stored_history_keys = np.zeros((n, length), dtype=np.uint64)
        stored_history_times = np.full((n, length), np.nan, dtype=np.float64)
        self._learns_by_gradient = False
        self._retrain_epochs = 1
        self._retrain_model: Model | None = None
        self.refreshes = []

        times = events.timestamps
        refresh_bucket = np.floor(times / config.refresh_seconds)
        retrain_bucket = np.floor(times / config.retrain_seconds)
        for batch_start, batch_stop in self._learning_batches(n, frozen_at):
            batch_part = slice(batch_start, batch_stop)
            # Feature state moves event by event over the whole micro-batch at once: each event's query
            # and candidates hold what came before it, whatever segment it is scored in.
            observed = learner.features.observe(
                events.take(batch_part), negatives=trainer.negatives, candidates=True
            )
            stored_history_keys[batch_part] = observed.query.history_keys
            stored_history_times[batch_part] = observed.query.history_times
            segments = self._scoring_segments(batch_start, batch_stop, refresh_bucket, retrain_bucket)
            for start, stop in segments:
                new_hour = start > 0 and refresh_bucket[start] != refresh_bucket[start - 1]
                new_day = start > 0 and retrain_bucket[start] != retrain_bucket[start - 1]
                snapshot_daily = not self._learns_by_gradient and config.counting_retrain == "snapshot"
                if new_hour or new_day:
                    tick = time.perf_counter()
                    changes = online.drain_changes()
                    pending["hourly"].append(changes)
                    if snapshot_daily:
                        pending["daily"].append(changes)
                    drain_seconds = time.perf_counter() - tick
                if new_hour:
                    tick = time.perf_counter() - drain_seconds  # the drain is part of the hourly refresh
                    _catch_up(served, pending["hourly"], online)
                    current["hourly"] = True
                    refresh_seconds["hourly"] += self._log("hourly", start, times[start], batch_start, tick)
                if new_day:
                    tick = time.perf_counter()
                    trained = batch_start
                    if snapshot_daily:
                        # One pass of a counting model over the earlier events in time order is what the
                        # learner holds: take its state instead of counting everything again.
                        _catch_up(daily, pending["daily"], online)
                        current["daily"] = True
                        self._last_epochs = 1
                    else:
                        pending["daily"].clear()
                        daily = self._retrain(events, stored_history_keys, stored_history_times, start)
                        trained = start
                    refresh_seconds["daily"] += self._log(
                        "daily", start, times[start], trained, tick, epochs=self._last_epochs
                    )
                if start == frozen_at and frozen is None:
                    tick = time.perf_counter()
                    frozen = self._copy_of(online)
                    refresh_seconds["frozen"] += self._log("frozen", start, times[start], start, tick)
                models = {"per-batch": online, "hourly": served, "daily": daily, "frozen": frozen or online}
                if on_batch is not None:
                    on_batch(start, stop, models)

                part = slice(start, stop)
                rows = np.arange(start - batch_start, stop - batch_start)
                query, candidates = observed.query.take(rows), observed.candidates.take(rows)
                for cadence in CADENCES:
                    if cadence != "per-batch" and current[cadence]:
                        segment_ranks = ranks["per-batch"][part]  # the same state as the learner: rank once
                    else:
                        tick = time.perf_counter()
                        segment_ranks = rank_candidates(models[cadence], query, candidates)
                        scoring_seconds[cadence] += time.perf_counter() - tick
                    ranks[cadence][part] = segment_ranks
                    evaluators[cadence].add(segment_ranks)

            # Every segment of the micro-batch was scored: now the learner learns all of it at once.
            tick = time.perf_counter()
            stats = learner.learn(observed)
            self._learns_by_gradient |= stats.loss is not None
            learning_seconds += time.perf_counter() - tick
            current = {"hourly": False, "daily": False, "frozen": frozen is None}

        labels = config.labels()
        results = [
            CadenceResult(
                cadence=c,
                label=labels[c],
                overall=evaluators[c].summary(),
                last=evaluators[c].final_fraction(config.last_fraction),
                refreshes=sum(r.cadence == c for r in self.refreshes),
                scoring_seconds=scoring_seconds[c],
                refresh_seconds=refresh_seconds[c],
            )
            for c in CADENCES
        ]
        days, sizes, window_hr, window_ndcg = _windows(ranks, times, trainer.k, config.window_events)
        return CadenceReport(
            source=source,
            model=online.name,
            config=config,
            events=n,
            start_time=float(times[0]) if n else 0.0,
            end_time=float(times[-1]) if n else 0.0,
            results=results,
            window_days=days,
            window_sizes=sizes,
            windows_hr=window_hr,
            windows_ndcg=window_ndcg,
            frozen_at_event=frozen_at,
            retrain_epochs=self._retrain_epochs,
            counting_model=not self._learns_by_gradient,
            new_user_day_share=new_user_day_share(events.user_keys, times, config.retrain_seconds),
            seconds=time.perf_counter() - started,
            online_learning_seconds=learning_seconds,
            read=events.read,
            rejected=events.rejected,
            duplicates=events.duplicates,
        )

    # ------------------------------------------------------------------ internals
    def _new_model(self) -> Model:
        return self.model_factory()

    def _copy_of(self, model: Model) -> Model:
        copy = self._new_model()
        copy.load_state_dict(model.state_dict())
        return copy

    def _learning_batches(self, n: int, frozen_at: int) -> list[tuple[int, int]]:
        """The learner's micro-batches: B events each, as the online trainer cuts them, plus a cut at the
        freeze point (the frozen copy must hold exactly the events before it)."""
        size = self.config.trainer.batch_size
        batches = []
        for segment_start, segment_stop in ((0, frozen_at), (frozen_at, n)):
            batches.extend((s, min(s + size, segment_stop)) for s in range(segment_start, segment_stop, size))
        return batches

    @staticmethod
    def _scoring_segments(
        start: int, stop: int, refresh_bucket: np.ndarray, retrain_bucket: np.ndarray
    ) -> list[tuple[int, int]]:
        """[start, stop) cut wherever the refresh or the retrain period changes: a copy refreshed at a
        boundary serves exactly the events after it."""
        inside = np.arange(start + 1, stop)
        changes = inside[
            (refresh_bucket[inside] != refresh_bucket[inside - 1])
            | (retrain_bucket[inside] != retrain_bucket[inside - 1])
        ]
        cuts = [start, *changes.tolist(), stop]
        return list(zip(cuts[:-1], cuts[1:], strict=True))

    def _retrain(
        self, events: EncodedEvents, history_keys: np.ndarray, history_times: np.ndarray, upto: int
    ) -> Model:
        """A fresh model trained on events [0, upto) only (all of them before the day boundary)."""
        config, trainer = self.config, self.config.trainer
        # Building a model can cost a second (dense tables); resetting one to the state of a model never
        # trained is the same start at a fraction of the cost. The previous daily model is retired here.
        if self._retrain_model is None:
            self._retrain_model = self._new_model()
        model = self._retrain_model
        model.load_state_dict(self._pristine)
        retrain_number = sum(r.cadence == "daily" for r in self.refreshes) + 1
        rng = np.random.default_rng([trainer.seed, retrain_number])
        sampler = RecentItemSampler(trainer.negative_window, trainer.seed + retrain_number)
        size = config.retrain_batch_size or trainer.batch_size
        # A counting model's learn() is no gradient step: a second pass would count every event twice,
        # and counts (and decay clocks) want time order. The online model told us which kind this is.
        epochs = config.retrain_epochs if self._learns_by_gradient else 1
        shuffled = self._learns_by_gradient and config.retrain_order == "shuffled"
        for _ in range(epochs):
            order = rng.permutation(upto) if shuffled else None
            for start in range(0, upto, size):
                rows = (
                    order[start : start + size]
                    if order is not None
                    else slice(start, min(start + size, upto))
                )
                items = events.item_keys[rows]
                query = Query(
                    events.user_keys[rows], events.timestamps[rows], history_keys[rows], history_times[rows]
                )
                negatives = sampler.sample(len(items), trainer.negatives, fallback=items)
                kinds = events.kinds[rows]
                weights = trainer.kind_weights.of(kinds)
                model.learn(Interactions(query, items, events.values[rows], kinds, negatives, weights))
                sampler.add(items)
        self._last_epochs = epochs
        self._retrain_epochs = max(self._retrain_epochs, epochs)
        return model

    def _log(
        self, cadence: str, index: int, timestamp: float, trained: int, started: float, epochs: int = 1
    ) -> float:
        seconds = time.perf_counter() - started
        self.refreshes.append(Refresh(cadence, index, float(timestamp), trained, epochs, seconds))
        return seconds


def _catch_up(copy: Model, pending: list[StateChanges], learner: Model) -> None:
    """Bring `copy` to the learner's state by applying the deltas it missed, in order (a full copy when
    one of them could not track every change)."""
    if all(changes.complete for changes in pending):
        for changes in pending:
            copy.apply_changes(changes)
    else:
        copy.load_state_dict(learner.state_dict())
    pending.clear()


def _windows(
    ranks: dict[str, np.ndarray], times: np.ndarray, k: int, window_events: int
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-window mean event time (days since the first event), sizes, HR@K and NDCG@K of each cadence."""
    n = len(times)
    if n == 0:
        empty = np.empty(0)
        return empty, empty.astype(np.int64), {c: empty for c in ranks}, {c: empty for c in ranks}
    window = np.arange(n) // window_events
    sizes = np.bincount(window)
    days = np.bincount(window, (times - times[0]) / 86_400.0) / sizes
    hr, ndcg = {}, {}
    for cadence, r in ranks.items():
        hits = (r >= 0) & (r < k)
        gains = np.where(hits, 1.0 / np.log2(np.maximum(r, 0) + 2.0), 0.0)
        hr[cadence] = np.bincount(window, hits) / sizes
        ndcg[cadence] = np.bincount(window, gains) / sizes
    return days, sizes, hr, ndcg


def new_user_day_share(user_keys: np.ndarray, timestamps: np.ndarray, day_seconds: float = 86_400.0) -> float:
    """Share of events whose user was first seen in the same event-time day (UTC): the part of the stream
    that a model refreshed once a day cannot know the user of.

    >>> new_user_day_share(np.array([1, 1, 2, 1], np.uint64), np.array([0.0, 10.0, 86_400.0, 86_500.0]))
    0.75
    """
    if len(user_keys) == 0:
        return 0.0
    _, first, inverse = np.unique(user_keys, return_index=True, return_inverse=True)
    day = np.floor(timestamps / day_seconds)
    return float(np.mean(day[first][inverse] == day))


def run_cadence_study(
    source: Source,
    model_factory: ModelFactory,
    config: CadenceConfig | None = None,
    *,
    on_batch: BatchObserver | None = None,
    max_events: int | None = None,
) -> CadenceReport:
    """Read `source` to its end, then run the four cadences over it (see `CadenceStudy`).

    Parameters
    ----------
    source
        A finite source in event-time order (read once through validation and deduplication; events out
        of order are sorted, ties kept in arrival order).
    model_factory
        A fresh `Model` per call, always with the same settings (for a
        registry model: ``lambda: create_model(name)``).
    max_events
        Study only the first this many events (in event-time order; None: all).

    >>> from freshrec.models.popularity import PopularityModel
    >>> from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream
    >>> stream = SyntheticStream(SyntheticConfig(n_events=3000, n_users=100, n_items=200, n_clusters=5,
    ...                                          events_per_second=0.02))
    >>> report = run_cadence_study(stream, PopularityModel, CadenceConfig(window_events=500))
    >>> report.events, len(report.window_days), report.counting_model
    (3000, 6, True)
    """
    events = EncodedEvents.from_source(source)
    if max_events is not None:
        events = events.head(max_events)
    if len(events) == 0:
        raise ConfigError(f"source {source.name!r} has no valid events: nothing to study")
    return CadenceStudy(model_factory, config).run(events, source=source.name, on_batch=on_batch)
