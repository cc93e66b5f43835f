"""Rating prediction for explicit feedback: biased matrix factorisation with drifting biases, learned online
in one pass (predict, then learn, per micro-batch).

The prediction for user u and item i is::

    r(u, i) = mu + b_u + c_u * b_i + p_u . q_i          clipped to [min_rating, max_rating]

``mu`` is the exact running mean of every rating so far, ``b_u`` / ``b_i`` are user and item biases, ``c_u``
is the user's scale on the item bias (Koren 2009, "Collaborative filtering with temporal dynamics": users who
discriminate strongly between good and bad films get ``c_u > 1``), and ``p_u``, ``q_i`` are latent factors.

Time enters through the biases, the online counterpart of timeSVD++'s ``b_u(t)`` and ``b_i(t)``: each bias
moves toward its recent residuals by ``max(1 / (n + prior), floor)`` per rating, where ``n`` is how many
ratings the id has had. Early on that is the shrunk running mean of the residuals (Bayesian-style: the prior
acts like ``prior`` ratings at 0); once ``1 / (n + prior)`` falls under the floor, the bias is an exponential
moving average over about ``1 / floor`` ratings, so it keeps following drift (a user's mood in a session,
an item's fading novelty) instead of freezing at its lifetime mean. On MovieLens-100K (time order, B = 1,
biases alone) the pure running mean gives RMSE 0.962, constant-step SGD (River's ``Baseline``) 0.954, the
floored mean 0.947.

Users and items live in bounded slot arrays addressed through `freshrec.keyindex.KeyIndex` (collisionless,
least-recently-seen eviction at capacity); new rows start from a deterministic function of the id, so a
replica or a restarted trainer gives a returning id the same start. Every update is vectorised per
micro-batch (numpy, grouped by row); this module never loops in Python per event, and `score` /
`predict_ratings` never change the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from freshrec import model_state
from freshrec.embeddings.config import DEFAULT_CAPACITY
from freshrec.errors import ConfigError
from freshrec.hashing import mix64
from freshrec.interactions import Interactions, Query
from freshrec.keyindex import KeyIndex, as_keys
from freshrec.models.base import LearnStats, Model, RatingPredictor, StateChanges

__all__ = ["RatingConfig", "RatingModel", "RatingScaleError"]


class RatingScaleError(ConfigError):
    """Ratings outside the model's scale (`RatingConfig.min_rating`, `max_rating`): the wrong column is
    mapped to ``value``, or the scale is not the data's."""


