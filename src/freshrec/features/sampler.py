"""Negative items for training: uniform draws from the most recent item occurrences, so an item is drawn in
proportion to how popular it is now (the models correct for that bias with log q)."""

from __future__ import annotations

import numpy as np

from freshrec.model_state import load_rng_state, rng_state

__all__ = ["RecentItemSampler"]


class RecentItemSampler:
    """Uniform draws from the last `window` item occurrences: popular-now items are drawn more often.

    >>> sampler = RecentItemSampler(window=4, seed=0)
    >>> sampler.add(np.array([1, 1, 1, 2], dtype=np.uint64))
    >>> draws = sampler.sample(1000)
    >>> set(draws.tolist()) <= {1, 2}, bool((draws == 1).mean() > 0.6)
    (True, True)
    """

    def __init__(self, window: int = 20_000, seed: int = 0) -> None:
        self._ring = np.zeros(window, dtype=np.uint64)
        self._filled = 0
        self._next = 0
        self._rng = np.random.default_rng(seed)

    def add(self, item_keys: np.ndarray) -> None:
        item_keys = item_keys[-len(self._ring) :]
        n, window = len(item_keys), len(self._ring)
        positions = (self._next + np.arange(n)) % window
        self._ring[positions] = item_keys
        self._next = (self._next + n) % window
        self._filled = min(window, self._filled + n)

    def sample(self, n: int, per_row: int | None = None, fallback: np.ndarray | None = None) -> np.ndarray:
        """`n` draws (shape [n] or [n, per_row]); before anything was added, draws from `fallback`."""
        shape = (n,) if per_row is None else (n, per_row)
        if self._filled == 0:
            if fallback is None or len(fallback) == 0:
                return np.zeros(shape, dtype=np.uint64)
            return fallback[self._rng.integers(0, len(fallback), size=shape)]
        return self._ring[self._rng.integers(0, self._filled, size=shape)]

    def state_dict(self) -> dict[str, np.ndarray]:
        """The ring of recent items, its position and the generator's: a loaded sampler draws the same."""
        return {
            "ring": self._ring.copy(),
            "position": np.array([self._next, self._filled], dtype=np.int64),
            "rng": rng_state(self._rng),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._ring = np.asarray(state["ring"], dtype=np.uint64).copy()
        self._next, self._filled = (int(v) for v in np.asarray(state["position"]).reshape(-1))
        load_rng_state(self._rng, state["rng"])
