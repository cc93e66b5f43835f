"""The contract every recommender model honours, so that the trainer, the evaluator, the publisher and the
server treat popularity counts, item-to-item statistics and deep models alike.

Three declared kinds, never discovered by probing attributes:

- `Model`: scores items for queries, learns from a micro-batch, and has a state under
  `freshrec.model_state`'s naming scheme (``state_dict`` / ``load_state_dict`` / ``drain_changes`` /
  ``apply_changes``), so that it can be checkpointed, published as row deltas and replicated in place.
- `VectorModel`: a `Model` whose scores are inner products of a user vector and an item vector, so a
  server answers from an ANN index over `item_vectors` (`freshrec.serving.retrieval`) and updates that
  index from `apply_changes_for_retrieval` without knowing how the model names its state.
- `RatingPredictor`: a `Model` that also predicts explicit ratings (RMSE / MAE in evaluation).

A model never sees raw ids: only uint64 keys (see `freshrec.interactions`). It must never block on I/O.
Adding a model is one file (a config dataclass and a `Model` subclass) and one line in
`freshrec.models.registry`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from freshrec.errors import ConfigError
from freshrec.interactions import Interactions, Query
from freshrec.model_state import State, StateChanges

if TYPE_CHECKING:  # the tables import torch; counting models and the configuration never need it
    import torch

    from freshrec.embeddings import DynamicEmbeddingTable
    from freshrec.embeddings.sharded import RowSharding


#: Sums the parameters' gradients over the ranks of a distributed trainer, in place (see
#: `freshrec.models.dense_state.DenseParameters.step`).
GradientSum = Callable[[list["torch.nn.Parameter"]], None]

__all__ = [
    "GradientSum",
    "ItemVectorChanges",
    "LearnStats",
    "Model",
    "RatingPredictor",
    "Recommender",
    "StateChanges",
    "VectorModel",
]


@dataclass
class LearnStats:
    """What one learning step reports: the mean loss (None for count-based models, which have none; a
    gradient model whose loss turns non-finite has diverged) and extra figures."""

    loss: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


class Model(ABC):
    """Score items for queries, learn from a micro-batch, keep a publishable state.

    Attributes
    ----------
    name
        Short registry name (``"popularity"``, ``"cooccurrence"``, ``"bpr-mf"``...).
    history_length
        How many of the user's recent items the model reads from `Query.history_keys` (0: none).
        The feature state keeps histories only as long as the longest any model asks for.
    reads_history_values
        Whether the model reads `Query.history_values` (the values of the history events, e.g. ratings):
        the feature state then keeps them.
    scores_rows_alike
        Whether every row's scores of a shared candidate list are one vector times a positive factor of
        the row (popularity: counts decayed to the row's time): whatever is computed from a row's scores
        that does not depend on their scale (their order, their standardised values) is then the same
        for every row, and a blend computes it once.
    learns_shares
        Whether `learn` honours `Interactions.share` (learns the loss of its share of a batch it sees
        whole), so that ranks of `freshrec.training.distributed` can split a batch between them; such a
        model makes the same table calls on every rank, whatever its share.
    """

    name: str
    history_length: int = 0
    reads_history_values: ClassVar[bool] = False
    scores_rows_alike: ClassVar[bool] = False
    learns_shares: ClassVar[bool] = False

    @abstractmethod
    def score(self, query: Query, candidate_keys: np.ndarray) -> np.ndarray:
        """Scores float32 [B, C] of every candidate item for every query row; higher is better.

        `candidate_keys` is uint64 [C] (the same candidates for every row) or [B, C] (per row). Unknown
        candidates or users still get a finite score (a cold-start fallback), never NaN. Must not change
        the model.
        """

    @abstractmethod
    def learn(self, batch: Interactions) -> LearnStats:
        """One update on a micro-batch of events, in event order."""

    @abstractmethod
    def state_dict(self) -> State:
        """The full state as numeric arrays (copies; safetensors-compatible: never pickled objects),
        private arrays included (see `freshrec.model_state`): a model loaded from it answers and goes on
        learning exactly as this one."""

    @abstractmethod
    def load_state_dict(self, state: State) -> None:
        """Replace the whole state with `state_dict` output of a model built with the same config."""

    @abstractmethod
    def drain_changes(self) -> StateChanges:
        """Rows and arrays changed since the previous call (the first call after construction or
        `load_state_dict` reports changes since then). Never holds private arrays."""

    @abstractmethod
    def apply_changes(self, changes: StateChanges) -> None:
        """Apply another instance's `drain_changes` in place, so that afterwards this model's public
        state equals the other's at the time it drained (cost proportional to the change)."""

    def shard(self, sharding: RowSharding, sum_gradients: GradientSum) -> None:
        """Spread the model's id rows over the ranks of a distributed trainer (`freshrec.embeddings.sharded`)
        and sum its dense gradients over them with `sum_gradients` before each optimizer step: called on
        every rank, on a new model, by `freshrec.training.distributed`. Models with `learns_shares`
        implement it."""
        raise ConfigError(
            f"model {self.name!r} does not learn over several ranks; models that do: "
            "bpr-mf, two-tower (train it with one rank)"
        )

    def table_sizes(self) -> dict[str, dict[str, int]]:
        """The id tables the model keeps, by name: ``live_rows`` and ``capacity``, and for embedding tables
        ``admitted``, ``evicted``, ``expired`` and ``memory_bytes`` (what an operator watches fill up).
        Cheap: counters only, never a copy of the state. Empty for a model without an id table."""
        return {}


#: The name the protocol had before the library API (`freshrec.Recommender`) took it.
Recommender = Model


@dataclass
class ItemVectorChanges:
    """Items whose vectors a version changed.

    Attributes
    ----------
    keys
        uint64, distinct: items with a vector now that may differ from the previous version's (new items
        included).
    removed
        uint64, distinct: items that had a vector and no longer have one (evicted, expired); None when every
        item was re-embedded, so that every indexed item not in `keys` is gone.
    """

    keys: np.ndarray
    removed: np.ndarray | None


class VectorModel(Model):
    """A model whose score is ``user_vectors(query) @ item_vectors(keys).T``.

    Attributes
    ----------
    items
        The item id table: the items that have a vector of their own are the ids with a row in it (the
        others share its cold row: they are scored, but an index need not hold them). Its arrays sit in
        the model's state under `item_table_prefix`.
    """

    items: DynamicEmbeddingTable
    item_table_prefix: ClassVar[str] = "items."

    @property
    @abstractmethod
    def vector_dim(self) -> int:
        """D, the width of user and item vectors."""

    @abstractmethod
    def user_vectors(self, query: Query) -> np.ndarray:
        """float32 [B, D] vectors of the query rows."""

    @abstractmethod
    def item_vectors(self, item_keys: np.ndarray) -> np.ndarray:
        """float32 [C, D] vectors of the items (the cold row's for items without a row)."""

    def table_sizes(self) -> dict[str, dict[str, int]]:
        return {"items": self.items.sizes()}

    def changes_every_item_vector(self, changes: StateChanges) -> bool:
        """Whether `changes` touch weights that every item vector depends on (a tower's dense weights),
        so that every item must be re-embedded; False for models whose item vector is the item's row."""
        return False

    def vector_items(self) -> np.ndarray:
        """uint64 keys of the items that have a row, so a vector, of their own."""
        index = self.items.index
        return index.keys_of(index.live_slots())

    def apply_changes_for_retrieval(self, changes: StateChanges) -> ItemVectorChanges:
        """`apply_changes`, and say which item vectors the changes altered. Cost O(changed rows), or
        O(items) when every item vector changed."""
        own = changes.under(self.item_table_prefix)
        owners_before = self.items.owners_before(own)
        self.apply_changes(changes)
        changed = self.items.changed_ids(own, owners_before)
        if changed is None or self.changes_every_item_vector(changes):
            return ItemVectorChanges(self.vector_items(), None)
        return ItemVectorChanges(changed.keys, changed.removed)


class RatingPredictor(ABC):
    """A model that also predicts explicit ratings; the trainer reports RMSE / MAE for it."""

    @abstractmethod
    def predict_ratings(self, query: Query, item_keys: np.ndarray) -> np.ndarray:
        """float64 [B]: the predicted rating of each row's item (never NaN)."""
