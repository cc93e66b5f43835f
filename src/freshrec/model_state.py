"""How a model's published state changes between versions: shared by the embedding tables, the models,
the publisher and the server, so it lives above all of them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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

    @property
    def changed_rows(self) -> int:
        return max((len(rows) for rows, _ in self.rows.values()), default=0)
