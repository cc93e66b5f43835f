"""The event: the one record that flows through every stage, as a single `Event` or a columnar `EventBatch`.

Every stage after the sources works on `EventBatch` (numpy columns), never on Python objects one by one:
the hot path is vectorised per batch. This module holds only the shape of the data and the rules of the
schema (limits, kinds); turning raw records into events is `freshrec.preprocess.validate`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from freshrec.errors import ConfigError

#: The kinds of user action freshrec understands. A kind's position is its code in `EventBatch.kind`.
EVENT_KINDS: tuple[str, ...] = ("view", "click", "like", "purchase", "rating")
KIND_CODES: dict[str, int] = {name: code for code, name in enumerate(EVENT_KINDS)}

RawId = str | int


@dataclass(frozen=True)
class SchemaLimits:
    """Bounds an event must respect to be accepted; anything outside them is rejected with its reason."""

    #: Earliest accepted timestamp (epoch seconds): 1970-01-01. Earlier is almost always a unit error.
    min_timestamp: float = 0.0
    #: Latest accepted timestamp: 2200-01-01. Catches milliseconds passed as seconds (13-digit values).
    max_timestamp: float = 7_258_118_400.0
    #: Longest accepted id or context string, in characters: guards memory against garbage input.
    max_string_length: int = 256
    #: Most context fields per event.
    max_context_fields: int = 32


DEFAULT_LIMITS = SchemaLimits()


@dataclass(frozen=True)
class KindWeights:
    """How much an event of each kind counts when an implicit model learns from it (the
    ``[trainer.kind_weights]`` section): a sample weight in a gradient model's loss, the size of a counting
    model's increment.

    A purchase says more about what a user wants than a view (a view is often a scroll past, a purchase
    is money spent): the defaults rank them purchase > like > click > view. A view, the kind of an event
    that has none, and a rating weigh 1, so data without kinds and a stream of ratings (MovieLens) learn
    exactly as without weights; an explicit model (``rating-mf``) reads the value as a rating and ignores
    these weights.

    >>> KindWeights().of(np.array([0, 3], np.int8)).tolist()
    [1.0, 6.0]
    >>> KindWeights().of(np.array([0, 0, 4], np.int8)) is None  # all 1: no weights at all
    True
    """

    view: float = 1.0
    click: float = 2.0
    like: float = 4.0
    purchase: float = 6.0
    rating: float = 1.0

    def __post_init__(self) -> None:
        for name in EVENT_KINDS:
            weight = getattr(self, name)
            number = isinstance(weight, int | float) and not isinstance(weight, bool)
            if not number or not 0 <= weight < float("inf"):
                raise ConfigError(f"{name} must be a finite number >= 0 (a weight), got {weight!r}")

    @classmethod
    def uniform(cls) -> KindWeights:
        """Every kind weighs 1: learning ignores kinds (what freshrec did before kinds had weights)."""
        return cls(**dict.fromkeys(EVENT_KINDS, 1.0))

    def table(self) -> np.ndarray:
        """float32 [len(EVENT_KINDS)], the weight of each kind code."""
        return np.array([getattr(self, name) for name in EVENT_KINDS], dtype=np.float32)

    def of(self, kinds: np.ndarray) -> np.ndarray | None:
        """float32 weight of each event of kind codes `kinds`; None when every one is 1, so that models
        take their unweighted path (bit for bit what they computed before weights existed)."""
        weights = self.table()[np.asarray(kinds, dtype=np.intp)]
        return None if bool(np.all(weights == 1.0)) else weights


@dataclass(frozen=True)
class Event:
    """One user action on one item.

    Parameters
    ----------
    event_id
        Unique id of the event, used to drop duplicates (at-least-once delivery upstream).
    timestamp
        Event time in epoch seconds (UTC). Evaluation and expiry run on event time, not wall time.
    user_id, item_id
        Raw ids, strings or integers; ``42`` and ``"42"`` are the same id.
    kind
        One of `EVENT_KINDS`.
    value
        Optional number: the rating for ``rating`` events, a price or a watch time otherwise.
    context
        Optional flat mapping of extra fields (device, page, ...), strings or numbers.

    >>> Event("e1", 1_700_000_000.0, "alice", 42, "rating", 4.0).kind
    'rating'
    """

    event_id: RawId
    timestamp: float
    user_id: RawId
    item_id: RawId
    kind: str = "view"
    value: float | None = None
    context: Mapping[str, str | int | float] | None = None


def _id_column(values: Sequence[RawId] | np.ndarray) -> np.ndarray:
    """An id column: int64 when every id is an integer, else an object array of the ids as given."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        return values.astype(np.int64, copy=False)
    array = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    if len(array) and all(type(v) is int for v in array.tolist()):
        return array.astype(np.int64)
    return array.astype(object, copy=False)


