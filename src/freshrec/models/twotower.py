"""Two-tower retrieval model learned online: a user tower and an item tower whose inner product is the score,
trained per micro-batch with a sampled softmax over in-batch and sampled negatives, corrected by logQ.

User tower: the user's id row, the recency-weighted pool of their recent items' rows (`Query.history_keys`)
and context features (time of day, day of week, time since the last event) through a small residual MLP.
Item tower: the item's id row and, when an `freshrec.features.items.ItemFeatureTable` is given, the mean of
its feature embeddings (e.g. genres) through a small residual MLP. Id rows live on
`freshrec.embeddings.DynamicEmbeddingTable` (admission, expiry, eviction, fbgemm's fused row-wise Adagrad
inside ``backward()``); the dense tower weights and feature embeddings are torch parameters under Adam.
The model never sees raw ids, never loops per event, and `score` never changes it.

Sampling bias (Yi et al., RecSys 2019, "Sampling-bias-corrected neural modeling for large corpus item
recommendations"): both kinds of negatives are drawn in proportion to popularity (in-batch positives by
construction, the trainer's negatives from recent item occurrences), so a plain sampled softmax learns to
push popular items down. `StreamingFrequency` estimates each item's sampling rate from the stream (the
paper's hashed "last step seen" / "average gap" arrays) and ``log q`` is subtracted from every logit.

Publishing and the server
-------------------------
The id rows change by rows, but the dense tower weights change with every step, and a change of those
weights changes *every* item vector, also of items no event touched. A delta therefore carries the touched
id rows (``users.*``, ``items.*``, ``history.*``), the frequency buckets touched (``frequency.*``) and, when
a step ran, all dense weights with Adam's state replaced whole (``dense.*``, ``adam.*``: 50.5k parameters
at the defaults, ~0.6 MB with the moments). A server that keeps item vectors in an ANN index must, after
applying a delta for which `changes_every_item_vector` is True, recompute `item_vectors` for its whole
catalogue and rebuild or upsert the index; when it is False only the items of the touched rows need
recomputing. The pass is batched but not free (measured ~6 ms per 1k items on one thread, 0.6 s for 100k),
so a server with a large catalogue should recompute in the background at a bounded rate (e.g. at most
once per few seconds, coalescing deltas) and swap the index atomically, scoring with `score` meanwhile.
User vectors are computed per request from the query and never stored.

Row layout
----------
An item row is ``dim + 4`` wide (fbgemm wants a multiple of 4): columns ``[0, dim)`` are the item's id
embedding, column ``dim`` its bias, the last three are unused. ``user_vectors @ item_vectors.T`` (both
``dim + 1`` wide: the user vector with a constant 1, the item vector with the bias) is exactly `score`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from freshrec import model_state
from freshrec.embeddings import COLD_ROW, DynamicEmbeddingTable
from freshrec.embeddings.config import TableConfig
from freshrec.embeddings.sharded import even_shares, gather_shares
from freshrec.errors import ConfigError
from freshrec.features.history import age_buckets
from freshrec.features.items import ItemFeatureTable
from freshrec.hashing import mix64
from freshrec.interactions import NO_KEY, Interactions, Query
from freshrec.keyindex import as_keys
from freshrec.models.base import LearnStats, StateChanges, VectorModel
from freshrec.models.dense_state import DenseParameters
from freshrec.models.weighting import cross_entropy

if TYPE_CHECKING:
    from freshrec.embeddings.sharded import RowSharding
    from freshrec.models.base import GradientSum

__all__ = [
    "StreamingFrequency",
    "TwoTowerConfig",
    "TwoTowerModel",
    "changes_every_item_vector",
    "logq_logits",
]

#: Columns after the embedding in an item row: the bias, then padding up to a multiple of 4.
_EXTRA_COLUMNS = 4
#: A masked logit: finite (no NaN from an all-masked row), far below any real score.
_MASKED = -1e9
#: Context features of the user tower: sin/cos of the time of day and of the day of week, the log time since
#: the user's previous event, whether there is one, and the filled share of the history window.
CONTEXT_FEATURES = 7
_DAY = 86_400.0
_WEEK = 7 * _DAY
#: log1p of ~3 months in seconds: scales the time-gap feature to about [0, 1].
_GAP_SCALE = float(np.log1p(90 * _DAY))


@dataclass
class TwoTowerConfig:
    """Settings of `TwoTowerModel`, the same on every data set.

    The defaults were chosen on MovieLens-100K (prequential, B = 256, one change at a time from a first
    guess; HR@10 of each alternative in brackets, the default's is 0.2138) and checked on
    `freshrec.sources.synthetic.SyntheticStream`.

    Parameters
    ----------
    dim
        Width of the id embeddings and of both towers' outputs (a multiple of 4). [32: 0.161, 128: 0.192,
        both at an earlier setting where 64 gave 0.174 and 0.199]
    hidden
        Hidden width of each tower's MLP. [64: 0.198 at an earlier setting where 128 gave 0.199]
    history_length
        The user's most recent items read per query (the trainer builds histories this long). With the
        default decay the 20th item weighs 0.8^19 = 1.4% of the latest: [30: 0.2034; 50: no better at
        decay 0.9].
    history_decay
        Initial recency weights of the history pool: the item ``a`` places from the most recent gets
        logit ``a * log(history_decay)``; the per-position logits are then learned (a softmax over the
        valid positions gives the weights). [0.9: 0.199, 0.7: 0.203, 0.6: 0.202]
    history_time_buckets
        A learned logit per ``floor(log2(1 + seconds))`` between a history item and the query (capped at
        the last bucket) is added to its position's, so that the pool also weighs by age in time: the
        item rated a second ago in this session and the one rated a month ago may share a position.
        0 turns it off. [0: 0.2033 (seed 1: 0.2024) against 0.2042 (seed 1: 0.2042), both with the user
        rows at the item step]
    users
        The user id table (capacity, admission, expiry, eviction: see
        `freshrec.embeddings.config.TableConfig`). Its ``learning_rate`` is the row-wise Adagrad step of
        user rows. Row-wise Adagrad's first step moves every coordinate of a row by about the learning
        rate, whatever the gradient's size: at the item step a new user's row jumps to the items of their
        first micro-batch and keeps chasing the latest ones, noise the history pool (which reads the same
        items, learned from every user) does better without. A small step lets the row learn only what
        persists. [0.2 (the item step): 0.2042, seed 1: 0.2042; 0.1: 0.2101, 0.02: 0.2103, seed 1:
        0.2095, 0.005: 0.2101, 0.3: 0.1958. Synthetic stream: 0.1783 at 0.2, 0.1846 at 0.1, 0.1878 at
        0.02, 0.1868 at 0.05]
    items
        The item id table, also the history side's unless `share_history_embeddings` is False. Its
        ``learning_rate`` is the row-wise Adagrad step of item rows. Online an item is seen a few dozen
        times, so the first steps must be large (Adagrad shrinks them as gradients add up). [0.02: 0.145,
        0.05: 0.174, 0.1: 0.194, 0.4: 0.173; 0.2: 0.199 before the decay was tuned; with the user step
        above: 0.15: 0.2103, 0.3: 0.2094]. Its ``init_std`` (also that of the user rows and of the
        feature embeddings): smaller rows let an item that has not learned yet score near its bias
        instead of at random. [0.03: 0.173 at an earlier setting where 0.1 gave 0.174; with the user step
        at 0.05 and the paper's full logQ: 0.1: 0.2108 (seed 1: 0.2109), 0.05: 0.2124 (seed 1: 0.2125),
        0.03: 0.2118; synthetic: 0.1868 at 0.1, 0.1888 at 0.05]
    share_history_embeddings
        True: a history item is pooled through the same row as the item tower's id embedding (one table;
        score ~ similarity of the item to the user's recent items). False: a second item table holds the
        history-side rows ("after j comes i" need not equal "after i comes j", as in FISM). [False: 0.167
        at an earlier setting where True gave 0.174: two tables learn from half the signal each]
    dense_learning_rate
        Adam step of the tower weights and feature embeddings. [1e-3: 0.167, 1e-2: 0.176 at an earlier
        setting where 3e-3 gave 0.174; 1e-2 with the tuned embedding step: 0.196 against 0.199]
    logq_weight
        Multiplier of the ``log q`` subtracted from each candidate's logit (1: the paper's correction,
        0: none). The streaming estimate of q is noisy for items seen a few times and the trainer's
        negatives are drawn from a recent window, not exactly in proportion to it, so the full correction
        over-lifts rare items a little. [0: 0.179 against 0.199 before the decay was tuned; at the
        current defaults 1.0: 0.2124 (seed 1: 0.2125), 0.8: 0.2138 (seed 1: 0.2131), 0.6: 0.2135;
        synthetic 1.0: 0.1888, 0.8: 0.1920, 0.6: 0.1915]
    frequency_buckets
        Size of `StreamingFrequency`'s hashed arrays (None: the power of two >= 2 x the items' capacity).
    frequency_ema
        Weight of each new observed gap in the frequency estimate's moving average.
    mask_history_in_loss
        Leave each row's own history items out of its softmax: evaluation and serving never recommend
        items the user already had, so ranking them down is wasted effort. [False: 0.193 against 0.199]
    seed
        Seeds the dense initialisation and the id rows.

    >>> TwoTowerConfig().history_length
    20
    """

    dim: int = 64
    hidden: int = 128
    history_length: int = 20
    history_decay: float = 0.8
    history_time_buckets: int = 32
    users: TableConfig = field(default_factory=lambda: TableConfig(learning_rate=0.05, init_std=0.05))
    items: TableConfig = field(default_factory=lambda: TableConfig(learning_rate=0.2, init_std=0.05))
    share_history_embeddings: bool = True
    dense_learning_rate: float = 3e-3
    logq_weight: float = 0.8
    frequency_buckets: int | None = None
    frequency_ema: float = 0.05
    mask_history_in_loss: bool = True
    seed: int = 0

    #: Flat names of earlier versions (and of published versions' stored configs) -> nested fields.
    legacy_keys: ClassVar[dict[str, tuple[str, ...]]] = {
        "user_capacity": ("users.capacity",),
        "item_capacity": ("items.capacity",),
        "admit_after": ("users.admit_after", "items.admit_after"),
        "ttl_seconds": ("users.ttl_seconds", "items.ttl_seconds"),
        "eviction": ("users.eviction", "items.eviction"),
        "embedding_learning_rate": ("items.learning_rate",),
        "user_embedding_learning_rate": ("users.learning_rate",),
        "init_std": ("users.init_std", "items.init_std"),
    }

    def __post_init__(self) -> None:
        for name in ("dim", "hidden", "history_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"TwoTowerConfig.{name} must be a positive integer, got {value!r}")
        if self.dim % 4:
            raise ConfigError(f"TwoTowerConfig.dim must be a multiple of 4 (fbgemm), got {self.dim}; e.g. 64")
        if not isinstance(self.history_time_buckets, int) or self.history_time_buckets < 0:
            raise ConfigError(
                "TwoTowerConfig.history_time_buckets must be an integer >= 0, "
                f"got {self.history_time_buckets!r}"
            )
        if not 0 < self.history_decay <= 1:
            raise ConfigError(f"TwoTowerConfig.history_decay must be in (0, 1], got {self.history_decay}")
        if not self.dense_learning_rate > 0:
            raise ConfigError(
                f"TwoTowerConfig.dense_learning_rate must be > 0, got {self.dense_learning_rate}"
            )
        if self.logq_weight < 0:
            raise ConfigError(f"TwoTowerConfig.logq_weight must be >= 0, got {self.logq_weight}")
        if not 0 < self.frequency_ema <= 1:
            raise ConfigError(f"TwoTowerConfig.frequency_ema must be in (0, 1], got {self.frequency_ema}")

    @property
    def buckets(self) -> int:
        """The frequency estimator's array size."""
        if self.frequency_buckets is not None:
            return int(self.frequency_buckets)
        return 1 << max(4, int(2 * self.items.capacity - 1).bit_length())


