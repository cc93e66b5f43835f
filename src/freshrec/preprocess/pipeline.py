"""The ingest pipeline: raw batch -> validated -> deduplicated -> encoded batch, written once and used by
every process (replay, the live trainer, the server's feature follower, the studies, the library API).

An event is validated once, on its way in: at the HTTP door (`IngestPipeline.validate_records`) or when read
from a file or a stream that others wrote (`IngestPipeline.process`). Batches freshrec validated itself
before writing them (its event log marks them `RawBatch.validated`) pass straight to deduplication. Every
consumer of one log keeps its own deduplication window: the same events in the same order give every
process the same decisions, so a trainer and a server agree on what happened without talking.

It never drops a record silently: ``read = accepted + rejected`` per batch and in total, duplicates are
counted among the accepted, and rejections go to the dead-letter writer with their reasons.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from freshrec.errors import ConfigError
from freshrec.events import EventBatch, SchemaLimits
from freshrec.interactions import EncodedBatch
from freshrec.model_state import State, under_prefix, with_prefix
from freshrec.preprocess.dedupe import Deduplicator
from freshrec.preprocess.encode import IdEncoder, encode_ids
from freshrec.preprocess.validate import (
    DeadLetterWriter,
    EventValidator,
    Rejection,
    ValidationResult,
    reason_group,
)
from freshrec.sources.base import EVENT_COLUMNS, RawBatch

__all__ = ["IngestCounts", "IngestPipeline", "IngestedBatch", "PipelineConfig", "encode_events"]


@dataclass
class PipelineConfig:
    """How raw records become encoded events (the ``[pipeline]`` section of a configuration file).

    Parameters
    ----------
    default_kind
        The kind of an event whose kind is absent or blank (one of `freshrec.events.EVENT_KINDS`).
    limits
        Bounds on timestamps, string lengths and context size (`freshrec.events.SchemaLimits`).
    dedupe_window
        Distinct event ids remembered to drop repeats (between ``window`` and ``2 x window``, 16-32 bytes
        each; see `freshrec.preprocess.dedupe`).
    read_size
        Records read from a source at a time (the trainer cuts them into its own micro-batches).
    item_ids
        Raw item ids remembered for the way back from keys (what a server or the library API answers
        with), least recently seen forgotten first; 0 remembers none.
    warn_share
        Share of records rejected, or of accepted events dropped as duplicates, past which a replay warns
        (`freshrec.preprocess.diagnose`).
    max_rejected_share
        Share of records rejected past which a replay fails (exit code 3); a replay that accepts nothing
        fails whatever this says. 1.0 fails only then.
    kinds
        Raw kind names of one's own data -> the kind each stands for (``[pipeline.kinds] add_to_cart =
        "click"``); a kind neither canonical nor mapped is rejected with the key to add.
    """

    default_kind: str = "view"
    limits: SchemaLimits = field(default_factory=SchemaLimits)
    dedupe_window: int = 1_000_000
    read_size: int = 8192
    item_ids: int = 0
    warn_share: float = 0.05
    max_rejected_share: float = 1.0
    kinds: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        EventValidator(self.limits, self.default_kind, self.kinds)  # names a bad kind or kind map entry
        if self.read_size < 1:
            raise ConfigError(f"read_size must be at least 1 record, got {self.read_size}")
        for name in ("warn_share", "max_rejected_share"):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                raise ConfigError(f"{name} must be a share between 0 and 1 (0.05 is 5%), got {share}")


@dataclass
class IngestedBatch:
    """One raw batch after the pipeline.

    Attributes
    ----------
    events
        The accepted events that were not repeats, encoded, in input order.
    rejections
        Records rejected by validation (or that the source could not split into fields).
    read
        Records the batch consumed from the source (``accepted + rejected``).
    duplicates
        Accepted events dropped as repeats of an earlier delivery.
    offsets
        int64, the source offset of each event in `events`, when the source numbers its records (the
        event log); None otherwise.
    end_offset
        The source offset just after the batch (what to commit once its effect is durable); None for
        events that came from no source (`IngestPipeline.accept`).
    raw
        The accepted, deduplicated events with their raw ids (what a writer appends to a log).
    """

    events: EncodedBatch
    rejections: list[Rejection]
    read: int
    duplicates: int
    offsets: np.ndarray | None
    end_offset: int | None
    raw: EventBatch

    @property
    def accepted(self) -> int:
        return self.read - len(self.rejections)


@dataclass
class IngestCounts:
    """Running totals of a pipeline: read = accepted + rejected, and the reasons of the rejections.

    Attributes
    ----------
    reasons
        Rejections per ``"field: reason"``, the reason without the value it quotes
        (`freshrec.preprocess.validate.reason_group`): ``"timestamp: timestamp out of range: after
        2200-01-01 (milliseconds?)"``.
    examples
        The first rejection of each key of `reasons`, as it was written to the dead letters.

    At most `MAX_REASON_GROUPS` keys are kept; rejections of any further reason count under
    `OTHER_REASONS`, so that a hostile column (a million distinct unknown kinds, each of which names its own
    ``[pipeline.kinds]`` key) cannot grow them without bound.
    """

    MAX_REASON_GROUPS: ClassVar[int] = 100
    OTHER_REASONS: ClassVar[str] = "other reasons (see the dead letters)"

    read: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: dict[str, Rejection] = field(default_factory=dict)

    def add(self, batch: IngestedBatch) -> None:
        self.read += batch.read
        self.accepted += batch.accepted
        self.rejected += len(batch.rejections)
        self.duplicates += batch.duplicates
        for rejection in batch.rejections:
            key = f"{rejection.field}: {reason_group(rejection.reason)}"
            if key not in self.reasons and len(self.reasons) >= self.MAX_REASON_GROUPS:
                key = self.OTHER_REASONS
            self.reasons[key] += 1
            self.examples.setdefault(key, rejection)

    @property
    def rejected_share(self) -> float:
        """Rejected records per record read (0 when nothing was read)."""
        return self.rejected / self.read if self.read else 0.0

    @property
    def duplicate_share(self) -> float:
        """Accepted events dropped as repeats per accepted event (0 when nothing was accepted)."""
        return self.duplicates / self.accepted if self.accepted else 0.0


class IngestPipeline:
    """Validate, deduplicate and encode raw batches, keeping counts and (optionally) dead letters.

    Parameters
    ----------
    config
        Validation limits, deduplication window and what to remember of raw ids.
    dead_letters
        Where rejected records go (None: they are only counted).
    source
        Name written with each dead letter.

    >>> from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream
    >>> pipeline = IngestPipeline()
    >>> stream = SyntheticStream(SyntheticConfig(n_events=500, duplicate_fraction=0.1))
    >>> batches = [pipeline.process(raw) for raw in stream.batches(200)]
    >>> counts = pipeline.counts
    >>> counts.read == counts.accepted + counts.rejected, counts.duplicates > 0
    (True, True)
    >>> sum(len(b.events) for b in batches) == counts.accepted - counts.duplicates
    True
    """

    def __init__(
        self,
        config: PipelineConfig | None = None,
        dead_letters: DeadLetterWriter | None = None,
        source: str | None = None,
    ) -> None:
        self.config = config = config or PipelineConfig()
        self.validator = EventValidator(config.limits, config.default_kind, config.kinds)
        self.deduplicator = Deduplicator(config.dedupe_window)
        self.item_ids = IdEncoder(config.item_ids) if config.item_ids else None
        self.dead_letters = dead_letters
        self.source = source
        self.counts = IngestCounts()

    def process(self, raw: RawBatch) -> IngestedBatch:
        """One raw batch through validation (unless freshrec validated it already), deduplication and
        encoding; rejections go to the dead letters."""
        if raw.validated:
            events, rows, rejections = _validated_events(raw), np.arange(raw.num_rows), list(raw.malformed)
        else:
            result = self.validator.validate(raw)
            events, rows, rejections = result.events, result.rows, result.rejections
        if rejections and self.dead_letters is not None:
            self.dead_letters.write(rejections, source=self.source)
        offsets = None if raw.offsets is None else np.asarray(raw.offsets)[rows]
        return self._accept(events, rejections, raw.records_read, offsets, raw.end_offset)

    def process_records(self, records: Sequence[Any], start_position: int = 0) -> IngestedBatch:
        """JSON-like records (see `EventValidator.validate_records`) through validation, deduplication and
        encoding; rejections go to the dead letters."""
        result = self.validator.validate_records(records, start_position)
        if result.rejections and self.dead_letters is not None:
            self.dead_letters.write(result.rejections, source=self.source)
        return self._accept(result.events, result.rejections, len(records), None, None)

    def accept(self, events: EventBatch) -> IngestedBatch:
        """Events already valid (validated at a door, or built by code): deduplicated and encoded."""
        return self._accept(events, [], len(events), None, None)

    def _accept(
        self,
        events: EventBatch,
        rejections: list[Rejection],
        read: int,
        offsets: np.ndarray | None,
        end_offset: int | None,
    ) -> IngestedBatch:
        keep = self.deduplicator.first_sightings(encode_ids(events.event_id)) if len(events) else None
        duplicates = 0 if keep is None else int(len(keep) - np.count_nonzero(keep))
        if duplicates:
            events = events.take(keep)
            offsets = None if offsets is None else offsets[keep]
        # Fields in declaration order: the encoded events first, their raw ids last.
        batch = IngestedBatch(self.encode(events), rejections, read, duplicates, offsets, end_offset, events)
        self.counts.add(batch)
        return batch

    def validate_records(self, records: Sequence[Any], start_position: int = 0) -> ValidationResult:
        """Validate JSON-like records at the door (HTTP ingest): what is accepted is written to a log
        whose readers take it without validating again."""
        return self.validator.validate_records(records, start_position)

    def encode(self, events: EventBatch) -> EncodedBatch:
        """Keys of the events' ids (remembering raw item ids when configured)."""
        return encode_events(events, self.item_ids)

    def raw_item_ids(self, keys: np.ndarray) -> np.ndarray:
        """The raw id of each item key (object array; None where forgotten or never seen)."""
        if self.item_ids is None:
            return np.full(len(keys), None, dtype=object)
        return self.item_ids.raw_ids(keys)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> State:
        """The deduplication window and the counts (the raw-id map is saved apart: its ids are not
        numbers, see `IdEncoder.to_arrow`)."""
        counts = self.counts
        state = with_prefix(self.deduplicator.state_dict(), "dedupe.")
        state["counts"] = np.array(
            [counts.read, counts.accepted, counts.rejected, counts.duplicates], np.int64
        )
        return state

    def load_state_dict(self, state: State) -> None:
        self.deduplicator.load_state_dict(under_prefix(state, "dedupe."))
        read, accepted, rejected, duplicates = (int(v) for v in np.asarray(state["counts"]).reshape(-1))
        self.counts = IngestCounts(read, accepted, rejected, duplicates)


