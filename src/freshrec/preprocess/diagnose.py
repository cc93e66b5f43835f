"""Judge what an ingest run let in: warnings when too much was rejected or repeated, a failure when nothing
(or too little) was accepted, and for the usual mistakes the fix to type.

A replay that accepts nothing must not look like a replay of a stream that is hard to predict: these are
the lines `freshrec replay` prints after its table, and the exit code it ends with. This module only reads
counts and the first rejection of each kind (`freshrec.preprocess.pipeline.IngestCounts`); it never reads
the data again and never changes what was accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from freshrec.preprocess.pipeline import IngestCounts
from freshrec.sources.base import Rejection

__all__ = ["Diagnosis", "FAILED", "diagnose", "fix_for"]

#: Exit code of a replay that accepted nothing, or rejected more than its largest share.
FAILED = 3

_UNITS = {"milliseconds": "ms", "microseconds": "us", "nanoseconds": "ns"}
# A day-month-year or month-day-year date, with an optional time and AM/PM: "05/01/2024 2:30 PM".
_NUMERIC_DATE = re.compile(
    r"^\s*(\d{1,2})([/.-])(\d{1,2})\2(\d{4}|\d{2})"
    r"(?:([ T])\d{1,2}:\d{2}(:\d{2})?(?:\s*([AaPp][Mm]))?)?\s*$"
)


@dataclass
class Diagnosis:
    """What a run's counts say.

    Attributes
    ----------
    warnings
        Lines to show: each says what passed its share, the most frequent reasons, and the fix.
    failure
        Why the run failed (nothing accepted, or too much rejected), else None.
    """

    warnings: list[str] = field(default_factory=list)
    failure: str | None = None

    @property
    def exit_code(self) -> int:
        return FAILED if self.failure is not None else 0


def diagnose(
    counts: IngestCounts,
    *,
    warn_share: float = 0.05,
    max_rejected_share: float = 1.0,
    event_id_column: str | None = None,
) -> Diagnosis:
    """Warnings and failure of a run with these counts.

    Parameters
    ----------
    warn_share
        Rejected share (of records read) and duplicate share (of events accepted) past which to warn.
    max_rejected_share
        Rejected share past which the run fails; a run that accepts nothing fails in any case.
    event_id_column
        The source column read as ``event_id``, if one was mapped: repeats then point at the mapping.

    >>> from freshrec.sources.base import Rejection
    >>> counts = IngestCounts(read=2, accepted=0, rejected=2)
    >>> reason = "timestamp out of range: 1.7e+12 is after 2200-01-01 (milliseconds?)"
    >>> key = "timestamp: timestamp out of range: after 2200-01-01 (milliseconds?)"
    >>> counts.reasons[key] = 2
    >>> counts.examples[key] = Rejection(2, "timestamp", reason, {"timestamp": 1.7e12})
    >>> print(diagnose(counts).failure)
    nothing was accepted: 2 of 2 records rejected (100.0%); timestamp: timestamp out of range: after \
