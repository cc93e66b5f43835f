"""A bounded count-min sketch of how often each not-yet-admitted id was seen: the frequency filter in front
of the embedding tables (an id gets a row only after `admit_after` sightings).

Memory is fixed (``depth x width`` one-byte counters) however many distinct ids the stream brings; the
sketch may over-count an id (hash collisions) but never under-counts it within its aging window. It must
never grow with the stream and never be asked about admitted ids (the KeyIndex counts those exactly).
"""

from __future__ import annotations

import numpy as np

from freshrec.errors import ConfigError
from freshrec.hashing import mix64
from freshrec.model_state import array_like

#: Counters saturate here (one byte each): admission thresholds above it cannot be expressed.
MAX_COUNT = 255


class CountMinSketch:
    """Count-min sketch with conservative update and periodic halving (aging).

    Parameters
    ----------
    width
        Counters per row, a power of two.
    depth
        Rows (independent hash functions); an over-count needs a collision in every row.
    aging_window
        After this many counted sightings all counters are halved, so old sightings fade and the load per
        counter stays below ``aging_window / width`` (default ``width / 4``).
    seed
        Seeds the row hash functions.

    Notes
    -----
    Error: an id's estimate is its true count in the window plus the smallest collision mass over its
    ``depth`` counters. With the window at ``width / 4`` sightings each counter holds on average at most
    1/4 of a foreign sighting, so a once-seen id is estimated at 2 or more with probability at most
    ``(1 - exp(-1/4)) ** depth`` (0.24% at depth 4), before the further reduction conservative update
    brings. Halving forgets: a sighting counts for one to two windows.

    >>> sketch = CountMinSketch(width=1024)
    >>> sketch.add(np.array([7, 9], dtype=np.uint64), np.array([2, 1])).tolist()
    [2, 1]
    >>> sketch.estimate(np.array([7, 9, 11], dtype=np.uint64)).tolist()
    [2, 1, 0]
    """

    def __init__(self, width: int = 1 << 20, depth: int = 4, aging_window: int | None = None, seed: int = 0):
        if width < 2 or width & (width - 1):
            raise ConfigError(f"sketch width must be a power of two >= 2, got {width}; e.g. 1 << 20")
        if depth < 1:
            raise ConfigError(f"sketch depth must be >= 1, got {depth}")
        self.width = int(width)
        self.depth = int(depth)
        self.aging_window = int(aging_window) if aging_window else max(1, self.width // 4)
        self.seed = int(seed)
        self.counters = np.zeros((self.depth, self.width), dtype=np.uint8)
        self.counted = 0  # sightings added since the last halving
        self._shift = np.uint64(64 - (self.width.bit_length() - 1))

    @property
    def nbytes(self) -> int:
        return int(self.counters.nbytes)

    def _cells(self, keys: np.ndarray) -> np.ndarray:
        """int64 [depth, n] counter index of each key in each row."""
        return np.stack(
            [
                (mix64(keys, self.seed * 7919 + row + 1) >> self._shift).astype(np.int64)
                for row in range(self.depth)
            ]
        )

    def estimate(self, keys: np.ndarray) -> np.ndarray:
        """int64 estimated sightings of each key (>= the true count within the window)."""
        cells = self._cells(keys)
        return self.counters[np.arange(self.depth)[:, None], cells].min(axis=0).astype(np.int64)

    def add(self, keys: np.ndarray, occurrences: np.ndarray) -> np.ndarray:
        """Count `occurrences` more sightings of each of the distinct `keys`; returns the new estimates.

        Conservative update: a counter is raised only as far as the key's new estimate, which keeps the
        counters shared with other keys lower than a plain increment would.
        """
        if len(keys) == 0:
            return np.zeros(0, dtype=np.int64)
        cells = self._cells(keys)
        rows = np.arange(self.depth)[:, None]
        current = self.counters[rows, cells].min(axis=0).astype(np.int64)
        updated = np.minimum(current + occurrences, MAX_COUNT)
        for row in range(self.depth):
            np.maximum.at(self.counters[row], cells[row], updated.astype(np.uint8))
        self.counted += int(occurrences.sum())
        if self.counted >= self.aging_window:
            self.counters >>= 1
            self.counted = 0
        return updated

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"counters": self.counters.copy(), "counted": np.array(self.counted, dtype=np.int64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        hint = "use the same sketch_width and sketch_depth as the saved table"
        self.counters = array_like(state, "counters", self.counters, hint)
        self.counted = int(state["counted"])
