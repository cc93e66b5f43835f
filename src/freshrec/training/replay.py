"""Replay a finite source through the whole pipeline: read, validate, dedupe, encode, score, learn.

This is what `freshrec replay` and `bench/quality.py` run. A bad record never stops the replay: it goes to
the dead-letter file with its reason, and the counts always reconcile (read = accepted + rejected).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from freshrec.evaluation.prequential import RankingMetrics
from freshrec.preprocess.dedupe import Deduplicator
from freshrec.preprocess.validate import DeadLetterWriter, EventValidator
from freshrec.sources.base import RawBatch, Source
from freshrec.training.online import OnlineTrainer


@dataclass
class ReplayProgress:
    """What a progress display needs after each source batch."""

    events_read: int
    events_trained: int
    elapsed_seconds: float
    running: RankingMetrics

    @property
    def events_per_second(self) -> float:
        return self.events_read / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0


@dataclass
class ReplayReport:
    """The outcome of a replay: counts that reconcile, quality and speed."""

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
            "windows": [w.as_dict(k) for w in self.windows],
            "config": self.config,
        }


def replay(
    source: Source,
    trainer: OnlineTrainer,
    *,
    dead_letter: Path | str | None = None,
    validator: EventValidator | None = None,
    deduplicator: Deduplicator | None = None,
    read_size: int = 8192,
    window_events: int = 10_000,
    on_progress: Callable[[ReplayProgress], None] | None = None,
    config: dict[str, Any] | None = None,
    batches: Iterable[RawBatch] | None = None,
) -> ReplayReport:
    """Run `source` to its end through validation, dedupe and the trainer.

    Parameters
    ----------
    dead_letter
        JSONL file for rejected records (created only if something is rejected).
    read_size
        Records read from the source at a time (the trainer cuts them into its own micro-batches).
    window_events
        Size of the sliding windows reported in `ReplayReport.windows`.
    batches
        The source's batches when they must be read another way than `source.batches(read_size)` (a log
        followed until a stop signal).
    """
    validator = validator or EventValidator()
    deduplicator = deduplicator or Deduplicator()
    read = accepted = rejected = duplicates = 0
    started = time.perf_counter()
    with DeadLetterWriter(dead_letter) as dead_letters:
        for raw in batches if batches is not None else source.batches(read_size):
            result = validator.validate(raw)
            rejections = result.rejections  # includes the records the source could not parse
            dead_letters.write(rejections, source=source.name)
            events, dropped = deduplicator.filter(result.events)
            trainer.process(events)
            source.commit(raw.end_offset)
            read += raw.records_read
            rejected += len(rejections)
            accepted += len(result.events)
            duplicates += dropped
            if on_progress is not None:
                on_progress(
                    ReplayProgress(
                        read,
                        trainer.totals.events,
                        time.perf_counter() - started,
                        trainer.evaluator.running(),
                    )
                )
    evaluator = trainer.evaluator
    return ReplayReport(
        model=trainer.model.name,
        events_read=read,
        events_accepted=accepted,
        events_rejected=rejected,
        events_duplicate=duplicates,
        seconds=time.perf_counter() - started,
        overall=evaluator.summary(),
        last_20_percent=evaluator.final_fraction(0.2),
        windows=evaluator.windows(window_events),
        learning_events_per_second=trainer.totals.learning_events_per_second,
        config=config or {},
        dead_letter_path=str(dead_letter) if dead_letter is not None and rejected else None,
    )
