"""The publish gate: a candidate model reaches users only if it is not worse than the one they already get.

Both the candidate (the trainer's model) and the serving version are scored on the most recent events the
candidate has not trained on yet (the held-back window), with the same ranking and exclusions as the
prequential evaluation. The candidate passes if its primary metric is within `tolerance` of the serving
version's, and its last loss is finite. Every decision is kept (bounded) for `/versions` and `/metrics`.

The newest window alone cannot see noise: when events turn unpredictable, every model scores about zero on
them and any candidate would pass, while learning from them ruins it for the users whose behaviour did not
change. Comparing against an older, fixed window instead holds every candidate under natural drift (the
serving version fits the past better; measured: publishing stopped after 2,048 events). So the gate also
watches the *level* of quality: a running mean of HR over published windows. When the serving version's
HR on a window collapses far below that level (the input became less predictable, not the candidate
worse), the candidate must show that it learned something: beat the serving version by a clear margin. A
real shift of behaviour is learnable, so a candidate that trained on its first windows wins and is
published; noise is not, so both stay near zero and the candidate is held until clean data returns.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from freshrec.evaluation.prequential import rank_candidates
from freshrec.features.catalogue import CandidateSet
from freshrec.interactions import Query
from freshrec.models.base import Model


@dataclass
class GateConfig:
    """When a candidate may replace the serving version.

    Parameters
    ----------
    tolerance
        Largest allowed drop of the primary metric (absolute: 0.01 = one point of HR@K).
    k
        Cut-off of the primary metric, HR@K on the held-back window.
    min_window_events
        Below this many held-back events the figures are noise: the candidate passes on a finite loss alone.
    history
        Decisions remembered for display.
    collapse_ratio
        The window counts as collapsed when the serving version's HR falls below this fraction of the
        level (and significantly: by more than `z` standard errors). 0 turns the check off.
    collapse_margin
        On a collapsed window the candidate must beat the serving version by this much HR, and by `z`
        standard errors of the window, to be published.
    level_windows
        The level is a running mean of the published windows' HR over about this many windows: slow
        enough that a noise burst does not drag it down, fast enough to follow natural drift.
    warmup_windows
        Published windows before the level is trusted (before that, no collapse check).
    z
        Standard errors that make a difference significant (3: about one false alarm in 700 windows).
    """

    tolerance: float = 0.01
    k: int = 10
    min_window_events: int = 64
    history: int = 100
    collapse_ratio: float = 0.5
    collapse_margin: float = 0.02
    level_windows: int = 20
    warmup_windows: int = 5
    z: float = 3.0


@dataclass
class GateDecision:
    """One verdict of the gate, with the figures it was made on."""

    published: bool
    reason: str
    candidate_hr: float
    serving_hr: float
    window_events: int
    window_start: float
    window_end: float
    decided_at: float = field(default_factory=time.time)
    version: int | None = None

    def as_dict(self) -> dict[str, object]:
        """Plain JSON values; a figure that was not measured (no window) is None, never NaN."""
        return {
            "published": self.published,
            "reason": self.reason,
            "candidate_hr": _finite_or_none(self.candidate_hr),
            "serving_hr": _finite_or_none(self.serving_hr),
            "window_events": self.window_events,
            "window_start": _finite_or_none(self.window_start),
            "window_end": _finite_or_none(self.window_end),
            "decided_at": self.decided_at,
            "version": self.version,
        }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def hit_rate(model: Model, query: Query, item_keys: np.ndarray, candidates: CandidateSet, k: int) -> float:
    """HR@k of `model` on held-back events ranked against `candidates` (events whose item is not
    rankable count as misses, as in the prequential evaluation)."""
    if len(item_keys) == 0:
        return 0.0
    return hit_rate_of_ranks(rank_candidates(model, query, candidates), k)


def hit_rate_of_ranks(ranks: np.ndarray, k: int) -> float:
    """The fraction of ranks in [0, k): -1 (not rankable) is a miss."""
    return float(np.mean((ranks >= 0) & (ranks < k))) if len(ranks) else 0.0


@dataclass
class ScoredBatch:
    """Events of a held-back micro-batch as the prequential evaluation ranked them with the candidate model
    (all of the batch, or the sample `TrainerConfig.evaluate_fraction` asks for).

    The gate reads the candidate's HR from `ranks` and scores only the serving version again, with the
    same candidates (targets, exclusions) and query, so both are judged alike on the same events and the
    candidate is scored once.
    """

    candidates: CandidateSet
    ranks: np.ndarray
    query: Query

    def rescore(self, model: Model, k: int) -> float:
        """HR@k of another `model` on the same events (0 when none was ranked)."""
        return hit_rate_of_ranks(rank_candidates(model, self.query, self.candidates), k)


class PublishGate:
    """Decides, and remembers its decisions.

    >>> gate = PublishGate(GateConfig(tolerance=0.01, min_window_events=10))
    >>> gate.decide(candidate_hr=0.20, serving_hr=0.205, window_events=500, loss=0.3).published
    True
    >>> decision = gate.decide(candidate_hr=0.10, serving_hr=0.20, window_events=500, loss=0.3)
    >>> decision.published, decision.reason
    (False, 'HR@10 0.1000 is 0.1000 below serving 0.2000 (tolerance 0.0100)')
    >>> gate.decide(0.3, 0.2, 500, loss=float("nan")).reason
    'non-finite training loss: nan'
    """

    def __init__(self, config: GateConfig | None = None) -> None:
        self.config = config or GateConfig()
        self.decisions: deque[GateDecision] = deque(maxlen=self.config.history)
        self.published = 0
        self.held = 0
        #: Running mean of HR on published windows (NaN until `warmup_windows` were published).
        self.level = float("nan")
        self._level_windows = 0
        self._running_level = 0.0

    def decide(
        self,
        candidate_hr: float,
        serving_hr: float,
        window_events: int,
        loss: float | None = None,
        *,
        window_start: float = float("nan"),
        window_end: float = float("nan"),
    ) -> GateDecision:
        """The verdict for a candidate; `loss` is its last training loss (None for count-based models)."""
        k, tolerance = self.config.k, self.config.tolerance
        if loss is not None and not math.isfinite(loss):
            passed, reason = False, f"non-finite training loss: {loss}"
        elif window_events < self.config.min_window_events:
            passed, reason = (
                True,
                f"window of {window_events} events is below {self.config.min_window_events}",
            )
        elif self._collapsed(serving_hr, window_events) and not self._learned(
            candidate_hr, serving_hr, window_events
        ):
            passed = False
            reason = (
                f"window collapsed: serving HR@{k} {serving_hr:.4f} vs level {self.level:.4f}, and the "
                f"candidate's {candidate_hr:.4f} is no clear gain (noise is not learnable)"
            )
        elif candidate_hr + tolerance < serving_hr:
            drop = serving_hr - candidate_hr
            passed = False
            reason = (
                f"HR@{k} {candidate_hr:.4f} is {drop:.4f} below serving {serving_hr:.4f} "
                f"(tolerance {tolerance:.4f})"
            )
        else:
            passed = True
            reason = f"HR@{k} {candidate_hr:.4f} vs serving {serving_hr:.4f} (tolerance {tolerance:.4f})"
        figures = (candidate_hr, serving_hr, window_events, window_start, window_end)
        decision = GateDecision(passed, reason, *figures)
        self.decisions.append(decision)
        if passed:
            self.published += 1
            if window_events >= self.config.min_window_events:
                self._update_level(candidate_hr)
        else:
            self.held += 1
        return decision

    def _collapsed(self, serving_hr: float, window_events: int) -> bool:
        ratio = self.config.collapse_ratio
        if ratio <= 0 or not math.isfinite(self.level) or not math.isfinite(serving_hr):
            return False
        error = math.sqrt(self.level * (1.0 - self.level) / window_events)
        return serving_hr < ratio * self.level and serving_hr < self.level - self.config.z * error

    def _learned(self, candidate_hr: float, serving_hr: float, window_events: int) -> bool:
        p = max(serving_hr, 1.0 / window_events)
        error = math.sqrt(p * (1.0 - p) / window_events)
        margin = max(self.config.collapse_margin, self.config.z * error)
        return candidate_hr >= serving_hr + margin

    def _update_level(self, hr: float) -> None:
        # A mean over the first windows, then an exponential mean over about `level_windows`.
        self._level_windows += 1
        weight = 1.0 / min(self._level_windows, self.config.level_windows)
        self._running_level += weight * (hr - self._running_level)  # the first window: weight 1
        if self._level_windows >= self.config.warmup_windows:
            self.level = self._running_level
