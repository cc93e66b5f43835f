"""BPR matrix factorisation learned online on dynamic embedding tables: a user row and an item row per id,
score = dot(user, item) + item bias, one fused row-wise Adagrad step per micro-batch.

Rows come from two `freshrec.embeddings.DynamicEmbeddingTable` (admission, expiry, eviction, cold row 0 for
ids without a row of their own). The model never sees raw ids, never loops per event, and `score` never
changes it.

Bias convention
---------------
The last column of every item row is the item's bias; the last column of a user row is unused and read as a
constant 1. So a row of width ``dim`` holds ``dim - 1`` latent factors, and ``user_vectors @ item_vectors.T``
(both ``dim`` wide, as returned) is exactly `score`: retrieval by inner product needs no extra term.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from freshrec.embeddings import COLD_ROW, DynamicEmbeddingTable
from freshrec.embeddings.config import TableConfig
from freshrec.errors import ConfigError
from freshrec.interactions import Interactions, Query
from freshrec.keyindex import as_keys
from freshrec.model_state import State, apply_parts, drain_parts, load_parts, state_of_parts
from freshrec.models.base import LearnStats, StateChanges, VectorModel

if TYPE_CHECKING:
    from freshrec.embeddings.sharded import RowSharding
    from freshrec.models.base import GradientSum

#: Table settings that a flat config of earlier versions set for both sides at once.
_SHARED_TABLE_FIELDS = ("admit_after", "ttl_seconds", "eviction", "optimizer", "learning_rate")


@dataclass
class MFConfig:
    """Settings of `BPRMatrixFactorization`.

    Parameters
    ----------
    dim
        Row width: ``dim - 1`` latent factors plus the bias column (a multiple of 4, for fbgemm).
    users, items
        Each side's id table: capacity (4 bytes x (dim + 1) per row, plus ~50 bytes of index; beyond it the
        `eviction` policy frees rows), admission (sightings, as a user or as a positive item, before an
        id gets its own row; until then it shares the cold row 0), expiry, optimizer, learning rate and
        the standard deviation of new rows. A new user's row starts at 0: their first scores are the
        item biases alone (a popularity-like ranking) instead of noise; the first update moves the row
        off zero.
    l2
        L2 penalty on the rows used by each event (user factors, positive and negative item rows).
    negative_correction
        Exponent alpha of the importance weight ``count(j) ** -alpha`` (normalised to mean 1 per batch) of
        each pair, where count(j) is how often the negative j was a positive since it got its row. The
        trainer draws negatives from recent item occurrences, i.e. in proportion to popularity, while BPR's
        objective averages over uniformly drawn negatives; alpha = 1 undoes the popularity sampling, 0
        trains on the negatives as drawn. On MovieLens-100K (B = 256, 4 negatives) it moves HR@10 from
        0.013 (alpha 0: the model learns to rank popular items down) to 0.074.
    seed
        Seeds row initialisation.

    >>> MFConfig().items.init_std
    0.1
    """

    dim: int = 64
    users: TableConfig = field(default_factory=lambda: TableConfig(learning_rate=0.05, init_std=0.0))
    items: TableConfig = field(default_factory=lambda: TableConfig(learning_rate=0.05, init_std=0.1))
    l2: float = 1e-4
    negative_correction: float = 1.0
    seed: int = 0

    #: Flat names of earlier versions (and of published versions' stored configs) -> nested fields.
    legacy_keys: ClassVar[dict[str, tuple[str, ...]]] = {
        "user_capacity": ("users.capacity",),
        "item_capacity": ("items.capacity",),
        "user_init_std": ("users.init_std",),
        "init_std": ("items.init_std",),
        **{name: (f"users.{name}", f"items.{name}") for name in _SHARED_TABLE_FIELDS},
    }

    def __post_init__(self) -> None:
        if self.l2 < 0:
            raise ConfigError(f"l2 must be >= 0, got {self.l2}")
        if self.negative_correction < 0:
            raise ConfigError(f"negative_correction must be >= 0, got {self.negative_correction}")
        self.users.embedding(self.dim, self.seed)  # validates dim against the kernels


class BPRMatrixFactorization(VectorModel):
    """Bayesian personalised ranking (Rendle et al. 2009) matrix factorisation, learned per micro-batch.

    Kinds and values: each event's BPR pairs are weighted by its kind weight; `value` is ignored (an event
    is a positive, whatever its value).

    Each event (user u, positive item i) and each of its sampled negatives j that has a row of its own
    and is not the positive contributes ``-w_j log sigmoid(s(u, i) - s(u, j))`` (``w_j``: the popularity
    correction of `MFConfig.negative_correction`) plus L2 on the rows used. The summed loss's gradients
    are computed in closed form (`bpr_gradients`: no autograd graph for the loss, a third less time per
    step, measured) and handed to fbgemm, whose fused row-wise Adagrad updates exactly the batch's rows.
    `LearnStats.loss` is the unweighted mean BPR loss of the pairs (log 2 = 0.69 is chance).

    >>> small = MFConfig(dim=8, users=TableConfig(capacity=16, init_std=0.0), items=TableConfig(capacity=16))
    >>> model = BPRMatrixFactorization(small)
    >>> users, items = np.array([1, 1, 2], dtype=np.uint64), np.array([10, 10, 11], dtype=np.uint64)
    >>> query = Query.without_history(users, np.arange(3.0))
    >>> batch = Interactions(query, items, np.full(3, np.nan), np.zeros(3, np.int8), items[::-1, None].copy())
    >>> stats = model.learn(batch)
    >>> model.score(query, np.array([10, 11, 99], dtype=np.uint64)).shape
    (3, 3)
    """

    name = "bpr-mf"
    history_length = 0
    learns_shares = True

    def __init__(self, config: MFConfig | None = None) -> None:
        self.config = config = config or MFConfig()
        self.users = DynamicEmbeddingTable(config.users.embedding(config.dim, config.seed))
        self.items = DynamicEmbeddingTable(config.items.embedding(config.dim, config.seed + 1))
        self._parts = {"users.": self.users, "items.": self.items}

    @property
    def vector_dim(self) -> int:
        return self.config.dim

    # ------------------------------------------------------------------ scoring
    def user_vectors(self, query: Query) -> np.ndarray:
        """float32 [B, dim]: each row's user factors with the constant 1 that multiplies the item bias."""
        return self._user_matrix(query.user_keys).numpy()

    def item_vectors(self, item_keys: np.ndarray) -> np.ndarray:
        """float32 [C, dim]: each item's factors with its bias in the last column (cold row if unknown)."""
        return self.items.weights(self.items.rows_for_serving(as_keys(item_keys, "item_keys"))).numpy()

    def score(self, query: Query, candidate_keys: np.ndarray) -> np.ndarray:
        """float32 [B, C]: dot(user, item) + item bias for each query row and candidate.

        `candidate_keys` is uint64 [C] (the same candidates for every row) or [B, C] (per row).
        """
        users = self._user_matrix(query.user_keys)
        candidates = np.asarray(candidate_keys)
        rows = self.items.rows_for_serving(as_keys(candidates, "candidate_keys"))
        items = self.items.weights(rows)
        if candidates.ndim == 1:
            return (users @ items.T).numpy()
        items = items.view(len(users), candidates.shape[1], -1)
        return torch.bmm(items, users[:, :, None])[:, :, 0].numpy()

    def _user_matrix(self, user_keys: np.ndarray) -> torch.Tensor:
        users = self.users.weights(self.users.rows_for_serving(as_keys(user_keys, "user_keys")))
        users.numpy()[:, -1] = 1.0  # through numpy: a torch op would let go of the GIL (see Table.weights)
        return users

    # ------------------------------------------------------------------ learning
    def learn(self, batch: Interactions) -> LearnStats:
        """One BPR step on the batch. Users and positive items are sightings (rows assigned, admission,
        eviction); negatives are only looked up: a sampled negative is not a sighting. With a
        `Interactions.share`, every event is a sighting and the pair weights are normalised over the
        batch, but only the share's pairs are learned here (the other ranks learn the rest)."""
        n = len(batch)
        if n == 0:
            return LearnStats()
        positives = as_keys(batch.item_keys, "item_keys")
        negatives = as_keys(batch.negative_keys, "negative_keys").reshape(n, -1)
        timestamps = np.asarray(batch.timestamps, dtype=np.float64)
        user_rows = self.users.rows_for_training(as_keys(batch.user_keys, "user_keys"), timestamps)
        positive_rows = self.items.rows_for_training(positives, timestamps)
        negative_rows = self.items.rows_for_serving(negatives.reshape(-1)).reshape(negatives.shape)
        # A negative without its own row would push the shared cold row down; one equal to the positive
        # would cancel it. Both are dropped.
        pair_event, pair_negative = np.nonzero(
            (negative_rows != COLD_ROW) & (negatives != positives[:, None])
        )
        pairs = len(pair_event)
        if pairs == 0:
            return LearnStats(extra={"pairs": 0.0})
        pair_rows = negative_rows[pair_event, pair_negative]
        weights = self._pair_weights(pair_rows)
        if batch.weights is not None:  # each pair counts as much as its event (its kind's weight)
            weights = weights * torch.from_numpy(batch.weights[pair_event])
        if batch.share is not None:  # this rank's events and their pairs, renumbered from 0
            first, stop, _ = batch.share.indices(n)
            mine = (pair_event >= first) & (pair_event < stop)
            pair_event, pair_rows, weights = pair_event[mine] - first, pair_rows[mine], weights[mine]
            user_rows, positive_rows = user_rows[first:stop], positive_rows[first:stop]

        user_factors = self.users.embed(user_rows)  # [share, dim]
        item_factors = self.items.embed(np.concatenate([positive_rows, pair_rows]))  # [share + pairs, dim]
        grad_users, grad_items, loss = bpr_gradients(
            user_factors.detach(), item_factors.detach(), pair_event, weights, self.config.l2
        )
        # The loss's gradients are closed-form, so autograd only carries them into fbgemm's fused update.
        torch.autograd.backward((user_factors, item_factors), (grad_users, grad_items))
        if batch.share is not None:  # the share's part of the batch's mean: the ranks' parts sum to it
            loss = loss * len(pair_event) / pairs if len(pair_event) else 0.0
        return LearnStats(
            loss=loss,
            extra={"pairs": float(pairs), "users": float(len(self.users)), "items": float(len(self.items))},
        )

    def _pair_weights(self, negative_rows: np.ndarray) -> torch.Tensor:
        """Importance weights count(j)^-alpha of the negatives, self-normalised to mean 1 (see MFConfig)."""
        alpha = self.config.negative_correction
        if alpha == 0:
            return torch.ones(len(negative_rows))
        counts = self.items.index.counts[negative_rows - 1].astype(np.float64)
        weights = np.maximum(counts, 1.0) ** -alpha
        return torch.from_numpy((weights / weights.mean()).astype(np.float32))

    def shard(self, sharding: RowSharding, sum_gradients: GradientSum) -> None:
        """Both tables' rows over the ranks (no dense weights to sum)."""
        self.users.shard(sharding)
        self.items.shard(sharding)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> State:
        """Both tables' `state_dict`, keys prefixed ``users.`` / ``items.`` (safetensors-compatible)."""
        return state_of_parts(self._parts)

    def load_state_dict(self, state: State) -> None:
        """Restore `state_dict` output of a model built with the same config."""
        load_parts(self._parts, state)

    def table_sizes(self) -> dict[str, dict[str, int]]:
        return {"users": self.users.sizes(), "items": self.items.sizes()}

    def drain_changes(self) -> StateChanges:
        """Both tables' `DynamicEmbeddingTable.drain_changes`, names prefixed like `state_dict`: the rows
        trained, (re)assigned, evicted or expired since the previous call."""
        return drain_parts(self._parts)

    def apply_changes(self, changes: StateChanges) -> None:
        """Apply another instance's `drain_changes` in place (O(changed rows), weights under no_grad)."""
        apply_parts(self._parts, changes)