@dataclass
class EventBatch:
    """A batch of events as numpy columns, in the order they happened (ties keep arrival order).

    Ids keep their raw form: an id column is ``int64`` when all its ids are integers, otherwise an object
    array of strings and integers. ``kind`` holds codes into `EVENT_KINDS`; ``value`` is ``NaN`` where
    absent. ``context`` maps a field name to a column (object array, ``None`` where absent).

    >>> batch = EventBatch.from_events([Event("a", 1.0, "u1", 7, "click"), Event("b", 2.0, "u2", 8)])
    >>> len(batch), batch.kind.tolist()
    (2, [1, 0])
    """

    event_id: np.ndarray
    timestamp: np.ndarray
    user_id: np.ndarray
    item_id: np.ndarray
    kind: np.ndarray
    value: np.ndarray
    context: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.timestamp)
        for name in ("event_id", "user_id", "item_id", "kind", "value"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"EventBatch column {name!r} has {len(getattr(self, name))} rows, expected {n}"
                )
        for name, column in self.context.items():
            if len(column) != n:
                raise ValueError(f"EventBatch context column {name!r} has {len(column)} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.timestamp)

    @classmethod
    def empty(cls) -> EventBatch:
        return cls(
            event_id=np.empty(0, dtype=object),
            timestamp=np.empty(0, dtype=np.float64),
            user_id=np.empty(0, dtype=np.int64),
            item_id=np.empty(0, dtype=np.int64),
            kind=np.empty(0, dtype=np.int8),
            value=np.empty(0, dtype=np.float64),
        )

    @classmethod
    def from_events(cls, events: Iterable[Event]) -> EventBatch:
        """A batch of already valid events (raw input goes through `freshrec.preprocess.validate`)."""
        events = list(events)
        if not events:
            return cls.empty()
        context_names = sorted({name for e in events if e.context for name in e.context})
        return cls(
            event_id=_id_column([e.event_id for e in events]),
            timestamp=np.array([e.timestamp for e in events], dtype=np.float64),
            user_id=_id_column([e.user_id for e in events]),
            item_id=_id_column([e.item_id for e in events]),
            kind=np.array([KIND_CODES[e.kind] for e in events], dtype=np.int8),
            value=np.array([np.nan if e.value is None else e.value for e in events], dtype=np.float64),
            context={
                name: np.array([(e.context or {}).get(name) for e in events], dtype=object)
                for name in context_names
            },
        )

    def to_events(self) -> list[Event]:
        """The batch as `Event` objects (tests, the HTTP layer, dead letters; never the hot path)."""
        events = []
        for i in range(len(self)):
            context = {name: col[i] for name, col in self.context.items() if col[i] is not None}
            value = float(self.value[i])
            events.append(
                Event(
                    event_id=_plain(self.event_id[i]),
                    timestamp=float(self.timestamp[i]),
                    user_id=_plain(self.user_id[i]),
                    item_id=_plain(self.item_id[i]),
                    kind=EVENT_KINDS[int(self.kind[i])],
                    value=None if np.isnan(value) else value,
                    context=context or None,
                )
            )
        return events

    def take(self, indices: np.ndarray | slice) -> EventBatch:
        """The rows at `indices` (an index array, boolean mask or slice), as a new batch."""
        return EventBatch(
            event_id=self.event_id[indices],
            timestamp=self.timestamp[indices],
            user_id=self.user_id[indices],
            item_id=self.item_id[indices],
            kind=self.kind[indices],
            value=self.value[indices],
            context={name: col[indices] for name, col in self.context.items()},
        )

    @classmethod
    def concat(cls, batches: Sequence[EventBatch]) -> EventBatch:
        batches = [b for b in batches if len(b)]
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return batches[0]
        n = sum(len(b) for b in batches)
        names = sorted({name for b in batches for name in b.context})

        def context_column(batch: EventBatch, name: str) -> np.ndarray:
            return batch.context.get(name, np.full(len(batch), None, dtype=object))

        return (
            cls(
                event_id=_concat_ids([b.event_id for b in batches]),
                timestamp=np.concatenate([b.timestamp for b in batches]),
                user_id=_concat_ids([b.user_id for b in batches]),
                item_id=_concat_ids([b.item_id for b in batches]),
                kind=np.concatenate([b.kind for b in batches]),
                value=np.concatenate([b.value for b in batches]),
                context={name: np.concatenate([context_column(b, name) for b in batches]) for name in names},
            )
            if n
            else cls.empty()
        )


def _concat_ids(columns: Sequence[np.ndarray]) -> np.ndarray:
    if all(c.dtype.kind in "iu" for c in columns):
        return np.concatenate(columns).astype(np.int64, copy=False)
    return np.concatenate([c.astype(object) for c in columns])


def _plain(value: Any) -> Any:
    """A numpy scalar as the matching Python scalar (ids must compare equal to what the user sent)."""
    return value.item() if isinstance(value, np.generic) else value
