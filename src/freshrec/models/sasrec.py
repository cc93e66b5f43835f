"""SASRec-style sequence Transformer learned online: causal self-attention over a user's last N items (with
learned positions and a time-gap signal) gives a user state; score = dot(state, item row) + item bias.

Item rows live on a `freshrec.embeddings.DynamicEmbeddingTable` (admission, expiry, eviction, fbgemm's fused
row-wise Adagrad inside ``backward()``), so the catalogue can hold millions of items; the Transformer's dense
weights are plain torch parameters under Adam. Each micro-batch is one step of sampled softmax over the
batch's positives, the trainer's sampled negatives and the in-batch positives, with the logQ correction of
the popularity-proportional sampling. The model never sees raw ids, never loops per event, and `score`
never changes it.

Row layout
----------
An item row is ``dim + 4`` wide (fbgemm wants a multiple of 4): columns ``[0, dim)`` are the item embedding
(shared by the input sequence and the output softmax, as in SASRec), column ``dim`` is the item bias and the
last three columns are unused padding. ``user_vectors @ item_vectors.T`` (``dim + 1`` wide: the state with a
constant 1, the embedding with its bias) is exactly `score`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from freshrec.embeddings import COLD_ROW, DynamicEmbeddingTable
from freshrec.embeddings.config import TableConfig
from freshrec.errors import ConfigError
from freshrec.features.history import age_buckets
from freshrec.interactions import NO_KEY, Interactions, Query
from freshrec.keyindex import as_keys
from freshrec.model_state import State, apply_parts, drain_parts, load_parts, state_of_parts
from freshrec.models.base import LearnStats, StateChanges, VectorModel
from freshrec.models.dense_state import DenseParameters
from freshrec.models.weighting import cross_entropy

#: Columns after the embedding in an item row: the bias, then padding up to a multiple of 4.
_EXTRA_COLUMNS = 4
#: A masked logit: finite (no NaN from an all-masked row), far below any real score.
_MASKED = -1e9


@dataclass
class SASRecConfig:
    """Settings of `SASRecModel`, the same on every data set.

    The defaults were chosen on MovieLens-100K (prequential, B = 256) within the 5,000 learning events/s
    budget of one torch thread, and checked on `freshrec.sources.synthetic.SyntheticStream`; see the
    class docstring for what was tried.

    Parameters
    ----------
    dim
        Width of the Transformer and of the item embeddings. 64 is SASRec's usual size; wider costs time
        quadratically in the projections and learns more slowly from the few events an item gets online.
    history_length
        N, the user's most recent items read per query (the trainer builds histories this long). SASRec
        uses 50 for MovieLens-style data; longer histories cost attention time linearly in the last layer.
    layers
        Self-attention blocks. All but the last run over every position (causal); the last one only for
        the query position, which is all the loss and the scores need: each extra block costs a full
        sequence pass, ~3x the last block's cost.
    heads
        Attention heads (must divide `dim`).
    ffn_dim
        Hidden width of each block's feed-forward layer.
    time_buckets
        The time-gap signal: the gap between a history item and the query time is put in bucket
        ``floor(log2(1 + seconds))`` (capped at ``time_buckets - 1``), whose learned vector is added to the
        item's input. One bucket per doubling separates seconds, minutes, hours, days and months, which
        is what decides whether a past item is part of the current session.
    attention_recency
        Initial slope of a learned recency bias in every head's attention: the logit of a position d
        places before the query falls by ``slope * d`` (ALiBi, Press et al. 2022), so attention starts on
        the current session and the model learns from there how far back to look. Online the Transformer
        sees each event once, too few to learn from scratch to ignore most of 50 positions: on
        MovieLens-100K N = 30 without the bias beat N = 50 (HR@10 0.1956 against 0.1884); with it
        N = 50 gives 0.1972 (2 heads; slope 0.03: 0.1948, 0.2: 0.1964, 0.4: 0.1933; N = 100: 0.1990 at
        half the speed). 0 turns it off.
    items
        The item id table (see `freshrec.embeddings.config.TableConfig`): items with a row of their own at
        once (``4 (dim + 5)`` bytes each plus the index; beyond it the `eviction` policy frees rows),
        admission, expiry, eviction. Its ``learning_rate`` is the row-wise Adagrad step of item rows.
        Online, an item is seen a few dozen times: a large first step (Adagrad shrinks it as the row's
        gradients add up) lets a new item matter within its first events. Its ``init_std`` is the
        standard deviation of new item rows (also the bias column). Rows start small so that the
        sequence's early steps are not drowned by the noise of rows that have not learned yet: on
        MovieLens-100K 0.05 gave HR@10 0.1884 where 0.1 gave 0.1845 (seed 1: 0.1903 against 0.1855;
        0.02: 0.1879, 0.03: 0.1883).
    dense_learning_rate
        Adam step of the Transformer weights: the usual 1e-3 (on MovieLens-100K, 2e-3 gave HR@10 0.1931
        against 0.1972 at 2 heads; Adam's step does not shrink, so it keeps following a drifting stream).
    logq_correction
        Subtract ``log q(c)`` from each candidate's logit, q being how often the candidate is sampled. The
        negatives and the in-batch positives are drawn in proportion to popularity; without the correction
        the model learns to push popular items down (the sampled softmax is then biased against them),
        with it the softmax estimates the full one. q is taken as the item's sighting count (the table's).
    mask_history_in_loss
        Leave the row's own history items out of its softmax: evaluation and serving never recommend
        items the user already had, so spending capacity on ranking them down is wasted.
    normalise_keys
        The keys and values of the attention read the LayerNorm of the inputs, like its query (pre-LN).
        Off, as in the original SASRec, only the query is normalised: the LayerNorm over every history
        position goes, a learning step is cheaper (BENCHMARKS.md, profile of the blend), and in the
        blend on MovieLens-100K HR@10 / NDCG@10 went 0.2221 / 0.1160 -> 0.2213 / 0.1153: on by default.
    seed
        Seeds the dense initialisation and the item rows.

    >>> SASRecConfig().history_length
    50
    """

    dim: int = 64
    history_length: int = 50
    layers: int = 1
    heads: int = 4
    ffn_dim: int = 128
    time_buckets: int = 32
    attention_recency: float = 0.1
    items: TableConfig = field(default_factory=lambda: TableConfig(learning_rate=0.05, init_std=0.05))
    dense_learning_rate: float = 1e-3
    logq_correction: bool = True
    mask_history_in_loss: bool = True
    normalise_keys: bool = True
    seed: int = 0

    #: Flat names of earlier versions (and of published versions' stored configs) -> nested fields.
    legacy_keys: ClassVar[dict[str, tuple[str, ...]]] = {
        "item_capacity": ("items.capacity",),
        "embedding_learning_rate": ("items.learning_rate",),
        **{name: (f"items.{name}",) for name in ("admit_after", "ttl_seconds", "eviction", "init_std")},
    }

    def __post_init__(self) -> None:
        for name in ("dim", "history_length", "layers", "heads", "ffn_dim", "time_buckets"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"SASRecConfig.{name} must be a positive integer, got {value!r}")
        if self.dim % self.heads:
            raise ConfigError(
                f"SASRecConfig.dim ({self.dim}) must be a multiple of heads ({self.heads}); "
                "e.g. dim=64, heads=2"
            )
        if not self.dense_learning_rate > 0:
            raise ConfigError(f"SASRecConfig.dense_learning_rate must be > 0, got {self.dense_learning_rate}")
        if not 0 <= self.attention_recency < math.inf:
            raise ConfigError(
                "SASRecConfig.attention_recency must be a finite slope >= 0 (0: no recency bias), "
                f"got {self.attention_recency!r}"
            )


class _AttentionPool(torch.autograd.Function):
    """``softmax(queries @ x^T + bias) @ x`` for queries [B, H, D], x [B, L, D], bias [B, H, L], with a
    backward written out: autograd's backward of the two batched products goes through transposed,
    strided copies and costs several times the forward; this one is four batched products on
    contiguous operands, the gradient of x in one of them (x is both the keys and the values)."""

    @staticmethod
    def forward(ctx, queries: torch.Tensor, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        attention = torch.softmax(torch.baddbmm(bias, queries, x.transpose(1, 2)), dim=-1)  # [B, H, L]
        ctx.save_for_backward(queries, x, attention)
        return torch.bmm(attention, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        queries, x, attention = ctx.saved_tensors
        grad = grad.contiguous()
        grad_attention = torch.bmm(grad, x.transpose(1, 2))  # [B, H, L]
        grad_logits = attention * (grad_attention - (grad_attention * attention).sum(-1, keepdim=True))
        grad_queries = torch.bmm(grad_logits, x)
        # d x = attention^T @ grad (as the values) + grad_logits^T @ queries (as the keys), in one product.
        grad_x = torch.bmm(
            torch.cat([attention, grad_logits], dim=1).transpose(1, 2), torch.cat([grad, queries], dim=1)
        )
        return grad_queries, grad_x, grad_logits


class _Block(nn.Module):
    """Pre-LayerNorm Transformer block: x + attention(query LN(x), keys and values K(x), V(x)), then
    + FFN(LN(.)); with `normalise_keys` the keys and values read LN(x) too (see `SASRecConfig`)."""

    def __init__(
        self, dim: int, heads: int, ffn_dim: int, recency_slope: float, normalise_keys: bool = False
    ) -> None:
        super().__init__()
        self.heads = heads
        self.normalise_keys = normalise_keys
        # Per head, the attention logit falls by `recency_slope` per position of distance (ALiBi, Press et
        # al. 2022), learned from there: see `SASRecConfig.attention_recency`.
        self.recency_slope = nn.Parameter(torch.full((heads,), float(recency_slope)))
        self.attention_norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Every position: x [B, L, D], mask bool [B, 1, L, L] (True: may attend) -> [B, L, D]."""
        batch, length, dim = x.shape
        normed = self.attention_norm(x)
        keys, values = self.key_value(normed if self.normalise_keys else x).split(dim, dim=-1)
        split = self._split_heads
        positions = torch.arange(length, dtype=x.dtype)
        distance = (positions[:, None] - positions[None, :]).clamp_min(0)  # [L, L], 0 above the diagonal
        bias = -self.recency_slope[:, None, None] * distance  # [H, L, L]
        bias = bias.masked_fill(~mask, float("-inf"))  # [B, H, L, L]
        attended = F.scaled_dot_product_attention(
            split(self.query(normed)), split(keys), split(values), attn_mask=bias
        )
        h = x + self.out(attended.transpose(1, 2).reshape(batch, length, dim))
        return h + self.ffn(self.ffn_norm(h))

    def forward_last(
        self, x: torch.Tensor, keep: torch.Tensor, last: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The last position only (its row of the causal attention): x [B, L, D], keep bool [B, L] (the
        positions it may attend to) -> [B, D]; equal to ``forward(x, mask)[:, -1]``. `last` is
        ``x[:, -1]`` when the caller has it as a tensor of its own: reading the last position out of `x`
        costs its backward a zero-filled gradient of all of `x` per read.

        One query per sequence lets the key and value projections be folded into it: with per-head
        blocks K_h, V_h of `key_value`, q_h . K_h x_j = (K_h^T q_h) . x_j, and sum_j a_j V_h x_j =
        V_h (sum_j a_j x_j) (the key bias adds the same to every logit, so it drops out of the softmax;
        the attention weights sum to 1, so the value bias passes through). That costs O(L D heads) per
        sequence instead of O(L D^2): the projections of every position were ~70% of a training step.
        """
        batch, length, dim = x.shape
        heads, width = self.heads, dim // self.heads
        # Without `normalise_keys` only the query position is normalised: the keys and values read the
        # inputs as they are, and the LayerNorm over every position is saved.
        last = x[:, -1] if last is None else last
        normed = self.attention_norm(x) if self.normalise_keys else x
        query = self.query(normed[:, -1] if self.normalise_keys else self.attention_norm(last))
        query = query.view(batch, heads, width)  # [B, H, w]
        key_weight, value_weight = self.key_value.weight.split(dim)  # [D, D] each: out x in
        value_bias = self.key_value.bias[dim:]
        folded = torch.einsum("bhw,hwd->bhd", query, key_weight.view(heads, width, dim))  # [B, H, D]
        distance = torch.arange(length - 1, -1, -1, dtype=x.dtype)  # from the last position
        bias = (-self.recency_slope[None, :, None] * distance).masked_fill(~keep[:, None, :], float("-inf"))
        pooled = _AttentionPool.apply(folded / math.sqrt(width), normed, bias)  # [B, H, D]
        attended = torch.einsum("bhd,hwd->bhw", pooled, value_weight.view(heads, width, dim))
        attended = attended.reshape(batch, dim) + value_bias
        h = last + self.out(attended)
        return h + self.ffn(self.ffn_norm(h))

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        return x.view(batch, length, self.heads, dim // self.heads).transpose(1, 2)


class SequenceEncoder(nn.Module):
    """The dense part: history item vectors + positions + time gaps, then a query token that attends
    causally over them; returns the user state (the query token's output).

    The sequence is the N history items (oldest first, right-aligned) followed by one learned query token.
    The query token gives users without history a state of their own (a learned "anyone" vector, so cold
    users get popularity-like scores), and is where the time of the query enters through the gaps.
    """

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        dim, n = config.dim, config.history_length
        self.positions = nn.Parameter(torch.randn(n + 1, dim) * 0.02)
        self.time_gaps = nn.Parameter(torch.randn(config.time_buckets, dim) * 0.02)
        self.query_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.blocks = nn.ModuleList(
            _Block(dim, config.heads, config.ffn_dim, config.attention_recency, config.normalise_keys)
            for _ in range(config.layers)
        )
        self.final_norm = nn.LayerNorm(dim)

    def forward(
        self, items: torch.Tensor, valid: torch.Tensor, gap_buckets: torch.Tensor, all_positions: bool = False
    ) -> torch.Tensor:
        """items float [B, N, D] (zeros where padded), valid bool [B, N], gap_buckets int64 [B, N].

        Returns the state [B, D] of the query token, or with `all_positions` the output of every position
        [B, N + 1, D] (the last one is the state; used to check causality)."""
        batch, n, dim = items.shape
        positions = self.positions[-(n + 1) :]
        # One lookup adds both the time gap and the position of every history item: a table of every
        # (gap bucket, position) sum, indexed by bucket * n + position (one gather and its backward
        # instead of two, and no broadcast add over the batch).
        gap_and_position = (self.time_gaps[:, None, :] + positions[None, :n]).reshape(-1, dim)
        history = items + F.embedding(gap_buckets * n + torch.arange(n), gap_and_position)
        last = (self.query_token + positions[n]).expand(batch, dim)
        x = torch.cat([history, last[:, None]], dim=1)
        keep = torch.cat([valid, torch.ones(batch, 1, dtype=torch.bool)], dim=1)  # [B, L]
        full_blocks = self.blocks if all_positions else self.blocks[:-1]
        if len(full_blocks):
            last = None  # the query position's input is then the full blocks' output
            length = n + 1
            causal = torch.ones(length, length, dtype=torch.bool).tril()
            # A padded position may see itself, so no attention row is empty (an all-masked row is NaN);
            # no real position ever attends to a padded one.
            mask = (causal & keep[:, None, :]) | torch.eye(length, dtype=torch.bool)
            for block in full_blocks:
                x = block(x, mask[:, None])  # [B, 1, L, L]: broadcast over heads
        if all_positions:
            return self.final_norm(x)
        return self.final_norm(self.blocks[-1].forward_last(x, keep, last))


class SASRecModel(VectorModel):
    """Self-attentive sequential recommendation (Kang & McAuley 2018), learned online per micro-batch.

    Kinds and values: each event's softmax loss is weighted by its kind weight; `value` is ignored.

    Differences from the offline paper, each for the online setting: every event is one training example
    (its query's history predicts its item), so only the query position is computed in the last block; a
    learned query token after the history carries the state (and serves users without history); a
    log-time-gap embedding tells the model which history items belong to the current session; the loss is
    a sampled softmax with logQ correction over positives, sampled and in-batch negatives instead of
    binary cross-entropy on one random negative.

    Tried on MovieLens-100K (prequential HR@10 over all events, B = 256), one change at a time. The
    defaults give 0.1995 (seed 1: 0.2003; the seed-to-seed spread is ~0.003); FFN 256 0.1989. At 2 heads
    (with the recency bias and init_std 0.05): 0.1972 (seed 1: 0.1999; in the `freshrec.models.blend`
    default 0.2188 against 0.2196 with 4), embedding learning rate 0.07 0.1954, dense 2e-3 0.1931. Before
    them (2 heads, no recency bias, init_std 0.1: 0.1845): dense learning rate 3e-3 0.1773, 5e-4 0.1822;
    embedding learning rate 0.1 0.1733, 0.2 0.1431; FFN 256 0.1829; 1 head 0.1854; at dense 3e-3: no
    history mask in the loss 0.1757, no logQ correction 0.1553.
    A second block (one full causal pass over all N + 1 positions) gives 0.1840 at 2,205 learning
    events/s, below the 5,000 budget. On a 60,000-event `SyntheticStream` the defaults reach HR@10 0.177
    (0.169 before the recency bias and init_std 0.05; popularity: 0.039, co-occurrence: 0.183; over the
    last 20%: 0.209 against co-occurrence's 0.200).

    >>> model = SASRecModel(SASRecConfig(dim=8, history_length=3, items=TableConfig(capacity=16), heads=2,
    ...                                  ffn_dim=8))
    >>> users = np.array([1, 2], dtype=np.uint64)
    >>> history = np.array([[0, 10, 11], [0, 0, 0]], dtype=np.uint64)
    >>> times = np.array([100.0, 100.0])
    >>> query = Query(users, times, history, np.where(history == 0, np.nan, 50.0))
    >>> batch = Interactions(query, np.array([12, 10], dtype=np.uint64), np.full(2, np.nan),
    ...                      np.zeros(2, np.int8), np.array([[11], [12]], dtype=np.uint64))
    >>> model.learn(batch).loss > 0
    True
    >>> model.score(query, np.array([10, 11, 12, 99], dtype=np.uint64)).shape
    (2, 4)
    """

    name = "sasrec"

    def __init__(self, config: SASRecConfig | None = None) -> None:
        self.config = config = config or SASRecConfig()
        self.history_length = config.history_length
        self.items = DynamicEmbeddingTable(config.items.embedding(config.dim + _EXTRA_COLUMNS, config.seed))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.encoder = SequenceEncoder(config)
        # fused: one kernel over every parameter; the per-tensor (foreach) step costs ~3x on the CPU.
        self.optimizer = torch.optim.Adam(
            self.encoder.parameters(), lr=config.dense_learning_rate, fused=True
        )
        self._dense = DenseParameters(dict(self.encoder.named_parameters()), self.optimizer, "SASRecModel")
        self._parts = {"items.": self.items, "": self._dense}

    @property
    def vector_dim(self) -> int:
        return self.config.dim + 1

    # ------------------------------------------------------------------ scoring
    def user_vectors(self, query: Query) -> np.ndarray:
        """float32 [B, dim + 1]: each row's user state with the constant 1 that multiplies the item bias."""
        with torch.no_grad():
            state = self._user_states(query, training=False)[0]
        return torch.cat([state, torch.ones(len(state), 1)], dim=1).numpy()

    def item_vectors(self, item_keys: np.ndarray) -> np.ndarray:
        """float32 [C, dim + 1]: each item's embedding with its bias last (the cold row if unknown)."""
        rows = self.items.rows_for_serving(as_keys(item_keys, "item_keys"))
        return self.items.weights(rows)[:, : self.config.dim + 1].numpy()

    def score(self, query: Query, candidate_keys: np.ndarray) -> np.ndarray:
        """float32 [B, C]: dot(user state, item embedding) + item bias.

        `candidate_keys` is uint64 [C] (the same candidates for every row) or [B, C] (per row). Users
        without history get the query token's state, items without a row the cold row: always finite.
        """
        dim = self.config.dim
        candidates = np.asarray(candidate_keys)
        with torch.no_grad():
            state = self._user_states(query, training=False)[0]
            rows = self.items.rows_for_serving(as_keys(candidates, "candidate_keys"))
            items = self.items.weights(rows)
            if candidates.ndim == 1:
                return torch.addmm(items[:, dim], state, items[:, :dim].T).numpy()
            items = items.view(len(state), candidates.shape[1], -1)
            scores = torch.bmm(items[:, :, :dim], state[:, :, None])[:, :, 0] + items[:, :, dim]
            return scores.numpy()

    def sequence_outputs(self, query: Query) -> np.ndarray:
        """float32 [B, N + 1, dim]: the output of every position (history, then the query token), all
        blocks run over the full sequence. For inspection and tests; `score` computes only the last."""
        with torch.no_grad():
            items, valid, gaps, *_ = self._history_inputs(query, training=False)
            return self.encoder(items, valid, gaps, all_positions=True).numpy()

    def _history_rows(self, query: Query) -> tuple[np.ndarray, np.ndarray]:
        """The last N history keys as rows [B, N] (left-padded if the query is shorter) and their validity."""
        n = self.history_length
        raw = np.asarray(query.history_keys)
        if raw.ndim != 2 or len(raw) != len(query):
            raise ConfigError(
                f"query.history_keys must be [B, N] with B = {len(query)} rows, got shape {raw.shape}"
            )
        history = as_keys(raw, "history_keys").reshape(raw.shape)[:, -n:]
        if history.shape[1] < n:
            history = np.pad(history, ((0, 0), (n - history.shape[1], 0)))
        valid = history != NO_KEY
        rows = self.items.rows_for_serving(history.reshape(-1)).reshape(history.shape)
        return rows, valid

    def _gap_buckets(self, query: Query) -> torch.Tensor:
        """int64 [B, N]: `age_buckets` of the last N history items (left-padded)."""
        n = self.history_length
        times = np.asarray(query.history_times, dtype=np.float64)[:, -n:]
        if times.shape[1] < n:
            times = np.pad(times, ((0, 0), (n - times.shape[1], 0)), constant_values=np.nan)
        return torch.from_numpy(age_buckets(query.timestamps, times, self.config.time_buckets))

    def _history_inputs(
        self, query: Query, training: bool, extra_rows: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, np.ndarray, np.ndarray]:
        """Encoder inputs of `query`: item vectors [B, N, D], valid [B, N], gap buckets [B, N].

        Each distinct row is looked up once; in training the lookup goes through `embed` (so backward
        updates it) and `extra_rows` (the softmax candidates, sorted unique) are looked up in the same
        call. Also returns the looked-up rows [U, dim + 4] (training only), the history rows [B, N] and
        the unique rows in lookup order."""
        rows, valid = self._history_rows(query)
        history_rows = rows[valid]
        wanted = history_rows if extra_rows is None else np.concatenate([history_rows, extra_rows])
        unique, inverse = np.unique(wanted, return_inverse=True)
        looked_up = self.items.embed(unique) if training else self.items.weights(unique)
        dim = self.config.dim
        # Padded positions read an appended zero row.
        table = torch.cat([looked_up[:, :dim], torch.zeros(1, dim)])
        index = np.full(rows.shape, len(unique), dtype=np.int64)
        index[valid] = inverse[: len(history_rows)]
        items = F.embedding(torch.from_numpy(index), table)  # [B, N, D]
        return (
            items,
            torch.from_numpy(valid),
            self._gap_buckets(query),
            looked_up if training else None,
            rows,
            unique,
        )

    def _user_states(self, query: Query, training: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        items, valid, gaps, looked_up, _, _ = self._history_inputs(query, training)
        return self.encoder(items, valid, gaps), looked_up

    # ------------------------------------------------------------------ learning
    def learn(self, batch: Interactions) -> LearnStats:
        """One sampled-softmax step on the batch: each event's query state against its positive, the
        batch's other positives and every sampled negative (distinct items, one column each).

        Positives are sightings (rows assigned, admission, eviction); negatives and history items are only
        looked up. Negatives without a row of their own are dropped (they would train the shared cold row).
        """
        n = len(batch)
        if n == 0:
            return LearnStats()
        config, dim = self.config, self.config.dim
        positives = as_keys(batch.item_keys, "item_keys")
        timestamps = np.asarray(batch.timestamps, dtype=np.float64)
        positive_rows = self.items.rows_for_training(positives, timestamps)
        negative_rows = self.items.rows_for_serving(as_keys(batch.negative_keys, "negative_keys").reshape(-1))
        negative_rows = negative_rows[negative_rows != COLD_ROW]
        candidates = np.unique(np.concatenate([positive_rows, negative_rows]))  # sorted rows, one column each

        items, valid, gaps, looked_up, history_rows, unique = self._history_inputs(
            batch.query, training=True, extra_rows=candidates
        )
        state = self.encoder(items, valid, gaps)  # [B, D]
        assert looked_up is not None
        candidate_vectors = looked_up[torch.from_numpy(np.searchsorted(unique, candidates))]
        logits = torch.addmm(candidate_vectors[:, dim], state, candidate_vectors[:, :dim].T)  # [B, C]
        if config.logq_correction:
            logits = logits - torch.from_numpy(self._log_sampling_probability(candidates))
        targets = np.searchsorted(candidates, positive_rows)
        if config.mask_history_in_loss:
            logits = logits.masked_fill(
                torch.from_numpy(self._history_mask(history_rows, valid.numpy(), candidates, positive_rows)),
                _MASKED,
            )
        loss = cross_entropy(logits, torch.from_numpy(targets), batch.weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # fbgemm's fused Adagrad updates the item rows here
        self._dense.step()
        value = float(loss.detach())
        return LearnStats(
            loss=value, extra={"candidates": float(len(candidates)), "items": float(len(self.items))}
        )

    def _log_sampling_probability(self, rows: np.ndarray) -> np.ndarray:
        """float32 log of each candidate's sighting count (>= 1): proportional to log q up to a constant,
        which the softmax ignores."""
        counts = np.ones(len(rows), dtype=np.float64)
        own = rows != COLD_ROW
        counts[own] = np.maximum(self.items.index.counts[rows[own] - 1], 1)
        return np.log(counts).astype(np.float32)

    @staticmethod
    def _history_mask(
        history_rows: np.ndarray, valid: np.ndarray, candidates: np.ndarray, positive_rows: np.ndarray
    ) -> np.ndarray:
        """bool [B, C]: True where the candidate is one of the row's own history items (and not its
        positive or the cold row)."""
        n = len(history_rows)
        mask = np.zeros((n, len(candidates)), dtype=bool)
        columns = np.minimum(np.searchsorted(candidates, history_rows), len(candidates) - 1)
        hit = valid & (candidates[columns] == history_rows) & (history_rows != COLD_ROW)
        hit &= history_rows != positive_rows[:, None]
        event, position = np.nonzero(hit)
        mask[event, columns[event, position]] = True
        return mask

    # ------------------------------------------------------------------ state
    def state_dict(self) -> State:
        """The item table's `state_dict` (``items.*``), the dense weights (``dense.*``) and Adam's state
        (``adam.*``): finite numeric arrays, safetensors-compatible."""
        return state_of_parts(self._parts)

    def load_state_dict(self, state: State) -> None:
        """Restore `state_dict` output of a model built with the same config."""
        load_parts(self._parts, state)

    def drain_changes(self) -> StateChanges:
        """Item rows trained, (re)assigned, evicted or expired since the previous call (``items.*``, by
        row), and the dense weights with Adam's state replaced whole when a step ran since then."""
        return drain_parts(self._parts)

    def apply_changes(self, changes: StateChanges) -> None:
        """Apply another instance's `drain_changes` in place (item rows by row, dense arrays whole)."""
        apply_parts(self._parts, changes)

    # ------------------------------------------------------------------ sizes
    @property
    def dense_parameters(self) -> int:
        """Number of dense (Transformer) parameters."""
        return sum(p.numel() for p in self._dense.parameters.values())

    @property
    def embedding_parameters(self) -> int:
        """Number of item-table parameters (rows x row width, the cold row included)."""
        return self.items.num_rows * self.items.dim
