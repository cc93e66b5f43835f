"""Events already in memory (a pyarrow table, a pandas DataFrame) as the raw batches every source yields, so
that they go through the same validation as a file: what the library API learns from.

Like every source it only splits input into fields; judging values is `freshrec.preprocess.validate`'s job.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from freshrec.errors import SourceError
from freshrec.sources.base import RawBatch
from freshrec.sources.files import ColumnMapping, arrow_to_numpy, parse_column_mapping

__all__ = ["table_batch", "to_arrow"]


def to_arrow(data: Any) -> pa.Table | None:
    """`data` as a pyarrow table when it is one or a pandas DataFrame (None for anything else)."""
    if isinstance(data, pa.Table):
        return data
    if type(data).__name__ == "DataFrame" and type(data).__module__.startswith("pandas"):
        return pa.Table.from_pandas(data, preserve_index=False)
    return None


def table_batch(
    table: pa.Table, mapping: ColumnMapping | str | None = None, name: str = "table", first_position: int = 0
) -> RawBatch:
    """The rows of `table` as one raw batch. `mapping` names the columns of each event field (None: the
    table already uses the canonical names ``user_id``, ``item_id``, ``timestamp``...); rows without an
    event id are named ``"{name}:{position}"``, positions counting from `first_position`.

    >>> table = pa.table({"user": ["a"], "item": [7], "ts": [1.7e9]})
    >>> batch = table_batch(table, "user=user,item=item,time=ts")
    >>> sorted(batch.columns), batch.columns["event_id"].tolist()
    (['event_id', 'item_id', 'timestamp', 'user_id'], ['table:0'])
    """
    resolved = parse_column_mapping(mapping) if isinstance(mapping, str) else mapping
    names = table.column_names
    if resolved is None:
        resolved = ColumnMapping.infer(names)
    wanted = resolved.file_columns()
    missing = [column for column in wanted.values() if column not in names]
    if missing:
        raise SourceError(
            f"column {missing[0]!r} not found; the table's columns are {', '.join(names) or '(none)'}"
        )
    n = table.num_rows
    columns = {canonical: arrow_to_numpy(table.column(column)) for canonical, column in wanted.items()}
    positions = np.arange(first_position, first_position + n, dtype=np.int64)
    if "event_id" not in columns:
        columns["event_id"] = np.array([f"{name}:{p}" for p in positions.tolist()], dtype=object)
    return RawBatch(columns, positions, end_offset=first_position + n)
