"""The source protocol: read raw records in batches with the offset to resume from, commit once safe.

A source only splits input into fields and positions; it never judges values (that is
`freshrec.preprocess.validate`) and never drops a record silently: a record it cannot even split into
fields is returned as a `Rejection` in `RawBatch.malformed`, so that read = accepted + rejected always holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from freshrec.errors import ConfigError

#: The canonical column names of a `RawBatch`; any other column is a context field.
EVENT_COLUMNS: tuple[str, ...] = ("event_id", "timestamp", "user_id", "item_id", "kind", "value")


@dataclass(frozen=True)
class Rejection:
    """Why one input record was not accepted as an event.

    Parameters
    ----------
    position
        Where the record is: the 1-based line number in a text file (the header is line 1), the row
        index in a Parquet file, the index in an HTTP request's array or a source's own sequence.
    field
        The first field that failed (``"user_id"``, ``"timestamp"``, a context field's name), or
        ``"_record"`` when the record could not be split into fields at all.
    reason
        What is wrong, for a person: ``"missing field"``, ``"non-finite value: nan"``, ...
    record
        The raw record as given: a JSON-able dict of its fields, or the raw line.

    >>> Rejection(3, "user_id", "missing field", {"item_id": 7}).field
    'user_id'
    """

    position: int
    field: str
    reason: str
    record: dict[str, Any] | str


@dataclass
class RawBatch:
    """Records as read, column by column, before validation.

    Attributes
    ----------
    columns
        Canonical names (`EVENT_COLUMNS`) plus context columns, each a numpy array with one entry per
        row. Typed arrays (int64 ids, float64 timestamps, int8 kind codes) take the validator's
        vectorised fast path; object arrays (text from CSV, values from JSON) are checked value by value.
        A missing optional column means "absent" for every row.
    positions
        int64, where each row was in the input (see `Rejection.position`).
    malformed
        Records that could not be split into fields (a CSV line with the wrong number of fields, a JSONL
        line that is not JSON). They count as read and as rejected.
    end_offset
        The source offset just after this batch: commit it once the batch's events are safe.
    offsets
        int64, the source offset of each row when the source numbers its records one by one (the event
        log, a stream partition), else None: a consumer can then resume exactly after any row, not only
        after whole batches.
    validated
        True when the rows are events freshrec validated before writing them (its own event log): the
        ingest pipeline then takes them as they are instead of judging them a second time.

    >>> batch = RawBatch({"user_id": np.array([1, 2])}, np.array([0, 1]), end_offset=2)
    >>> batch.records_read, batch.num_rows
    (2, 2)
    """

    columns: dict[str, np.ndarray]
    positions: np.ndarray
    malformed: list[Rejection] = field(default_factory=list)
    end_offset: int = 0
    offsets: np.ndarray | None = None
    validated: bool = False

    def __post_init__(self) -> None:
        n = len(self.positions)
        for name, column in self.columns.items():
            if len(column) != n:
                raise ValueError(f"RawBatch column {name!r} has {len(column)} rows, positions has {n}")

    @property
    def num_rows(self) -> int:
        """Rows split into fields (to be validated); excludes `malformed` records."""
        return len(self.positions)

    @property
    def records_read(self) -> int:
        """Every record this batch consumed from the input: rows plus malformed records."""
        return len(self.positions) + len(self.malformed)


def check_batch_size(max_records: int) -> None:
    """What every source's `batches` checks first: a positive number of records."""
    if max_records < 1:
        raise ConfigError(f"max_records must be at least 1, got {max_records}")


@runtime_checkable
class Source(Protocol):
    """Where events come from: batches of raw records, each with the offset to resume after it.

    Attributes
    ----------
    name
        Short name used in event ids synthesised by the source and in dead-letter records.
    """

    name: str

    def batches(self, max_records: int) -> Iterator[RawBatch]:
        """Read batches of at most `max_records` records (`RawBatch.records_read`), in order."""
        ...

    def commit(self, offset: int) -> None:
        """Record that everything before `offset` (a `RawBatch.end_offset`) has been safely processed."""
        ...
