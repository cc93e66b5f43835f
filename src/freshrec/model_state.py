"""How a model's published state changes between versions: shared by the embedding tables, the models,
the publisher and the server, so it lives above all of them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

Value = TypeVar("Value")


def under_prefix(mapping: Mapping[str, Value], prefix: str) -> dict[str, Value]:
    """The entries of a state (or of a change) named ``<prefix><name>``, as ``<name>``: how a model hands
    each part it is composed of (a table, an index, a component) its own state.

    >>> under_prefix({"items.keys": 1, "items.rows": 2, "clock": 3}, "items.")
    {'keys': 1, 'rows': 2}
    """
    n = len(prefix)
    return {name[n:]: value for name, value in mapping.items() if name.startswith(prefix)}


@dataclass
class StateChanges:
    """What changed in a model's published state since the previous `drain_changes` call.

    A model's state is a flat dict of numeric arrays (`state_dict`). Arrays whose leading dimension is a
    row (an embedding row, an item slot) change by rows; small or dense arrays are replaced whole.

    Attributes
    ----------
    rows
        name -> (row indices int64 [r], new values [r, ...]): apply as ``state[name][rows] = values``.
    replaced
        name -> the whole new array.
    complete
        False when the model could not keep track of every change (more than it bounds): the publisher
        must then publish a full snapshot instead of a delta.
    """

    rows: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    replaced: dict[str, np.ndarray] = field(default_factory=dict)
    complete: bool = True

    def under(self, prefix: str) -> StateChanges:
        """The part of these changes named under `prefix`, with the prefix taken off (see `under_prefix`)."""
        return StateChanges(
            under_prefix(self.rows, prefix), under_prefix(self.replaced, prefix), self.complete
        )

    @property
    def changed_rows(self) -> int:
        return max((len(rows) for rows, _ in self.rows.values()), default=0)