def encode_events(events: EventBatch, item_ids: IdEncoder | None = None) -> EncodedBatch:
    """The events with their ids encoded to keys (`freshrec.preprocess.encode`), remembering raw item ids
    in `item_ids` when given. The last step of the pipeline, for events already valid and deduplicated."""
    items = item_ids.encode(events.item_id) if item_ids is not None else encode_ids(events.item_id)
    return EncodedBatch(
        encode_ids(events.user_id),
        items,
        np.asarray(events.timestamp, dtype=np.float64),
        np.asarray(events.value, dtype=np.float64),
        np.asarray(events.kind, dtype=np.int8),
    )


def _validated_events(raw: RawBatch) -> EventBatch:
    """The rows of a batch freshrec validated before writing it, as events (no check repeated)."""
    columns = raw.columns
    n = raw.num_rows
    return EventBatch(
        event_id=columns["event_id"],
        timestamp=np.asarray(columns["timestamp"], dtype=np.float64),
        user_id=columns["user_id"],
        item_id=columns["item_id"],
        kind=np.asarray(columns.get("kind", np.zeros(n, np.int8)), dtype=np.int8),
        value=np.asarray(columns.get("value", np.full(n, np.nan)), dtype=np.float64),
        context={name: column for name, column in columns.items() if name not in EVENT_COLUMNS},
    )
