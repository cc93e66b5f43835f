"""The contract every recommender model honours, so that the trainer, the evaluator and the server treat
popularity counts, item-to-item statistics and deep models alike.

A model never sees raw ids: only uint64 keys (see `freshrec.interactions`). It must never block on I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from freshrec.interactions import Interactions, Query
from freshrec.model_state import StateChanges

__all__ = ["LearnStats", "PublishableModel", "Recommender", "StateChanges"]


@dataclass
class LearnStats:
    """What one learning step reports: the mean loss (None for count-based models, which have none; a
    gradient model whose loss turns non-finite has diverged) and extra figures."""

    loss: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class PublishableModel(Protocol):
    """A model whose state can be snapshotted, shipped as row deltas and applied in place by a server."""

    def state_dict(self) -> dict[str, np.ndarray]:
        """The full state as numeric arrays (copies; safetensors-compatible: never pickled objects)."""
        ...

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Replace the whole state with `state_dict` output of a model built with the same config."""
        ...

    def drain_changes(self) -> StateChanges:
        """Rows and arrays changed since the previous call (the first call after construction or
        `load_state_dict` reports changes since then)."""
        ...

    def apply_changes(self, changes: StateChanges) -> None:
        """Apply another instance's `drain_changes` in place, so that afterwards this model's
        `state_dict` equals the other's at the time it drained (cost proportional to the change)."""
        ...


@runtime_checkable
class Recommender(Protocol):
    """Score items for queries, learn from a micro-batch, export item vectors for retrieval.

    Attributes
    ----------
    name
        Short registry name (``"popularity"``, ``"cooccurrence"``, ``"bpr-mf"``...).
    history_length
        How many of the user's recent items the model reads from `Query.history_keys` (0: none).
        The trainer builds histories only as long as the longest any model asks for.
    """

    name: str
    history_length: int

    def score(self, query: Query, candidate_keys: np.ndarray) -> np.ndarray:
        """Scores float32 [B, C] of every candidate item for every query row; higher is better.

        Unknown candidates or users still get a finite score (a cold-start fallback), never NaN.
        Must not change the model.
        """
        ...

    def learn(self, batch: Interactions) -> LearnStats:
        """One update on a micro-batch of events, in event order."""
        ...

    def item_vectors(self, item_keys: np.ndarray) -> np.ndarray | None:
        """float32 [C, D] vectors whose dot product with `user_vectors` ranks items, or None if the model
        has no such factorisation (retrieval then scores candidates with `score`)."""
        ...