class StreamingFrequency:
    """Streaming estimate of how often each item occurs per step (Yi et al. 2019, algorithm 2).

    Two hashed arrays: the step at which a bucket's item was last seen (A) and the moving average of the
    number of steps between its occurrences (B); the item's sampling probability per step is ``1 / B``.
    An item seen c times in one step counts as c occurrences spread evenly over the gap since its last
    step (gap ``(t - A) / c``, folded in with weight ``1 - (1 - ema)^c``), so the update is one vectorised
    scatter per step. Hash collisions merge items, as in the paper (buckets >= 2 x items keeps them rare).

    >>> frequency = StreamingFrequency(buckets=16, ema=0.5)
    >>> for _ in range(4):
    ...     frequency.update(np.array([1, 1, 2], dtype=np.uint64))  # item 1 twice per step, item 2 once
    >>> q = frequency.probability(np.array([1, 2], dtype=np.uint64))
    >>> [round(float(v), 2) for v in q]
    [2.0, 1.0]
    """

    def __init__(self, buckets: int, ema: float) -> None:
        if buckets < 1 or buckets & (buckets - 1):
            raise ConfigError(f"frequency_buckets must be a power of two, got {buckets}")
        self.ema = ema
        self._mask = np.uint64(buckets - 1)
        self.last_step = np.full(buckets, -1.0, dtype=np.float64)  # -1: never seen
        self.gap = np.zeros(buckets, dtype=np.float64)
        self.step = 0
        self._dirty = np.zeros(buckets, dtype=bool)

    def buckets_of(self, keys: np.ndarray) -> np.ndarray:
        return (mix64(as_keys(keys), seed=7) & self._mask).astype(np.int64)

    def update(self, keys: np.ndarray) -> None:
        """Count one step in which each of `keys` occurred (duplicates: several occurrences)."""
        self.step += 1
        buckets, counts = np.unique(self.buckets_of(keys), return_counts=True)
        if len(buckets) == 0:
            return
        last = self.last_step[buckets]
        seen = last >= 0
        # A first occurrence has no previous one: its gap is taken as the whole stream so far.
        observed = np.where(seen, self.step - last, self.step) / counts
        keep = (1.0 - self.ema) ** counts
        self.gap[buckets] = np.where(seen, keep * self.gap[buckets] + (1.0 - keep) * observed, observed)
        self.last_step[buckets] = self.step
        self._dirty[buckets] = True

    def probability(self, keys: np.ndarray) -> np.ndarray:
        """float64 per-step occurrence rate ``1 / B`` of each key (``1 / step`` for keys never seen)."""
        buckets = self.buckets_of(keys)
        gap = np.where(self.last_step[buckets] >= 0, self.gap[buckets], max(self.step, 1))
        return 1.0 / np.maximum(gap, 1e-6)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {
            "last_step": self.last_step.copy(),
            "gap": self.gap.copy(),
            "step": np.array([self.step], dtype=np.int64),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        hint = "build the model with the frequency_buckets it was saved with"
        self.last_step = model_state.array_like(state, "last_step", self.last_step, hint)
        self.gap = model_state.array_like(state, "gap", self.gap, hint)
        self.step = int(np.asarray(state["step"]).reshape(-1)[0])
        self._dirty[:] = False

    def drain_changes(self) -> StateChanges:
        buckets = np.flatnonzero(self._dirty)
        self._dirty[buckets] = False
        return StateChanges(
            rows={"last_step": (buckets, self.last_step[buckets]), "gap": (buckets, self.gap[buckets])},
            replaced={"step": np.array([self.step], dtype=np.int64)},
        )

    def apply_changes(self, changes: StateChanges) -> None:
        model_state.apply_rows({"last_step": self.last_step, "gap": self.gap}, changes)
        if "step" in changes.replaced:
            self.step = int(np.asarray(changes.replaced["step"]).reshape(-1)[0])


def logq_logits(scores: torch.Tensor, sampling_probability: np.ndarray, weight: float = 1.0) -> torch.Tensor:
    """Logits corrected for popularity-proportional sampling: ``scores - weight * log q`` per candidate.

    Parameters
    ----------
    scores
        float32 [B, C], the model's inner products.
    sampling_probability
        [C], each candidate's sampling probability (or anything proportional to it: a constant factor
        shifts every logit of a row equally and the softmax ignores it).

    >>> logits = logq_logits(torch.zeros(1, 2), np.array([0.5, 0.05]))
    >>> [round(float(v), 3) for v in logits[0]]  # the rarely sampled item is lifted by log(10) relative
    [0.693, 2.996]
    """
    log_q = torch.from_numpy(np.log(np.asarray(sampling_probability, dtype=np.float64)).astype(np.float32))
    return scores - weight * log_q


def changes_every_item_vector(changes: StateChanges) -> bool:
    """True when a `TwoTowerModel` delta changed the dense tower weights, i.e. every item's vector: a
    server must then recompute `TwoTowerModel.item_vectors` for all its items, not only for touched rows."""
    return any(name.startswith("dense.") for name in changes.replaced)


class _Tower(nn.Module):
    """``skip + MLP(inputs)``: a residual MLP whose last layer starts at zero, so that at initialisation a
    tower is its skip input (the factorised model) and the MLP learns corrections from there."""

    def __init__(self, inputs: int, hidden: int, out: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(inputs, hidden)
        self.out = nn.Linear(hidden, out)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, skip: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return skip + self.out(F.relu(self.hidden(inputs)))


class _DenseTowers(nn.Module):
    """Every dense parameter: both towers, the history position logits and the feature embeddings."""

    def __init__(self, config: TwoTowerConfig, num_features: int) -> None:
        super().__init__()
        dim, n = config.dim, config.history_length
        ages = torch.arange(n - 1, -1, -1, dtype=torch.float32)  # right-aligned: the last column is age 0
        self.position_logits = nn.Parameter(ages * float(np.log(config.history_decay)))
        self.time_logits = nn.Parameter(torch.zeros(max(config.history_time_buckets, 1)))
        self.user_tower = _Tower(2 * dim + CONTEXT_FEATURES, config.hidden, dim)
        self.item_tower = _Tower(2 * dim, config.hidden, dim)
        self.features = nn.Embedding(max(num_features, 1), dim, padding_idx=0)
        nn.init.normal_(self.features.weight, std=config.items.init_std)
        with torch.no_grad():
            self.features.weight[0].zero_()

    def user(
        self,
        users: torch.Tensor,
        history: torch.Tensor,
        valid: torch.Tensor,
        context: torch.Tensor,
        time_buckets: torch.Tensor,
    ) -> torch.Tensor:
        """users [B, D], history [B, N, D], valid bool [B, N], context [B, CONTEXT_FEATURES], time_buckets
        int64 [B, N] -> [B, D]."""
        logits = self.position_logits.expand_as(valid) + self.time_logits[time_buckets]
        weights = torch.exp(logits - logits.max()) * valid
        weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
        pooled = torch.bmm(weights[:, None, :], history)[:, 0]
        return self.user_tower(users + pooled, torch.cat([users, pooled, context], dim=1))

    def item(
        self, items: torch.Tensor, feature_indices: torch.Tensor, feature_mask: torch.Tensor
    ) -> torch.Tensor:
        """items [C, D], feature indices / mask [C, F] -> [C, D]."""
        vectors = self.features(feature_indices) * feature_mask[:, :, None]
        pooled = vectors.sum(dim=1) / feature_mask.sum(dim=1, keepdim=True).clamp_min(1)
        return self.item_tower(items + pooled, torch.cat([items, pooled], dim=1))


class TwoTowerModel(VectorModel):
    """Two-tower retrieval model (YouTube / Yi et al. 2019 style) learned online per micro-batch.

    Kinds and values: each event's softmax loss is weighted by its kind weight; `value` is ignored.

    Each event's user-tower output is scored against one column per distinct candidate: the batch's
    positives (in-batch negatives for the other events) and the trainer's sampled negatives that have a row;
    logits are corrected by ``log q`` from `StreamingFrequency`, and one cross-entropy step updates the id
    rows (fbgemm, inside backward) and the dense weights (Adam). Users without a row or history still get a
    finite vector (cold row + context), items without a row the cold row (+ their features).

    Measured on MovieLens-100K (B = 256, `bench/quality.py`'s loop, one torch thread, same run): HR@10
    0.2138 (co-occurrence 0.1976, BPR-MF 0.0733), ~18k learning events/s (BPR-MF ~70k). Genres as item
    features give 0.2137 at these defaults (seed-to-seed spread ~0.001): on a static catalogue whose items
    all gather events quickly the id rows carry what genres would; features are for cold items.

    Parameters
    ----------
    config
        Sizes and learning settings.
    item_features
        Optional item feature table (e.g. MovieLens genres); without one the item tower reads ids only.
        A server must build its copy with the same table (the state stores its fingerprint and refuses
        another).

    >>> model = TwoTowerModel(TwoTowerConfig(dim=8, hidden=8, history_length=3,
    ...                                      users=TableConfig(capacity=8), items=TableConfig(capacity=16)))
    >>> users = np.array([1, 2], dtype=np.uint64)
    >>> history = np.array([[0, 10, 11], [0, 0, 0]], dtype=np.uint64)
    >>> query = Query(users, np.array([100.0, 100.0]), history, np.where(history == 0, np.nan, 50.0))
    >>> batch = Interactions(query, np.array([12, 10], dtype=np.uint64), np.full(2, np.nan),
    ...                      np.zeros(2, np.int8), np.array([[11], [12]], dtype=np.uint64))
    >>> model.learn(batch).loss > 0
    True
    >>> candidates = np.array([10, 11, 12, 99], dtype=np.uint64)
    >>> scores = model.score(query, candidates)
    >>> bool(np.allclose(scores, model.user_vectors(query) @ model.item_vectors(candidates).T, atol=1e-5))
    True
    """

    name = "two-tower"
    learns_shares = True

    def __init__(
        self, config: TwoTowerConfig | None = None, item_features: ItemFeatureTable | None = None
    ) -> None:
        self.config = config = config or TwoTowerConfig()
        self.history_length = config.history_length
        self.item_features = item_features
        self.users = DynamicEmbeddingTable(config.users.embedding(config.dim, config.seed))
        self.items = DynamicEmbeddingTable(
            config.items.embedding(config.dim + _EXTRA_COLUMNS, config.seed + 1)
        )
        self.history_items = (
            self.items
            if config.share_history_embeddings
            else DynamicEmbeddingTable(config.items.embedding(config.dim, config.seed + 2))
        )
        self.frequency = StreamingFrequency(config.buckets, config.frequency_ema)
        num_features = item_features.num_features if item_features is not None else 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.dense = _DenseTowers(config, num_features)
        # fused: one kernel over every parameter; the per-tensor (foreach) step costs ~3x on the CPU.
        self.optimizer = torch.optim.Adam(self.dense.parameters(), lr=config.dense_learning_rate, fused=True)
        self._dense = DenseParameters(dict(self.dense.named_parameters()), self.optimizer, "TwoTowerModel")
        self._fingerprint = np.array(
            [item_features.fingerprint() if item_features is not None else 0], dtype=np.uint64
        )
        self._parts = {"users.": self.users, "items.": self.items}
        if not config.share_history_embeddings:
            self._parts["history."] = self.history_items
        self._parts.update({"frequency.": self.frequency, "": self._dense})

    @property
    def vector_dim(self) -> int:
        return self.config.dim + 1

    def changes_every_item_vector(self, changes: StateChanges) -> bool:
        """The item tower's dense weights shape every item vector: a server re-embeds all items when a
        delta carries them, not only the rows it names."""
        return changes_every_item_vector(changes)

    def _context(self, query: Query, valid: np.ndarray, history_times: np.ndarray) -> torch.Tensor:
        """float32 [B, CONTEXT_FEATURES]: time of day, day of week, log gap since the last event, ..."""
        times = np.asarray(query.timestamps, dtype=np.float64)
        day = 2 * np.pi * np.mod(times, _DAY) / _DAY
        week = 2 * np.pi * np.mod(times, _WEEK) / _WEEK
        last = history_times[:, -1] if history_times.shape[1] else np.full(len(times), np.nan)
        has_last = np.isfinite(last) & valid[:, -1] if valid.shape[1] else np.zeros(len(times), dtype=bool)
        gap = np.where(has_last, np.log1p(np.maximum(times - np.nan_to_num(last), 0.0)) / _GAP_SCALE, 0.0)
        filled = valid.mean(axis=1) if valid.shape[1] else np.zeros(len(times))
        columns = [np.sin(day), np.cos(day), np.sin(week), np.cos(week), gap, has_last, filled]
        return torch.from_numpy(np.stack(columns, axis=1).astype(np.float32))

    def _history(self, query: Query) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """History rows [B, N] in `history_items` (N = history_length, left-padded), validity, times."""
        n, b = self.history_length, len(query)
        keys = as_keys(np.asarray(query.history_keys), "history_keys").reshape(b, -1)[:, -n:]
        times = np.asarray(query.history_times, dtype=np.float64).reshape(b, -1)[:, -n:]
        if keys.shape[1] < n:
            pad = n - keys.shape[1]
            keys = np.pad(keys, ((0, 0), (pad, 0)))
            times = np.pad(times, ((0, 0), (pad, 0)), constant_values=np.nan)
        rows = self.history_items.rows_for_serving(keys.reshape(-1)).reshape(keys.shape)
        # A history item without a row of its own would pool the shared cold row's noise: left out.
        valid = (keys != NO_KEY) & (rows != COLD_ROW)
        return rows, valid, times

    def _user_vectors(
        self,
        query: Query,
        user_rows: np.ndarray | None = None,
        shared: tuple[np.ndarray, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """float32 [B, dim] user-tower outputs; in training (`user_rows` given: the users' rows from
        `rows_for_training`), through `embed` so backward updates the rows.

        `shared` is (sorted rows, their looked-up vectors) of `history_items` already embedded by the
        caller and holding every history row: a row looked up twice would get two Adagrad steps."""
        dim = self.config.dim
        training = user_rows is not None
        if training:
            users = self.users.embed(user_rows)
        else:
            user_keys = as_keys(query.user_keys, "user_keys")
            users = self.users.weights(self.users.rows_for_serving(user_keys))
        rows, valid, times = self._history(query)
        if shared is None:
            unique, inverse = np.unique(rows[valid], return_inverse=True)
            looked_up = self.history_items.embed(unique) if training else self.history_items.weights(unique)
        else:
            unique, looked_up = shared
            inverse = np.searchsorted(unique, rows[valid])
        # Padded positions read an appended zero row (and get weight 0 anyway).
        table = torch.cat([looked_up[:, :dim], torch.zeros(1, dim)])
        index = np.full(rows.shape, len(unique), dtype=np.int64)
        index[valid] = inverse
        history = table[torch.from_numpy(index.reshape(-1))].view(*rows.shape, dim)
        context = self._context(query, valid, times)
        return self.dense.user(
            users, history, torch.from_numpy(valid), context, self._time_buckets(query, times)
        )

    def _time_buckets(self, query: Query, history_times: np.ndarray) -> torch.Tensor:
        """int64 [B, N]: `age_buckets` of the history items (all 0 when
        `TwoTowerConfig.history_time_buckets` is 0: one logit, which the softmax ignores)."""
        buckets = max(self.config.history_time_buckets, 1)
        return torch.from_numpy(age_buckets(query.timestamps, history_times, buckets))

    def _item_vectors(self, keys: np.ndarray, looked_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Item-tower outputs [C, dim] and biases [C] of distinct `keys` whose item rows are `looked_up`."""
        dim = self.config.dim
        if self.item_features is not None:
            found = self.item_features.lookup(keys)
            indices, mask = torch.from_numpy(found.indices), torch.from_numpy(found.mask.astype(np.float32))
        else:
            indices, mask = torch.zeros(len(keys), 1, dtype=torch.int64), torch.zeros(len(keys), 1)
        return self.dense.item(looked_up[:, :dim], indices, mask), looked_up[:, dim]

    # ------------------------------------------------------------------ scoring
    def user_vectors(self, query: Query) -> np.ndarray:
        """float32 [B, dim + 1]: each row's user-tower output with the constant 1 that multiplies the bias."""
        with torch.no_grad():
            users = self._user_vectors(query)
        return torch.cat([users, torch.ones(len(users), 1)], dim=1).numpy()

    def item_vectors(self, item_keys: np.ndarray) -> np.ndarray:
        """float32 [C, dim + 1]: each item's item-tower output with its bias last (cold row if unknown).

        Depends on the dense weights: see `changes_every_item_vector` for when a server must recompute."""
        keys = as_keys(item_keys, "item_keys")
        with torch.no_grad():
            vectors, bias = self._item_vectors(keys, self.items.weights(self.items.rows_for_serving(keys)))
        return torch.cat([vectors, bias[:, None]], dim=1).numpy()

    def score(self, query: Query, candidate_keys: np.ndarray) -> np.ndarray:
        """float32 [B, C]: dot(user tower, item tower) + item bias.

        `candidate_keys` is uint64 [C] (the same candidates for every row) or [B, C] (per row); each
        distinct candidate goes through the item tower once.
        """
        candidates = np.asarray(candidate_keys)
        keys = as_keys(candidates, "candidate_keys")
        unique, inverse = np.unique(keys, return_inverse=True)
        with torch.no_grad():
            users = self._user_vectors(query)
            vectors, bias = self._item_vectors(
                unique, self.items.weights(self.items.rows_for_serving(unique))
            )
            scores = torch.addmm(bias, users, vectors.T)  # [B, U]
            if candidates.ndim == 1:
                return scores[:, torch.from_numpy(inverse)].numpy()
            columns = torch.from_numpy(inverse.reshape(candidates.shape))
            return torch.gather(scores, 1, columns).numpy()

    # ------------------------------------------------------------------ learning
    def learn(self, batch: Interactions) -> LearnStats:
        """One corrected sampled-softmax step: each event's user vector against every distinct candidate
        (the batch's positives and the sampled negatives that have a row).

        Users and positive items are sightings (rows assigned, admission, eviction, the frequency estimate);
        negatives and history items are only looked up.
        """
        n = len(batch)
        if n == 0:
            return LearnStats()
        config = self.config
        positives = as_keys(batch.item_keys, "item_keys")
        timestamps = np.asarray(batch.timestamps, dtype=np.float64)
        user_rows = self.users.rows_for_training(as_keys(batch.user_keys, "user_keys"), timestamps)
        self.items.rows_for_training(positives, timestamps)
        if self.history_items is not self.items:
            self.history_items.rows_for_training(positives, timestamps)  # admission of history rows
        self.frequency.update(positives)
        negatives = as_keys(batch.negative_keys, "negative_keys").reshape(-1)
        negatives = negatives[(self.items.rows_for_serving(negatives) != COLD_ROW) & (negatives != NO_KEY)]
        candidates = np.unique(np.concatenate([positives, negatives]))  # one column per distinct item
        targets = np.searchsorted(candidates, positives)
        candidate_rows = self.items.rows_for_serving(candidates)
        # With a share (a rank of a distributed trainer), the batch's candidates and normalisation stay
        # the whole batch's; only the share's events are scored and learned here.
        share = batch.share if batch.share is not None else slice(0, n)
        query, user_rows = batch.query.take(np.arange(n)[share]), user_rows[share]
        weights = None if batch.weights is None else batch.weights[share]
        # Positives not admitted yet (admit_after > 1) share the cold row; rows_for_serving says so too.
        if self.history_items is self.items:
            # One lookup of every item row the step reads, so each row gets one Adagrad step.
            history_rows, valid, _ = self._history(query)
            rows = np.unique(np.concatenate([history_rows[valid], candidate_rows]))
            looked_up = self.items.embed(rows)
            users = self._user_vectors(query, user_rows, shared=(rows, looked_up))  # [share, D]
            candidate_vectors = looked_up[torch.from_numpy(np.searchsorted(rows, candidate_rows))]
        else:
            users = self._user_vectors(query, user_rows)
            candidate_vectors = self.items.embed(candidate_rows)
        sharding = self.items.sharding
        if sharding is None:
            vectors, bias = self._item_vectors(candidates, candidate_vectors)  # [C, D], [C]
        else:  # the item tower is the step's largest part: each rank runs it on a share of the columns
            part = even_shares(len(candidates), sharding.world_size)[sharding.rank]
            own, _ = self._item_vectors(candidates[part], candidate_vectors[part])
            vectors, bias = gather_shares(own, len(candidates), sharding), candidate_vectors[:, config.dim]
        logits = torch.addmm(bias, users, vectors.T)
        if config.logq_weight:
            logits = logq_logits(logits, self.frequency.probability(candidates), config.logq_weight)
        if config.mask_history_in_loss:
            mask = _history_mask(query.history_keys, candidates, positives[share])
            logits = logits.masked_fill(torch.from_numpy(mask), _MASKED)
        # The mean over the batch's n events: a share's part of it, so the ranks' gradients sum to it.
        loss = cross_entropy(logits, torch.from_numpy(targets[share]), weights) * (len(users) / n)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # fbgemm's fused Adagrad updates the id rows here
        self._dense.step()
        return LearnStats(
            loss=float(loss.detach()),
            extra={
                "candidates": float(len(candidates)),
                "users": float(len(self.users)),
                "items": float(len(self.items)),
            },
        )

    def shard(self, sharding: RowSharding, sum_gradients: GradientSum) -> None:
        """Every id table's rows over the ranks; the towers' gradients summed over them before Adam."""
        for table in {id(t): t for t in (self.users, self.items, self.history_items)}.values():
            table.shard(sharding)
        self._dense.synchronise = sum_gradients

    # ------------------------------------------------------------------ state
    def state_dict(self) -> model_state.State:
        """Id tables (``users.*``, ``items.*``, ``history.*`` when not shared), dense weights (``dense.*``)
        with Adam's state (``adam.*``), the frequency estimate (``frequency.*``) and the item feature
        table's fingerprint (``features.fingerprint``): numeric arrays, safetensors-compatible."""
        state = model_state.state_of_parts(self._parts)
        state["features.fingerprint"] = self._fingerprint.copy()
        return state

    def load_state_dict(self, state: model_state.State) -> None:
        """Restore `state_dict` output of a model built with the same config and item feature table."""
        saved = np.asarray(state.get("features.fingerprint", self._fingerprint)).reshape(-1)
        if not np.array_equal(saved, self._fingerprint):
            raise ConfigError(
                f"state was saved with item feature table fingerprint {int(saved[0])}, this model has "
                f"{int(self._fingerprint[0])}; build the model with the same ItemFeatureTable (or none)"
            )
        model_state.load_parts(self._parts, state)

    def drain_changes(self) -> StateChanges:
        """Id rows trained, (re)assigned, evicted or expired and frequency buckets updated since the previous
        call (by row), plus the dense weights and Adam's state replaced whole when a step ran since then.

        A delta with dense weights changes every item vector (`changes_every_item_vector`); see the module
        docstring for what the server does with it."""
        return model_state.drain_parts(self._parts)

    def apply_changes(self, changes: StateChanges) -> None:
        """Apply another instance's `drain_changes` in place (id rows and buckets by row, dense arrays
        whole)."""
        model_state.apply_parts(self._parts, changes)

    # ------------------------------------------------------------------ sizes
    def table_sizes(self) -> dict[str, dict[str, int]]:
        tables = {"users": self.users.sizes(), "items": self.items.sizes()}
        if self.history_items is not self.items:
            tables["history_items"] = self.history_items.sizes()
        return tables

    @property
    def dense_parameters(self) -> int:
        """Number of dense parameters (towers, position logits, feature embeddings)."""
        return sum(p.numel() for p in self._dense.parameters.values())


def _history_mask(history_keys: np.ndarray, candidates: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """bool [B, C]: True where candidate c is one of row b's own history items other than its positive."""
    history = as_keys(np.asarray(history_keys), "history_keys").reshape(len(positives), -1)
    mask = np.zeros((len(positives), len(candidates)), dtype=bool)
    if history.shape[1] == 0 or len(candidates) == 0:
        return mask
    columns = np.minimum(np.searchsorted(candidates, history), len(candidates) - 1)
    hit = (candidates[columns] == history) & (history != NO_KEY) & (history != positives[:, None])
    event, position = np.nonzero(hit)
    mask[event, columns[event, position]] = True
    return mask