def bpr_gradients(
    users: torch.Tensor, items: torch.Tensor, pair_event: np.ndarray, weights: torch.Tensor, l2: float
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Gradients of the weighted BPR loss plus L2, in closed form (no autograd graph: about half the cost).

    Parameters
    ----------
    users
        float32 [n, dim] user rows of the events (the last column is unused: read as 1).
    items
        float32 [n + P, dim]: the n positive item rows, then the P negative rows of the pairs.
    pair_event
        int64 [P], the event of each pair.
    weights
        float32 [P], weight of each pair's term.
    l2
        Penalty on the squared norms of the user factors and of every item row used.

    Returns
    -------
    (grad_users [n, dim], grad_items [n + P, dim], mean unweighted BPR loss of the pairs) for
    ``L = sum_p -w_p log sigmoid(m_p) + l2 (|users[:, :-1]|^2 + |items|^2)`` where
    ``m_p = u'_e . (items[e] - items[n + p])`` and ``u'_e`` is user e's row with its last entry set to 1.
    """
    n = len(users)
    user_side = users.clone()
    user_side[:, -1] = 1.0  # the bias column
    positives, negatives = items[:n], items[n:]
    pair_user = torch.from_numpy(pair_event)
    pair_side = user_side.index_select(0, pair_user)  # [P, dim]
    margins = (pair_side * (positives.index_select(0, pair_user) - negatives)).sum(dim=1)
    # d(-w log sigmoid(m)) / dm = -w sigmoid(-m); coef is its negation
    coef = torch.sigmoid(-margins) * weights
    per_event = torch.zeros(n).index_add_(0, pair_user, coef)  # sum of coef over each event's pairs
    weighted_negatives = torch.zeros_like(users).index_add_(0, pair_user, coef[:, None] * negatives)
    grad_users = weighted_negatives - per_event[:, None] * positives
    grad_users.add_(users, alpha=2 * l2)
    grad_users[:, -1] = 0.0  # the constant 1 has no gradient
    grad_items = torch.empty_like(items)
    torch.mul(user_side, -per_event[:, None], out=grad_items[:n])
    torch.mul(pair_side, coef[:, None], out=grad_items[n:])
    grad_items.add_(items, alpha=2 * l2)
    loss = float(torch.nn.functional.softplus(-margins).mean())
    return grad_users, grad_items, loss
