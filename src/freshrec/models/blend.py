"""A blend of recommenders whose weights are learned online: each component's scores become a few features
per query row (a normalised score, the log of a rank), and a small softmax layer (one weight per feature and
bucket of history length and time since the previous event) is trained each micro-batch on the batch's
positives against its negatives, scored before anything learns from the batch.

The blend never tunes its weights to an evaluation stream: they move only by the gradient of the same
test-then-train loss every model follows. It owns no item parameters of its own; each component keeps its
own state and learns from every batch as it would alone. Never a Python loop per event.

Normalisation
-------------
Component scores live on unrelated scales (softmax logits, co-occurrence weights, counts), and those scales
move per user (a long history sums more co-occurrences) and over time (counts grow). So each row's scores
are standardised by the mean and standard deviation, for that row, of the component's scores of a
*reference set*: the most recent positives of the stream (a popularity-weighted sample of what is live).
The reference set is the same kind of set when the blend is trained and when it scores, whatever the
candidates are (a few hundred sampled items in training, the whole catalogue in evaluation), so the
learned weights mean the same in both. Components whose scores are already logits of a softmax
(`BlendConfig.raw_components`) are only centred, not scaled: their spread is their confidence.

Rank features
-------------
A linear weight on a standardised score cannot express "this item is the component's first choice": a
co-occurrence row is a few huge values over a flat floor, and its z-scores say little about the order at
the top (on MovieLens-100K co-occurrence got a weight of ~0 with scores alone). So each component also
gives ``-log(1 + rank)``, the rank being how many of the row's reference scores beat the candidate's: a
position on the same popularity-weighted reference set, comparable between training and scoring and
between components. Its weight is what lets co-occurrence's top of the list through (HR@10 0.2073 ->
0.2101 for two-tower + co-occurrence + popularity).

Training candidates
-------------------
By default (``training_candidates="recent"``) the blend's softmax in training runs over every distinct
item of the recent positives (its occurrence window) besides the batch's positives and negatives, with no
logQ correction: that set holds the hard competitors evaluation ranks against, where the trainer's few
sampled negatives mostly hold easy ones (HR@10 0.2123 -> 0.2149 with four components). It would cost one
more scoring of ~the live catalogue per batch; but in test-then-train the batch was just ranked against
the catalogue with the same query and nothing has learned since, so the blend keeps those features (per
distinct key) and its learning step only gathers them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from freshrec.errors import ConfigError
from freshrec.interactions import NO_KEY, Interactions, Query
from freshrec.keyindex import as_keys
from freshrec.model_state import State, apply_parts, array_like, drain_parts, load_parts, state_of_parts
from freshrec.models.base import LearnStats, Model, StateChanges

_MASKED = -1e9
#: What a component can contribute per candidate (see `BlendConfig.feature_kinds`).
FEATURE_KINDS = ("score", "log_rank", "inverse_rank", "top1", "top3", "top10")


@dataclass
class BlendConfig:
    """Settings of `BlendedModel`.

    Parameters
    ----------
    history_buckets
        Upper-exclusive bounds of the history-length buckets; each bucket has its own weight per
        component (a user with no history needs popularity, one with a long session needs its
        sequence). The default buckets are 0, 1, 2-4, 5-9, 10-19, 20+ items.
    gap_buckets
        Upper-exclusive bounds, in seconds, of the time since the user's previous event; each history
        bucket is split by them (a user without history falls in the last). The components' strengths
        differ between a rating given in the same second as the previous one (a page of ratings submitted
        at once), the next minute, later that day and after days away: on MovieLens-100K the learned
        weights put the sequence models first within a session and co-occurrence and popularity after a
        long absence, and HR@10 went 0.2172 -> 0.2185 (the default split: same second, minute, hour, day
        and longer; a finer split, 1 / 30 / 300 / 3600 / 86400 s, gave 0.2180). Empty: history length
        only.
    reference_size
        Recent positives the per-row normalisation and ranks are computed over (one extra column per
        component score). A larger set ranks the top of the list more finely: with four components 1024
        gave HR@10 0.2157 where 256 gave 0.2149.
    occurrence_window
        Recent positives kept: the distinct ones are the extra training candidates (``"recent"``), their
        counts estimate each candidate's sampling probability q for the logQ correction (``"sampled"``).
    learning_rate
        Adagrad step of the blend weights. The best components change as they learn (the sequence model
        starts from nothing), so the step must be large enough to follow them: on MovieLens-100K 0.2 gave
        HR@10 0.2019 where 0.05 gave 0.1995; with rank features and recent candidates 0.5 gave 0.2130
        where 0.2 gave 0.2149.
    initial_weight
        Starting weight of every feature in every bucket: an unweighted sum of the features.
    compress
        Apply ``sign(z) log(1 + |z|)`` to the standardised scores, so that one component's z of 40 cannot
        drown the others. Off: on MovieLens-100K it changed nothing (HR@10 0.1961 on, 0.1964 off).
    log_components
        Names of components whose scores are non-negative weights (counts, co-occurrence sums): they enter
        as ``log(score + log_floor * mean reference score of the row)`` before standardisation. Such scores
        act like unnormalised probabilities; adding their logs to the other components' logits multiplies
        the evidence (a product of experts) instead of letting a few huge raw values decide. None by
        default: on MovieLens-100K, logs of co-occurrence and popularity lowered HR@10 (0.1948 against
        0.2019).
    log_floor
        Share of the row's mean reference score added before the log: it bounds how far below the
        reference an item the component knows nothing about can fall.
    raw_components
        Names of components whose scores are already log-probabilities up to a per-row constant (a
        softmax-trained model's logits): they enter minus their row's reference mean but unscaled, so the
        blend keeps the component's own confidence (a peaked row stays peaked). None by default: it
        helped the first SASRec, but with its recency bias a standardised SASRec does better on
        MovieLens-100K (HR@10 0.2172 against 0.2161 raw; with gap buckets 0.2185 against 0.2173).
    logq_correction
        With ``training_candidates="sampled"``, subtract log q(c) from each training logit, so the sampled
        softmax estimates the full one (without it the blend learns to weigh popularity down: popular
        negatives are over-represented).
    mask_history_in_loss
        Leave a row's own history items out of its training softmax (they are never recommended).
    feature_kinds
        What each component contributes per candidate (see the module docstring): ``"score"`` (the
        normalised score), ``"log_rank"`` (``-log(1 + rank)`` among the row's reference scores),
        ``"inverse_rank"`` (``1 / (1 + rank)``), ``"top1"``/``"top3"``/``"top10"`` (rank below 1/3/10).
        On MovieLens-100K (two-tower, co-occurrence, popularity): score alone 0.2073; score + log_rank
        0.2101; + top1 + top10 (learning rate 0.5) 0.2081.
    training_candidates
        ``"recent"``: the training softmax also runs over the distinct recent positives (no logQ
        correction: they are all there); ``"sampled"``: only the batch's positives and negatives,
        logQ-corrected.

    components
        Registry names of the blended models (`freshrec.models.registry`); each is built from its own
        section of the model's configuration (``[model.two-tower]``), with its defaults otherwise.

    >>> BlendConfig().history_buckets
    (1, 2, 5, 10, 20)
    """

    components: tuple[str, ...] = ("two-tower", "sasrec", "cooccurrence", "popularity-decayed")
    history_buckets: tuple[int, ...] = (1, 2, 5, 10, 20)
    gap_buckets: tuple[float, ...] = (1.0, 60.0, 3600.0, 86_400.0)
    reference_size: int = 1024
    occurrence_window: int = 4096
    learning_rate: float = 0.2
    initial_weight: float = 1.0
    compress: bool = False
    log_components: tuple[str, ...] = ()
    log_floor: float = 0.01
    raw_components: tuple[str, ...] = ()
    logq_correction: bool = True
    mask_history_in_loss: bool = True
    feature_kinds: tuple[str, ...] = ("score", "log_rank")
    training_candidates: Literal["recent", "sampled"] = "recent"

    def __post_init__(self) -> None:
        bounds = list(self.history_buckets)
        if any(b < 1 for b in bounds) or bounds != sorted(set(bounds)):
            raise ConfigError(
                f"BlendConfig.history_buckets must be strictly increasing positive integers, got {bounds}"
            )
        gaps = list(self.gap_buckets)
        if any(not g > 0 for g in gaps) or gaps != sorted(set(gaps)):
            raise ConfigError(
                f"BlendConfig.gap_buckets must be strictly increasing positive seconds, got {gaps}"
            )
        if not 1 <= self.reference_size <= self.occurrence_window:
            raise ConfigError(
                f"BlendConfig.reference_size must be in [1, occurrence_window={self.occurrence_window}], "
                f"got {self.reference_size}"
            )
        unknown = sorted(set(self.feature_kinds) - set(FEATURE_KINDS))
        if not self.feature_kinds or unknown or len(set(self.feature_kinds)) != len(self.feature_kinds):
            raise ConfigError(
                f"BlendConfig.feature_kinds must be distinct names among {FEATURE_KINDS}, "
                f"got {self.feature_kinds}"
            )
        if self.training_candidates not in ("recent", "sampled"):
            raise ConfigError(
                "BlendConfig.training_candidates must be 'recent' or 'sampled', "
                f"got {self.training_candidates!r}"
            )
        if not self.learning_rate > 0:
            raise ConfigError(f"BlendConfig.learning_rate must be > 0, got {self.learning_rate}")
        names = list(self.components)
        if not names or len(set(names)) != len(names) or "blend" in names:
            raise ConfigError(
                "BlendConfig.components must name one or more distinct registered models other than "
                f"'blend', got {names}"
            )


class BlendedModel(Model):
    """Scores ``sum_f w[f, bucket(history length, gap)] * feature_f`` over the features of component models
    (`BlendConfig.feature_kinds` per component), with the weights learned online by a softmax on each batch
    before the components learn.

    Kinds and values: the blend's own softmax loss is weighted by each event's kind weight, and every
    component gets the same weights; `value` is ignored.

    Parameters
    ----------
    components
        The models to blend, each a `freshrec.models.base.Model` with a distinct ``name``.
    config
        Blend settings.

    >>> from freshrec.models.popularity import PopularityConfig, PopularityModel
    >>> from freshrec.models.cooccurrence import CooccurrenceConfig, CooccurrenceModel
    >>> popularity = PopularityModel(PopularityConfig(capacity=16))
    >>> blend = BlendedModel([popularity, CooccurrenceModel(CooccurrenceConfig(capacity=16))])
    >>> blend.history_length, blend.weights.shape  # (6 lengths x 5 gaps) x (components x feature kinds)
    (20, (30, 4))
    >>> query = Query(np.array([1], np.uint64), np.array([0.0]), np.zeros((1, 20), np.uint64),
    ...               np.full((1, 20), np.nan))
    >>> batch = Interactions(query, np.array([5], np.uint64), np.full(1, np.nan), np.zeros(1, np.int8),
    ...                      np.array([[6, 7]], np.uint64))
    >>> _ = blend.learn(batch)
    >>> blend.score(query, np.array([5, 6], np.uint64)).shape
    (1, 2)
    """

    name = "blend"

    def __init__(self, components: Sequence[Model], config: BlendConfig | None = None) -> None:
        self.config = config = config or BlendConfig()
        self.components = list(components)
        names = [c.name for c in self.components]
        if not names or len(set(names)) != len(names) or "blend" in names:
            raise ConfigError(
                f"BlendedModel components must be one or more models with distinct names other than "
                f"'blend' (the prefix of the blend's own state), got {names}"
            )
        for component in self.components:
            if not isinstance(component, Model):
                raise ConfigError(f"BlendedModel component {component.name!r} is not a Model")
        self._parts = {f"{component.name}.": component for component in self.components}
        self.history_length = max(c.history_length for c in self.components)
        buckets = (len(config.history_buckets) + 1) * (len(config.gap_buckets) + 1)
        self.feature_count = len(self.components) * len(config.feature_kinds)
        self.weights = np.full((buckets, self.feature_count), config.initial_weight, dtype=np.float64)
        self._accumulator = np.zeros_like(self.weights)  # Adagrad's sum of squared gradients
        # Ring of recent positives: [0] next write position, [1] filled entries.
        self._occurrences = np.zeros(config.occurrence_window, dtype=np.uint64)
        self._ring = np.zeros(2, dtype=np.int64)
        self._bounds = np.asarray(config.history_buckets, dtype=np.int64)
        self._gap_bounds = np.asarray(config.gap_buckets, dtype=np.float64)
        self._changed = True  # the first drain reports the initial weights
        self._known_features: _KnownFeatures | None = None

    # ------------------------------------------------------------------ scoring
    def score(self, query: Query, candidate_keys: np.ndarray) -> np.ndarray:
        """float32 [B, C]: the blended normalised component scores (finite whenever the components' are).

        `candidate_keys` is uint64 [C] or [B, C]."""
        return self._blended(self.features(query, candidate_keys), self.history_bucket(query))

    def _blended(self, features: np.ndarray, buckets: np.ndarray) -> np.ndarray:
        """float32 [B, C]: features [B, C, F] weighted by each row's bucket weights."""
        # A batched matrix-vector product: BLAS, twice as fast as the einsum loop.
        return np.matmul(features, self.weights[buckets].astype(np.float32)[:, :, None])[:, :, 0]

    def features(self, query: Query, candidate_keys: np.ndarray) -> np.ndarray:
        """float32 [B, C, K * F]: for component k, feature ``k * F + f`` is the `BlendConfig.feature_kinds`
        entry f of each candidate, relative to the row's reference set (see the module docstring)."""
        candidates = as_keys(np.asarray(candidate_keys), "candidate_keys").reshape(np.shape(candidate_keys))
        n, count = len(query), candidates.shape[-1]
        if n == 0 or count == 0:
            return np.zeros((n, count, self.feature_count), dtype=np.float32)
        known = self._known_features
        if known is not None and known.query is query:
            columns = known.columns_of(candidates)
            if columns is not None:  # the trainer's learning step after its evaluation: nothing to score
                return _gather(known.features, columns)
        # Each distinct key is scored once (the reference repeats popular items and may overlap the
        # candidates), as one shared candidate list: per-row candidate lists [B, C] work with components
        # that only take a shared list.
        reference = self._reference()
        keys, inverse = np.unique(np.concatenate([candidates.reshape(-1), reference]), return_inverse=True)
        columns = inverse[: candidates.size].reshape(candidates.shape)
        if candidates.ndim == 2:  # each row its own candidates: only those cells
            return self._key_features(query, keys, inverse[candidates.size :], columns)
        features = self._key_features(query, keys, inverse[candidates.size :])
        if features.nbytes <= KNOWN_FEATURES_BYTES:
            # Until anything learns, the same query's features do not change: learning reuses them.
            self._known_features = _KnownFeatures(query, keys, features)
        return _gather(features, columns)

    def _key_features(
        self, query: Query, keys: np.ndarray, reference: np.ndarray, cells: np.ndarray | None = None
    ) -> np.ndarray:
        """float32 [B, U, K * F]: the features of each of the sorted distinct `keys`, the reference set
        being the keys at positions `reference` (with repeats); with `cells` (int [B, C] positions among
        the keys), [B, C, K * F] of those cells only."""
        n = len(query)
        columns = len(keys) if cells is None else cells.shape[1]
        out = np.empty((n, columns, self.feature_count), dtype=np.float32)
        kinds = self.config.feature_kinds
        width = len(kinds)
        rows = np.arange(n)[:, None]
        weights = np.bincount(reference, minlength=len(keys)) if cells is None else None
        for k, component in enumerate(self.components):
            # Scores stay float32 (as the components give them); only the per-row statistics over the
            # reference set, a few hundred columns, are summed in float64.
            distinct = np.asarray(component.score(self._component_query(query, component), keys), np.float32)
            if cells is None and component.scores_rows_alike:
                distinct = distinct[:1]  # the first row's features are every row's (written broadcast)
            logged = component.name in self.config.log_components
            ref = distinct[:, reference].astype(np.float64) if len(reference) else None
            scores = distinct if cells is None else distinct[rows, cells]
            if logged:
                scores = scores.astype(np.float64)
                base = scores if ref is None else ref
                floor = self.config.log_floor * np.maximum(base.mean(axis=1, keepdims=True), 0.0) + 1e-30
                scores = np.log(np.maximum(scores, 0.0) + floor)
                ref = None if ref is None else np.log(np.maximum(ref, 0.0) + floor)
            ref = scores.astype(np.float64) if ref is None else ref
            mean = ref.mean(axis=1, keepdims=True)
            std = ref.std(axis=1, keepdims=True)
            # A component that scores every reference item alike (up to float32 rounding of its scores)
            # says nothing about this row: its features are 0 there.
            flat = std <= 1e-5 * np.abs(ref).max(axis=1, keepdims=True) + 1e-30
            centred = scores - mean.astype(scores.dtype)
            if component.name in self.config.raw_components:
                normalised = centred
            else:
                z = centred * np.where(flat, 0.0, 1.0 / np.where(flat, 1.0, std)).astype(scores.dtype)
                normalised = np.sign(z) * np.log1p(np.abs(z)) if self.config.compress else z
            ranks = None
            for f, kind in enumerate(kinds):
                if kind == "score":
                    out[:, :, k * width + f] = normalised
                    continue
                if ranks is None and cells is None and len(reference):
                    # The reference keys are among the scored ones: a sort of each row ranks them all.
                    # Raw component scores are float32, so comparing them as float32 is exact.
                    ranks = _ranks_among_keys(scores if logged else distinct, weights, flat)
                elif ranks is None:
                    ranks = _reference_ranks(scores, ref, flat)
                out[:, :, k * width + f] = _rank_feature(kind, ranks, ref.shape[1])
        return out

    def history_bucket(self, query: Query) -> np.ndarray:
        """int64 [B]: each row's weight bucket, ``length bucket * (len(gap_buckets) + 1) + gap bucket``
        (see `BlendConfig.history_buckets` and `BlendConfig.gap_buckets`)."""
        lengths = (np.asarray(query.history_keys) != NO_KEY).sum(axis=1)
        by_length = np.searchsorted(self._bounds, lengths, side="right")
        if not len(self._gap_bounds):
            return by_length
        times = np.asarray(query.history_times, dtype=np.float64)
        last = times[:, -1] if times.shape[1] else np.full(len(query), np.nan)
        gap = np.asarray(query.timestamps, dtype=np.float64) - last
        # No previous event: the last gap bucket (a long absence).
        by_gap = np.searchsorted(self._gap_bounds, np.where(np.isfinite(gap), gap, np.inf), side="right")
        return by_length * (len(self._gap_bounds) + 1) + by_gap

    def _reference(self) -> np.ndarray:
        """The most recent `reference_size` positives (fewer before the stream has filled them)."""
        filled, position = int(self._ring[1]), int(self._ring[0])
        size = min(self.config.reference_size, filled)
        window = len(self._occurrences)
        return self._occurrences[(position - size + np.arange(size)) % window]

    @staticmethod
    def _component_query(query: Query, component: Model) -> Query:
        length = component.history_length
        if length == query.history_length:
            return query
        if length == 0:
            return Query.without_history(query.user_keys, query.timestamps)
        return Query(
            query.user_keys,
            query.timestamps,
            query.history_keys[:, -length:],
            query.history_times[:, -length:],
        )

    # ------------------------------------------------------------------ learning
    def learn(self, batch: Interactions) -> LearnStats:
        """One Adagrad step of the blend weights on the batch (components not yet updated by it), then
        every component's own `learn`. `LearnStats.loss` is the blend's sampled-softmax loss."""
        n = len(batch)
        if n == 0:
            return LearnStats()
        loss = self._learn_weights(batch)
        self._known_features = None  # the components learn now: their scores change
        extra: dict[str, float] = {}
        for component in self.components:
            stats = component.learn(batch)
            if stats.loss is not None:
                extra[f"{component.name}.loss"] = stats.loss
        self._remember(as_keys(batch.item_keys, "item_keys"))
        self._changed = True
        return LearnStats(loss=loss, extra=extra)

    def _learn_weights(self, batch: Interactions) -> float:
        """One Adagrad step of the weights on the batch's softmax over its candidates; returns the loss.

        The logits are linear in the weights of each row's bucket, so the gradient has a closed form,
        ``sum_c (softmax_c - onehot_c) * feature_c`` per row, summed into its bucket: two passes over the
        features, no autograd graph."""
        positives = as_keys(batch.item_keys, "item_keys")
        negatives = as_keys(batch.negative_keys, "negative_keys").reshape(-1)
        recent = self.config.training_candidates == "recent"
        pool = [positives, negatives] + ([self._occurrences[: int(self._ring[1])]] if recent else [])
        candidates = np.unique(np.concatenate(pool))
        features = self.features(batch.query, candidates)  # float32 [B, C, F]
        buckets = self.history_bucket(batch.query)
        n = len(batch)
        logits = self._blended(features, buckets)
        # The recent items are all in the softmax, not sampled: there is no sampling bias to correct.
        if self.config.logq_correction and not recent:
            logits -= self._log_sampling_probability(candidates)
        if self.config.mask_history_in_loss:
            logits[self._history_mask(batch, candidates)] = _MASKED
        rows, targets = np.arange(n), np.searchsorted(candidates, positives)
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        total = probabilities.sum(axis=1)
        per_event = np.log(total) - logits[rows, targets]
        # d(mean of weight * loss) / d(logit) = weight * (softmax - onehot) / B.
        if batch.weights is None:
            loss = float(np.mean(per_event))
            probabilities /= total[:, None] * n
            probabilities[rows, targets] -= 1.0 / n
        else:
            loss = float(np.mean(per_event * batch.weights))
            scale = batch.weights.astype(np.float32) / np.float32(n)
            probabilities *= (scale / total)[:, None]
            probabilities[rows, targets] -= scale
        row_grad = np.matmul(probabilities[:, None, :], features)[:, 0, :].astype(np.float64)  # [B, F]
        grad = np.zeros_like(self.weights)
        np.add.at(grad, buckets, row_grad)
        self._accumulator += grad * grad
        self.weights -= self.config.learning_rate * grad / (np.sqrt(self._accumulator) + 1e-8)
        return loss

    def _log_sampling_probability(self, candidates: np.ndarray) -> np.ndarray:
        """float32 log(1 + occurrences among the recent positives) of each candidate: log q up to a
        constant (which the softmax ignores); the 1 keeps new items finite."""
        filled = int(self._ring[1])
        recent = np.sort(self._occurrences[:filled])
        counts = np.searchsorted(recent, candidates, side="right") - np.searchsorted(recent, candidates)
        return np.log1p(counts).astype(np.float32)

    @staticmethod
    def _history_mask(batch: Interactions, candidates: np.ndarray) -> np.ndarray:
        history = as_keys(np.asarray(batch.query.history_keys), "history_keys").reshape(len(batch), -1)
        columns = np.minimum(np.searchsorted(candidates, history), len(candidates) - 1)
        hit = (history != NO_KEY) & (candidates[columns] == history)
        hit &= history != as_keys(batch.item_keys)[:, None]
        mask = np.zeros((len(batch), len(candidates)), dtype=bool)
        event, position = np.nonzero(hit)
        mask[event, columns[event, position]] = True
        return mask

    def _remember(self, positives: np.ndarray) -> None:
        window = len(self._occurrences)
        positives = positives[-window:]
        position = int(self._ring[0])
        self._occurrences[(position + np.arange(len(positives))) % window] = positives
        self._ring[0] = (position + len(positives)) % window
        self._ring[1] = min(window, int(self._ring[1]) + len(positives))

    # ------------------------------------------------------------------ state
    def _own_state(self) -> dict[str, np.ndarray]:
        return {
            "blend.weights": self.weights.copy(),
            "blend.accumulator": self._accumulator.copy(),
            "blend.occurrences": self._occurrences.copy(),
            "blend.ring": self._ring.copy(),
        }

    def state_dict(self) -> State:
        """Each component's `state_dict` with its name as prefix (``sasrec.items.weights``...) and the
        blend's weights, Adagrad state and recent positives (``blend.*``)."""
        state = self._own_state()
        state.update(state_of_parts(self._parts))
        return state

    def load_state_dict(self, state: State) -> None:
        """Restore `state_dict` output of a blend of the same components and config."""
        load_parts(self._parts, state)
        self._load_own(state)
        self._known_features = None
        self._changed = False

    def _load_own(self, state: State) -> None:
        hint = "build it with the components and history_buckets it was saved with"
        self.weights = array_like(state, "blend.weights", self.weights, hint)
        self._accumulator = np.asarray(state["blend.accumulator"], dtype=np.float64).copy()
        self._occurrences = np.asarray(state["blend.occurrences"], dtype=np.uint64).copy()
        self._ring = np.asarray(state["blend.ring"], dtype=np.int64).copy()

    def table_sizes(self) -> dict[str, dict[str, int]]:
        """Every component's tables, named ``component.table``."""
        return {
            f"{component.name}.{name}": sizes
            for component in self.components
            for name, sizes in component.table_sizes().items()
        }

    def drain_changes(self) -> StateChanges:
        """Every component's `drain_changes` with its prefix, and the blend's own arrays replaced whole
        (a few kB) when a batch was learned since the previous call."""
        changes = drain_parts(self._parts)
        if self._changed:
            changes.replaced.update(self._own_state())
            self._changed = False
        return changes

    def apply_changes(self, changes: StateChanges) -> None:
        """Apply another instance's `drain_changes` in place, component by component."""
        apply_parts(self._parts, changes)
        self._known_features = None
        if "blend.weights" in changes.replaced:
            self._load_own(changes.replaced)


def _reference_ranks(scores: np.ndarray, reference: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """float64 [B, C]: how many of the row's reference scores beat each candidate's (ties count half).

    Rows where the component is flat get rank 0 everywhere (a constant per row, which ranks nothing).
    One binary search per candidate (the costly part): the reference scores tied with the one found
    are counted from the sorted row's runs of equal values."""
    ordered = np.ascontiguousarray(np.sort(reference, axis=1))
    size = ordered.shape[1]
    below = torch.searchsorted(torch.from_numpy(ordered), torch.from_numpy(np.ascontiguousarray(scores)))
    below = below.numpy()
    # run_end[i]: one past the last reference score equal to ordered[i] (its run of ties).
    last = np.ones(ordered.shape, dtype=bool)
    last[:, :-1] = ordered[:, 1:] != ordered[:, :-1]
    positions = np.broadcast_to(np.arange(1, size + 1), ordered.shape)
    run_end = np.minimum.accumulate(np.where(last, positions, size)[:, ::-1], axis=1)[:, ::-1]
    found = np.minimum(below, size - 1) + size * np.arange(len(ordered))[:, None]  # in the raveled rows
    tied = (below < size) & (ordered.ravel()[found] == scores)
    not_above = np.where(tied, run_end.ravel()[found], below)
    ranks = size - 0.5 * (below + not_above)
    return np.where(flat, 0.0, ranks)


def _ranks_among_keys(scores: np.ndarray, weights: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """float32 [B, U]: `_reference_ranks` when the reference set is made of the scored keys themselves,
    key u appearing `weights[u]` times (int [U]): one sort of each row, no binary search. A key's rank is
    the weight of the keys scored above it plus half the weight of those tied with it."""
    n, size = scores.shape
    order, ordered = _sorted_order(scores)  # int64 [B, U]: the keys in score order, and comparable scores
    cumulative = np.cumsum(weights[order], axis=1).ravel()  # weight at or below each sorted position
    # Runs of tied scores, numbered over the raveled rows (a row's first position opens a run).
    first = np.ones((n, size), dtype=bool)
    np.not_equal(ordered[:, 1:], ordered[:, :-1], out=first[:, 1:])
    first = first.ravel()
    run = np.cumsum(first) - 1  # run of each sorted position
    ends = np.append(np.flatnonzero(first)[1:], n * size) - 1  # last position of each run
    not_above = cumulative[ends]  # weight at or below the run
    below = np.empty_like(not_above)  # weight under the run: the previous run's, 0 for a row's first
    below[1:] = not_above[:-1]
    below[run[size * np.arange(n)]] = 0
    # Half-integers below 2**23: exact in float32.
    per_run = (weights.sum() - 0.5 * (below + not_above)).astype(np.float32)
    ranks = np.empty(n * size, dtype=np.float32)
    ranks[(order + size * np.arange(n)[:, None]).ravel()] = per_run[run]
    return np.where(flat, np.float32(0.0), ranks.reshape(n, size))


def _sorted_order(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int64 [B, U] twice: each row's column order by ascending score, and the row's scores in that
    order as integers that compare as the scores do (equal exactly when the scores are).

    float32 scores are sorted as one int64 per cell, the score's order-preserving bits above its column:
    a plain value sort, which numpy runs several times faster than an argsort."""
    if scores.dtype != np.float32 or scores.shape[1] >= 2**31:
        order = np.argsort(scores, axis=1)
        ordered = np.take_along_axis(scores, order, axis=1)
        return order, np.unique(ordered, return_inverse=True)[1].reshape(ordered.shape)
    bits = (scores + np.float32(0.0)).view(np.int32)  # + 0.0 makes -0.0 the same bits as 0.0
    # IEEE floats order as sign-magnitude integers: flipping the magnitude of negative ones makes them
    # order as two's-complement integers.
    comparable = bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))
    packed = (comparable.astype(np.int64) << 32) | np.arange(scores.shape[1], dtype=np.int64)
    packed.sort(axis=1)
    return packed & 0xFFFFFFFF, packed >> 32


def _gather(features: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """float32 [B, C, F]: the `features` [B, U, F] of each row's `columns` (int [C], shared, or [B, C]).

    Columns that are every key in order (an evaluation of the whole catalogue, the reference set
    among it) are a read-only view of `features`, not a copy."""
    if columns.ndim == 1:
        if len(columns) == features.shape[1] and np.array_equal(columns, np.arange(len(columns))):
            shared = features.view()
            shared.flags.writeable = False
            return shared
        return np.take(features, columns, axis=1)
    return np.take_along_axis(features, columns[:, :, None], axis=1)


#: Largest feature array the blend keeps for the learning step that follows an evaluation (bigger ones,
#: a large catalogue ranked for many events, are computed again instead of doubling the peak memory).
KNOWN_FEATURES_BYTES = 256 * 2**20


@dataclass
class _KnownFeatures:
    """The features of sorted distinct `keys` for the rows of `query`, valid until anything learns."""

    query: Query
    keys: np.ndarray
    features: np.ndarray

    def columns_of(self, candidates: np.ndarray) -> np.ndarray | None:
        """Positions of `candidates` among the keys (same shape), or None if any is not among them."""
        columns = np.minimum(np.searchsorted(self.keys, candidates), len(self.keys) - 1)
        return columns if np.array_equal(self.keys[columns], candidates) else None


def _rank_feature(kind: str, ranks: np.ndarray, size: int) -> np.ndarray:
    """[B, C] of the ranks' dtype: the `BlendConfig.feature_kinds` entry `kind` (not "score") of
    reference ranks, which are half-integers from 0 to the reference `size`.

    Those are few values: the feature of each is computed once, into a table indexed by twice the rank
    (a logarithm per cell costs several times the lookup)."""
    halves = np.arange(2 * size + 1, dtype=ranks.dtype) / ranks.dtype.type(2)
    if kind == "log_rank":
        table = -np.log1p(halves)
    elif kind == "inverse_rank":
        table = 1.0 / (1.0 + halves)
    else:
        table = (halves < {"top1": 1.0, "top3": 3.0, "top10": 10.0}[kind]).astype(ranks.dtype)
    return table[(2 * ranks).astype(np.intp)]
