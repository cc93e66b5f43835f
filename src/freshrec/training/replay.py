"""Replay a finite source through the whole pipeline: read, validate, dedupe, encode, score, learn.

This is what `freshrec replay` and `bench/quality.py` run. A bad record never stops the replay: it goes to
the dead-letter file with its reason, and the counts always reconcile (read = accepted + rejected).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freshrec.evaluation.prequential import RankingMetrics
from freshrec.preprocess.pipeline import IngestCounts, IngestPipeline, PipelineConfig
from freshrec.preprocess.validate import DeadLetterWriter
from freshrec.sources.base import RawBatch, Source
from freshrec.training.loop import LoopProgress, TrainingLoop
from freshrec.training.online import OnlineTrainer

#: What a progress display gets after each source batch (the loop's progress).
ReplayProgress = LoopProgress


@dataclass
class ReplayReport:
    """The outcome of a replay: counts that reconcile, quality and speed; `ingest` holds the pipeline's
    counts with the rejections grouped by field and reason."""

    model: str
    events_read: int
    events_accepted: int
    events_rejected: int
    events_duplicate: int
    seconds: float
    overall: RankingMetrics
    last_20_percent: RankingMetrics
    windows: list[RankingMetrics]
    learning_events_per_second: float
    config: dict[str, Any] = field(default_factory=dict)
    dead_letter_path: str | None = None
    ingest: IngestCounts = field(default_factory=IngestCounts)
    series: list[dict[str, float | int]] = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        return self.events_read / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self, k: int = 10) -> dict[str, Any]:
        """The flat JSON object `--metrics-json` writes."""
        overall, last = self.overall, self.last_20_percent
        return {
            "model": self.model,
            f"hr@{k}": overall.hr,
            f"ndcg@{k}": overall.ndcg,
            f"hr@{k}_last20": last.hr,
            f"ndcg@{k}_last20": last.ndcg,
            "rmse": overall.rmse,
            "mae": overall.mae,
            "events_read": self.events_read,
            "events_accepted": self.events_accepted,
            "events_rejected": self.events_rejected,
            "events_duplicate": self.events_duplicate,
            "events_per_second": self.events_per_second,
            "learning_events_per_second": self.learning_events_per_second,
            "seconds": self.seconds,
            "dead_letter": self.dead_letter_path,
            "rejected_share": self.ingest.rejected_share,
            "duplicate_share": self.ingest.duplicate_share,
            # Most frequent first: "field: reason without the value it quotes" -> count.
            "rejections_by_reason": dict(self.ingest.reasons.most_common()),
            "windows": [w.as_dict(k) for w in self.windows],
            "config": self.config,
            "series": [
                {"time": p["time"], "events": p["events"], f"hr@{k}": p["hr"], f"ndcg@{k}": p["ndcg"]}
                for p in self.series
            ],
        }


def replay(
    source: Source,
    trainer: OnlineTrainer,
    *,
    dead_letter: Path | str | None = None,
    pipeline: PipelineConfig | None = None,
    read_size: int | None = None,
    window_events: int = 10_000,
    on_progress: Callable[[LoopProgress], None] | None = None,
    config: dict[str, Any] | None = None,
    batches: Iterable[RawBatch] | None = None,
) -> ReplayReport:
    """Run `source` to its end through the ingest pipeline and the trainer (the live loop without a
    publisher).

    Parameters
    ----------
    dead_letter
        JSONL file for rejected records (created only if something is rejected).
    pipeline
        Validation, deduplication and encoding settings (defaults if None).
    read_size
        Records read from the source at a time (default: the pipeline's); the trainer cuts them into its
        own micro-batches.
    window_events
        Size of the sliding windows reported in `ReplayReport.windows`.
    config
        The settings to report with the figures (`ReplayReport.config`).
    batches
        The source's batches when they must be read another way than `source.batches(read_size)` (a log
        followed until a stop signal).
    """
    settings = pipeline or PipelineConfig()
    if read_size is not None:
        settings = dataclasses.replace(settings, read_size=read_size)
    started = time.perf_counter()
    series = _Series(trainer)

    def progress(update: LoopProgress) -> None:
        series.record()
        if on_progress is not None:
            on_progress(update)

    with DeadLetterWriter(dead_letter) as dead_letters:
        ingest = IngestPipeline(settings, dead_letters, source=source.name)
        TrainingLoop(trainer, ingest).run(source, on_progress=progress, batches=batches)
    counts, evaluator = ingest.counts, trainer.evaluator
    return ReplayReport(
        model=trainer.model.name,
        events_read=counts.read,
        events_accepted=counts.accepted,
        events_rejected=counts.rejected,
        events_duplicate=counts.duplicates,
        seconds=time.perf_counter() - started,
        overall=evaluator.summary(),
        last_20_percent=evaluator.final_fraction(0.2),
        windows=evaluator.windows(window_events),
        learning_events_per_second=trainer.totals.learning_events_per_second,
        config=config or {},
        dead_letter_path=str(dead_letter) if dead_letter is not None and counts.rejected else None,
        ingest=counts,
        series=series.points,
    )


class _Series:
    """Quality over event time: after each source batch, the newest event time and HR / NDCG of the events
    evaluated since the previous point (the ``series`` of `ReplayReport`, what `freshrec report` plots)."""

    def __init__(self, trainer: OnlineTrainer) -> None:
        self.trainer = trainer
        self.points: list[dict[str, float | int]] = []
        self._events, self._hits, self._gains = 0, 0.0, 0.0

    def record(self) -> None:
        total = self.trainer.evaluator.summary()
        events = total.events - self._events
        time_ = self.trainer.newest_event_time
        if events <= 0 or time_ != time_:  # nothing new evaluated, or no event time yet (NaN)
            return
        hits, gains = total.hr * total.events, total.ndcg * total.events
        self.points.append(
            {
                "time": time_,
                "events": total.events,
                "hr": (hits - self._hits) / events,
                "ndcg": (gains - self._gains) / events,
            }
        )
        self._events, self._hits, self._gains = total.events, hits, gains