2200-01-01 (milliseconds?) x 2; fix: timestamps look like epoch milliseconds: pass --time-unit ms \
(source.time_unit = "ms")
    """
    result = Diagnosis()
    rejected_share, duplicate_share = counts.rejected_share, counts.duplicate_share
    rejected = f"{counts.rejected:,} of {counts.read:,} records rejected ({rejected_share:.1%})"
    reasons = f"; {_reasons_and_fixes(counts)}" if counts.rejected else ""
    past_warning = f", more than --warn-share {warn_share:.1%} (pipeline.warn_share)"
    if counts.accepted == 0:
        result.failure = (
            f"nothing was accepted: {rejected}{reasons}"
            if counts.read
            else "nothing was accepted: the source holds no records"
        )
    elif rejected_share > max_rejected_share:
        result.failure = (
            f"{rejected}, more than --max-rejected-share {max_rejected_share:.1%} "
            f"(pipeline.max_rejected_share){reasons}"
        )
    elif rejected_share > warn_share:
        result.warnings.append(f"{rejected}{past_warning}{reasons}")
    if counts.accepted and duplicate_share > warn_share:
        line = (
            f"{counts.duplicates:,} of {counts.accepted:,} accepted events ({duplicate_share:.1%}) dropped "
            f"as repeats of an earlier event_id{past_warning}; "
        )
        if event_id_column is not None:
            line += (
                f"event_id must identify one event, and column {event_id_column!r} repeats across "
                "events: map a column that is unique per event as id=, or leave id= out of --columns "
                "(each record is then its own event)"
            )
        else:
            line += "the source delivers the same events more than once"
        result.warnings.append(line)
    return result


def fix_for(key: str, example: Rejection | None) -> str | None:
    """The fix of a usual mistake, from a rejection group (``"field: reason"``) and its first rejection.

    >>> fix_for("timestamp: unparseable timestamp: expected epoch seconds or ISO 8601",
    ...         Rejection(2, "timestamp", "", {"timestamp": "05/31/2024 14:00"}))
    "timestamps look like US dates (month/day/year, e.g. '05/31/2024 14:00'): pass --time-format \
'%m/%d/%Y %H:%M' (source.time_format)"
    """
    for unit, code in _UNITS.items():
        if key.startswith("timestamp:") and f"({unit}?)" in key:
            return f'timestamps look like epoch {unit}: pass --time-unit {code} (source.time_unit = "{code}")'
    if key.startswith("timestamp: unparseable timestamp"):
        value = _field(example, "timestamp")
        if isinstance(value, str):
            return _time_format_fix(value)
    if key.startswith("_record: wrong number of fields"):
        return (
            "lines do not split into the header's fields: check the delimiter (--delimiter, "
            "source.delimiter) and whether the file has a header (--no-header, source.header)"
        )
    if key.startswith("_record: expected a JSON object, got array"):
        return "write one JSON object per line, or the whole file as one JSON array of objects"
    return None


def _reasons_and_fixes(counts: IngestCounts, top: int = 3) -> str:
    """The most frequent rejection groups with their counts, then the fixes known for them."""
    common = counts.reasons.most_common(top)
    parts = [f"{key} x {count:,}" for key, count in common]
    fixes = list(dict.fromkeys(f for key, _ in common if (f := fix_for(key, counts.examples.get(key)))))
    text = "; ".join(parts)
    if len(counts.reasons) > top:
        text += f"; {len(counts.reasons) - top} more kinds of reason in the dead letters"
    if fixes:
        text += "; fix: " + "; ".join(fixes)
    return text


def _field(example: Rejection | None, name: str) -> Any:
    if example is None or not isinstance(example.record, dict):
        return None
    return example.record.get(name)


def _time_format_fix(value: str) -> str:
    shown = value if len(value) <= 40 else value[:40] + "..."
    match = _NUMERIC_DATE.match(value)
    if match is None:
        return (
            f"timestamps are neither epoch numbers nor ISO 8601 (e.g. {shown!r}): pass their strptime "
            "format with --time-format (source.time_format)"
        )
    first, separator, second, year, time_separator, has_seconds, meridiem = match.groups()
    day_first = int(first) > 12
    date = ["%d", "%m"] if day_first else ["%m", "%d"]
    fmt = separator.join([*date, "%Y" if len(year) == 4 else "%y"])
    if time_separator is not None:
        hours = "%I" if meridiem else "%H"
        fmt += f"{time_separator}{hours}:%M" + (":%S" if has_seconds else "") + (" %p" if meridiem else "")
    if day_first:
        return f"timestamps look like dates day/month/year (e.g. {shown!r}): pass --time-format {fmt!r} " + (
            "(source.time_format)"
        )
    swapped = fmt.replace("%m", "%%").replace("%d", "%m").replace("%%", "%d")
    ambiguous = "" if int(second) > 12 else f", or {swapped!r} if the day comes first"
    return (
        f"timestamps look like US dates (month/day/year, e.g. {shown!r}): pass --time-format {fmt!r}"
        f"{ambiguous} (source.time_format)"
    )