@dataclass
class RatingConfig:
    """Settings of `RatingModel`. The defaults are the same on every data set.

    They were chosen once on MovieLens-100K (time order, every rating, predict-then-learn, B = 1), one
    setting changed at a time; the RMSE figures below are from those tuning runs (the other settings as
    they stood then), the final figure is `bench/rating.py`'s.

    Parameters
    ----------
    min_rating, max_rating
        The rating scale: predictions are clipped to it, and `learn` refuses a rating outside it
        (`RatingScaleError`, naming the field, the scale and how many).
    dim
        Latent factors per user and per item. 64 beat 32 (RMSE 0.9366 vs 0.9378) and 10 (0.9419).
    user_capacity, item_capacity
        Most users / items with a row at once (``(dim + 2) x 4 + 16`` bytes each, plus the index);
        beyond it the `eviction` policy frees rows.
    eviction
        ``"lru"`` or ``"lfu"`` at capacity (``"none"`` raises `freshrec.errors.CapacityError` instead).
    factor_learning_rate
        SGD step of the factors. One pass needs a large step: 0.1 beat 0.07 (0.9448) and 0.15 (0.9458).
    factor_l2
        L2 penalty on the factors of each rating (0: none; 0.01 cost 0.0006 RMSE in one pass).
    init_std
        Standard deviation of new factor rows (0.05; 0.1 and 0.2 were worse with 64 factors).
    user_bias_prior, item_bias_prior
        The bias step is ``max(1 / (n + prior), floor)`` per rating, ``n`` the id's ratings so far: a
        new id's bias is its residuals' mean shrunk toward 0 as if it had ``prior`` ratings of residual 0.
    user_bias_floor, item_bias_floor
        Smallest bias step: the bias then averages about the last ``1 / floor`` ratings (drift). Users drift
        more than items (MovieLens-100K, B = 1: user floor 0.06 beat 0.04 and 0.08; item floor 0.01 beat
        0.015 and 0.03; both at 0 gives 0.962 with biases alone).
    scale_learning_rate
        SGD step of the user's scale ``c_u`` on the item bias (0 keeps it at 1); 0.05 gained 0.0015 RMSE.
    popularity_weight
        `score` (top-K) adds ``popularity_weight * log(1 + ratings of the item)`` to the predicted rating:
        a predicted rating says how much a user would like an item *if* they saw it, not whether they
        will; popularity supplies the second half. It never enters `predict_ratings`.
    session_history, session_prior
        Within a micro-batch nothing is learned until the batch ends, yet a user's earlier ratings in the
        batch are known (live feature state, `Query.history_values`). The prediction adds the mean residual
        of the user's ratings not yet learned (among their last `session_history`), shrunk as if there were
        `session_prior` more residuals of 0: what B = 1 learning would have moved the user's bias by.
        MovieLens-100K, B = 256: RMSE 1.0073 without it, 0.9474 with prior 5 (2: 0.9493, 10: 0.9492); at
        B = 1 it never applies. 0 history turns it off.
    seed
        Seeds the deterministic initialisation of new rows.

    >>> RatingConfig().dim
    64
    """

    min_rating: float = 1.0
    max_rating: float = 5.0
    dim: int = 64
    user_capacity: int = DEFAULT_CAPACITY
    item_capacity: int = DEFAULT_CAPACITY
    eviction: Literal["lru", "lfu", "none"] = "lru"
    factor_learning_rate: float = 0.1
    factor_l2: float = 0.0
    init_std: float = 0.05
    user_bias_prior: float = 5.0
    item_bias_prior: float = 5.0
    user_bias_floor: float = 0.06
    item_bias_floor: float = 0.01
    scale_learning_rate: float = 0.05
    popularity_weight: float = 0.5
    session_history: int = 20
    session_prior: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.min_rating < self.max_rating:
            raise ConfigError(
                f"RatingConfig.min_rating ({self.min_rating}) must be below max_rating ({self.max_rating})"
            )
        for name in ("dim", "user_capacity", "item_capacity"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"RatingConfig.{name} must be a positive integer, got {value!r}")
        if self.eviction not in ("lru", "lfu", "none"):
            raise ConfigError(f"RatingConfig.eviction must be 'lru', 'lfu' or 'none', got {self.eviction!r}")
        for name in ("factor_learning_rate", "user_bias_floor", "item_bias_floor", "scale_learning_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"RatingConfig.{name} must be in [0, 1], got {value}")
        if not isinstance(self.session_history, int) or self.session_history < 0:
            raise ConfigError(
                f"RatingConfig.session_history must be an integer >= 0, got {self.session_history!r}"
            )
        non_negative = ("factor_l2", "init_std", "user_bias_prior", "item_bias_prior", "popularity_weight")
        for name in (*non_negative, "session_prior"):
            value = getattr(self, name)
            if not value >= 0.0:
                raise ConfigError(f"RatingConfig.{name} must be >= 0, got {value}")
        if self.user_bias_prior == 0 and self.user_bias_floor == 0:
            raise ConfigError("RatingConfig.user_bias_prior must be > 0 when user_bias_floor is 0")
        if self.item_bias_prior == 0 and self.item_bias_floor == 0:
            raise ConfigError("RatingConfig.item_bias_prior must be > 0 when item_bias_floor is 0")


class _Side:
    """The rows of one side (users or items): the id -> slot index, biases and factors, and which slots
    changed since the last drain. Slot-addressed arrays all have ``capacity`` rows. A stateful part:
    ``index.*``, ``bias``, ``factors`` (and ``scale`` for users), all by slot."""

    def __init__(self, name: str, capacity: int, dim: int, eviction: str, with_scale: bool) -> None:
        self.name = name
        self.index = KeyIndex(capacity, eviction)  # type: ignore[arg-type]
        self.bias = np.zeros(capacity, dtype=np.float64)
        self.factors = np.zeros((capacity, dim), dtype=np.float32)
        # Only users carry a scale on the item bias; items keep an empty array so the code stays uniform.
        self.scale = np.ones(capacity if with_scale else 0, dtype=np.float64)
        self.dirty = np.zeros(capacity, dtype=bool)

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {"bias": self.bias, "factors": self.factors}
        if len(self.scale):
            arrays["scale"] = self.scale
        return arrays

    def state_dict(self) -> model_state.State:
        state = model_state.with_prefix(self.index.state_dict(finite=True), "index.")
        state.update({name: array.copy() for name, array in self.arrays().items()})
        return state

    def load_state_dict(self, state: model_state.State) -> None:
        hint = "build the model with the capacity and dim it was saved with"
        named = {f"{self.name}.{name}": array for name, array in self.arrays().items()}
        loaded = {
            name: model_state.array_like(model_state.with_prefix(state, f"{self.name}."), name, array, hint)
            for name, array in named.items()
        }
        self.index.load_state_dict(model_state.under_prefix(state, "index."))
        for name, array in named.items():
            array[...] = loaded[name]
        self.dirty[:] = False

    def drain_changes(self) -> StateChanges:
        slots = np.flatnonzero(self.dirty)
        self.dirty[slots] = False
        changes = StateChanges(rows={name: (slots, a[slots]) for name, a in self.arrays().items()})
        changes.add(self.index.slot_changes(slots, finite=True), "index.")
        return changes

    def apply_changes(self, changes: StateChanges) -> None:
        self.index.apply_changes(changes.under("index."))
        model_state.apply_rows(self.arrays(), changes)


class RatingModel(Model, RatingPredictor):
    """Online biased MF for explicit ratings: ``mu + b_u + c_u b_i + p_u . q_i``, drifting biases.

    Kinds and values: `value` is the rating (events without a finite value are not learned from); kind
    weights are ignored, since an explicit rating already says how much the user liked the item.

    Each micro-batch is predicted with the parameters as they were before it, then learned. A row seen
    ``m`` times in a batch moves toward the mean of its ``m`` gradients by the fraction ``m`` sequential
    steps would have moved it (``1 - (1 - step) ** m``; for the biases ``max(m / (n + prior), ...)``), so
    the update does not blow up when a user rates 200 films in one batch and equals plain SGD at B = 1.
    Item biases move first and user biases take what the items left of each residual (moving both toward
    the same residual at once counts it twice). Events without a finite value (views, clicks) are not
    learned from.

    Micro-batch size matters for rating prediction: on MovieLens-100K RMSE is 0.9328 at B = 1 and 1.0073 at
    B = 256, because a batch is predicted before any of it is learned and users rate in bursts (a new
    user's whole first session shares one batch). The loss is the staleness, not the update: learning a
    B = 256 batch event by event after predicting it gives 1.014. Run rating models at B = 1 (or small B)
    when RMSE is the figure that matters.

    >>> model = RatingModel(RatingConfig(dim=4, user_capacity=8, item_capacity=8))
    >>> users, items = np.array([1, 1, 2], dtype=np.uint64), np.array([10, 11, 10], dtype=np.uint64)
    >>> query = Query.without_history(users, np.arange(3.0))
    >>> ratings = np.array([5.0, 4.0, 5.0])
    >>> batch = Interactions(query, items, ratings, np.full(3, 4, np.int8), np.zeros((3, 0), np.uint64))
    >>> for _ in range(20):
    ...     _ = model.learn(batch)
    >>> predicted = model.predict_ratings(query, items)
    >>> bool(np.abs(predicted - ratings).max() < 0.3), predicted.dtype.name
    (True, 'float64')
    """

    name = "rating-mf"

    #: The feature state keeps history values (ratings) for this model: see `RatingConfig.session_history`.
    reads_history_values = True

    def __init__(self, config: RatingConfig | None = None) -> None:
        self.config = config = config or RatingConfig()
        self.history_length = config.session_history
        # Latest event time learned: history events at or after it may not be learned yet (ties are
        # counted as pending, the smaller error). Finite (-1 before anything), so the store accepts it.
        self._learned_through = np.array([-1.0])
        self.users = _Side("users", config.user_capacity, config.dim, config.eviction, with_scale=True)
        self.items = _Side("items", config.item_capacity, config.dim, config.eviction, with_scale=False)
        self._parts = {"users.": self.users, "items.": self.items}
        # [sum of ratings, number of ratings]: mu is their ratio (the exact running mean).
        self._global = np.zeros(2, dtype=np.float64)
        self._global_changed = False

    def __len__(self) -> int:
        """Users with a row (items: ``len(model.items.index)``)."""
        return len(self.users.index)

    @property
    def global_mean(self) -> float:
        """mu: the mean of every rating learned so far (the middle of the scale before the first)."""
        total, count = self._global
        return float(total / count) if count else 0.5 * (self.config.min_rating + self.config.max_rating)

    def _check_scale(self, ratings: np.ndarray) -> None:
        """Refuse ratings off the scale before learning any of them: a price or a watch time mapped to
        ``value`` would otherwise be learned and reported as a huge RMSE, silently."""
        low, high = self.config.min_rating, self.config.max_rating
        outside = (ratings < low) | (ratings > high)
        if outside.any():
            bad = ratings[outside]
            raise RatingScaleError(
                f"value: {int(outside.sum()):,} of {len(ratings):,} rated events of this batch are outside "
                f"the rating scale [{low:g}, {high:g}] of {self.name} (from {bad.min():g} to {bad.max():g}): "
                "map `value` to a rating column (replay --columns value=COL), or set model.min_rating / "
                "model.max_rating to the scale of your ratings"
            )

    # ------------------------------------------------------------------ prediction
    def predict_ratings(self, query: Query, item_keys: np.ndarray) -> np.ndarray:
        """float64 [B]: the predicted rating of each row's item, clipped to the rating scale.

        Unknown users or items fall back to the global mean plus what is known (never NaN).
        """
        items = as_keys(item_keys, "item_keys")
        if len(items) != len(query):
            raise ConfigError(
                f"item_keys has {len(items)} entries but the query has {len(query)} rows; pass one per row"
            )
        user_slots = self.users.index.lookup(as_keys(query.user_keys, "user_keys"))
        item_slots = self.items.index.lookup(items)
        raw = self._raw_predictions(user_slots, item_slots) + self._pending_residuals(query, user_slots)
        return np.clip(raw, self.config.min_rating, self.config.max_rating)

    def _pending_residuals(self, query: Query, user_slots: np.ndarray) -> np.ndarray | float:
        """Per row: the shrunk mean residual of the user's history ratings not learned yet."""
        values = query.history_values
        if values is None or self.history_length == 0 or values.shape[1] == 0:
            return 0.0
        pending = np.isfinite(values) & (query.history_times >= self._learned_through[0])
        rows, columns = np.nonzero(pending)
        if len(rows) == 0:
            return 0.0
        item_slots = self.items.index.lookup(query.history_keys[rows, columns])
        predicted = np.clip(
            self._raw_predictions(user_slots[rows], item_slots),
            self.config.min_rating,
            self.config.max_rating,
        )
        n = len(user_slots)
        total = np.bincount(rows, weights=values[rows, columns] - predicted, minlength=n)
        return total / (np.bincount(rows, minlength=n) + self.config.session_prior)

    def _raw_predictions(self, user_slots: np.ndarray, item_slots: np.ndarray) -> np.ndarray:
        """Unclipped predictions (float64) for slots, -1 meaning no row (bias 0, scale 1, factors 0)."""
        user_bias, user_scale, user_factors = self._user_rows(user_slots)
        item_bias, item_factors = self._item_rows(item_slots)
        dot = np.einsum("ij,ij->i", user_factors, item_factors, dtype=np.float64)
        return self.global_mean + user_bias + user_scale * item_bias + dot

    def _user_rows(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        known = slots >= 0
        safe = np.where(known, slots, 0)
        bias = np.where(known, self.users.bias[safe], 0.0)
        scale = np.where(known, self.users.scale[safe], 1.0)
        factors = self.users.factors[safe] * known[:, None].astype(np.float32)
        return bias, scale, factors

    def _item_rows(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        known = slots >= 0
        safe = np.where(known, slots, 0)
        bias = np.where(known, self.items.bias[safe], 0.0)
        factors = self.items.factors[safe] * known[:, None].astype(np.float32)
        return bias, factors

    # ------------------------------------------------------------------ top-K
    def score(self, query: Query, candidate_keys: np.ndarray) -> np.ndarray:
        """float32 [B, C]: predicted rating (unclipped) plus the popularity term of
        `RatingConfig.popularity_weight`, for each query row and candidate (uint64 [C] or [B, C])."""
        candidates = np.asarray(candidate_keys)
        users = self.user_vectors(query)  # [B, dim + 2]
        items = self.item_vectors(candidates.reshape(-1))  # [C or B*C, dim + 2]
        # The user-only terms (mu + b_u) do not change a row's ranking but keep the score a rating.
        offset = (self.global_mean + self._user_rows(self._user_slots(query))[0]).astype(np.float32)
        if candidates.ndim == 1:
            return users @ items.T + offset[:, None]
        items = items.reshape(len(users), candidates.shape[1], -1)
        return np.einsum("bcd,bd->bc", items, users) + offset[:, None]

    def user_vectors(self, query: Query) -> np.ndarray:
        """float32 [B, dim + 2]: ``[p_u, c_u, popularity_weight]``; its dot product with `item_vectors`
        ranks items exactly as `score` does (score minus the per-user constant ``mu + b_u``)."""
        _, scale, factors = self._user_rows(self._user_slots(query))
        extra = np.stack([scale, np.full(len(scale), self.config.popularity_weight)], axis=1)
        return np.concatenate([factors, extra.astype(np.float32)], axis=1)

    def item_vectors(self, item_keys: np.ndarray) -> np.ndarray:
        """float32 [C, dim + 2]: ``[q_i, b_i, log(1 + ratings of i)]`` (zeros for unknown items)."""
        slots = self.items.index.lookup(as_keys(item_keys, "item_keys"))
        bias, factors = self._item_rows(slots)
        counts = np.where(slots >= 0, self.items.index.counts[np.maximum(slots, 0)], 0)
        extra = np.stack([bias, np.log1p(counts)], axis=1).astype(np.float32)
        return np.concatenate([factors, extra], axis=1)

    def _user_slots(self, query: Query) -> np.ndarray:
        return self.users.index.lookup(as_keys(query.user_keys, "user_keys"))

    # ------------------------------------------------------------------ learning
    def learn(self, batch: Interactions) -> LearnStats:
        """One step on the batch's rated events (finite values); returns their mean squared error as
        predicted before the step (unclipped: the training loss)."""
        values = np.asarray(batch.values, dtype=np.float64)
        rated = np.flatnonzero(np.isfinite(values))
        if len(rated) == 0:
            return LearnStats()
        config = self.config
        ratings = values[rated]
        self._check_scale(ratings)
        times = np.asarray(batch.timestamps, dtype=np.float64)[rated]
        self._learned_through[0] = max(self._learned_through[0], float(times.max()))
        self._global_changed = True  # published with the global sums
        users = as_keys(batch.user_keys, "user_keys")[rated]
        items = as_keys(batch.item_keys, "item_keys")[rated]
        user_slots = self._assign(self.users, users, times)
        item_slots = self._assign(self.items, items, times)

        user_bias, user_scale, user_factors = self._user_rows(user_slots)
        item_bias, item_factors = self._item_rows(item_slots)
        dot = np.einsum("ij,ij->i", user_factors, item_factors, dtype=np.float64)
        errors = ratings - (self.global_mean + user_bias + user_scale * item_bias + dot)

        u_rows, u_group, u_m = _group_rows(user_slots)
        i_rows, i_group, i_m = _group_rows(item_slots)
        # Biases: toward the mean residual by max(m / (n + prior), 1 - (1 - floor)^m), see RatingConfig.
        # Items first, then users on what the items left: moving both toward the same residual at once
        # counts it twice when a batch holds many ratings of the same users and items.
        residuals = errors
        for side, rows, group, m, prior, floor, multiplier in (
            (self.items, i_rows, i_group, i_m, config.item_bias_prior, config.item_bias_floor, user_scale),
            (self.users, u_rows, u_group, u_m, config.user_bias_prior, config.user_bias_floor, None),
        ):
            n = side.index.counts[rows].astype(np.float64)  # ratings so far, this batch included
            fraction = np.maximum(m / (n + prior), _sequential_fraction(floor, m))
            moved = np.bincount(group, weights=residuals, minlength=len(rows)) / m * fraction
            side.bias[rows] += moved
            if multiplier is not None:  # the item bias enters the prediction times the user's scale
                residuals = residuals - multiplier * moved[group]
        if config.scale_learning_rate > 0:
            gradient = np.bincount(u_group, weights=errors * item_bias, minlength=len(u_rows)) / u_m
            self.users.scale[u_rows] += gradient * _sequential_fraction(config.scale_learning_rate, u_m)
        # Factors, both sides from the values before this step (one simultaneous gradient step).
        step = config.factor_learning_rate
        err32 = errors.astype(np.float32)[:, None]
        for side, rows, group, m, gradient in (
            (self.users, u_rows, u_group, u_m, err32 * item_factors - config.factor_l2 * user_factors),
            (self.items, i_rows, i_group, i_m, err32 * user_factors - config.factor_l2 * item_factors),
        ):
            summed = np.zeros((len(rows), config.dim), dtype=np.float32)
            np.add.at(summed, group, gradient)
            scale = (_sequential_fraction(step, m) / m).astype(np.float32)
            side.factors[rows] += summed * scale[:, None]

        self._global += (float(ratings.sum()), float(len(ratings)))
        self._global_changed = True
        return LearnStats(
            loss=float(np.mean(errors**2)),
            extra={
                "rated": float(len(rated)),
                "users": float(len(self.users.index)),
                "items": float(len(self.items.index)),
            },
        )

    def _assign(self, side: _Side, keys: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Slots of `keys` (counting the sighting); a slot new to its key starts from the key's own init."""
        assignment = side.index.assign(keys, times)
        slots = assignment.slots
        side.dirty[slots] = True  # counts and last_seen of every key seen, and the rows learned below
        if assignment.new.any():
            new_slots, first = np.unique(slots[assignment.new], return_index=True)
            new_keys = keys[assignment.new][first]
            side.bias[new_slots] = 0.0
            if len(side.scale):
                side.scale[new_slots] = 1.0
            side.factors[new_slots] = self._initial_factors(new_keys, side is self.items)
        return slots

    def _initial_factors(self, keys: np.ndarray, items: bool) -> np.ndarray:
        """float32 [n, dim] N(0, init_std^2) rows, a pure function of (key, side, seed): reproducible on a
        replica or after a restart, whatever happened to other rows in between."""
        dim = self.config.dim
        base = mix64(keys, seed=2 * self.config.seed + int(items) + 1)
        bits = mix64(base[:, None] + np.arange(2 * dim, dtype=np.uint64)[None, :], seed=1)
        uniform = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53  # in (0, 1)
        u1, u2 = uniform[:, :dim], uniform[:, dim:]
        normal = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)  # Box-Muller
        return (self.config.init_std * normal).astype(np.float32)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> model_state.State:
        """Finite numeric arrays (copies). Slot-addressed: ``users.index.*``, ``users.bias``,
        ``users.scale``, ``users.factors`` and the same for ``items.`` (no scale); replaced whole:
        ``global`` (rating sum and count) and ``learned_through``."""
        state = model_state.state_of_parts(self._parts)
        state["global"] = self._global.copy()
        state["learned_through"] = self._learned_through.copy()
        return state

    def load_state_dict(self, state: model_state.State) -> None:
        """Replace the whole state with `state_dict` output of a model built with the same config."""
        model_state.load_parts(self._parts, state)
        self._global[:] = np.asarray(state["global"], dtype=np.float64)
        self._learned_through[:] = np.asarray(state["learned_through"], dtype=np.float64)
        self._global_changed = False

    def table_sizes(self) -> dict[str, dict[str, int]]:
        return {"users": self.users.index.sizes(), "items": self.items.index.sizes()}

    def drain_changes(self) -> StateChanges:
        """The slots learned or (re)assigned since the previous drain (every slot-addressed array, by row)
        and the global sums. Never incomplete: tracking is one flag per slot."""
        changes = model_state.drain_parts(self._parts)
        if self._global_changed:
            changes.replaced["global"] = self._global.copy()
            changes.replaced["learned_through"] = self._learned_through.copy()
            self._global_changed = False
        return changes

    def apply_changes(self, changes: StateChanges) -> None:
        """Apply another instance's `drain_changes` in place, in O(changed slots x dim)."""
        model_state.apply_parts(self._parts, changes)
        if "global" in changes.replaced:
            self._global[:] = changes.replaced["global"]
            self._learned_through[:] = changes.replaced["learned_through"]


def _group_rows(slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct slots, the group of each entry, occurrences per group); one event skips the sort (B = 1
    is the strict protocol and pays this per event)."""
    if len(slots) == 1:
        return slots, np.zeros(1, dtype=np.int64), np.ones(1, dtype=np.int64)
    return np.unique(slots, return_inverse=True, return_counts=True)


def _sequential_fraction(step: float, m: np.ndarray) -> np.ndarray:
    """How far ``m`` successive steps of size `step` toward a fixed target move: ``1 - (1 - step) ** m``.

    >>> _sequential_fraction(0.5, np.array([1, 2])).tolist()
    [0.5, 0.75]
    """
    return 1.0 - (1.0 - step) ** np.asarray(m, dtype=np.float64)
