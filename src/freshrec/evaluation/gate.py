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

A promotion (many users pushed onto one item) is learnable, so it would pass that test: the gate also
watches the share of the window's events that go to its most frequent item, against a running level of
that share, and holds a window far above it with no escape. A candidate held on such a *suspect* window
(concentrated, or collapsed without a gain) has learned from it, so it is quarantined: when the input looks
normal again it is not published but restarted from the serving version (`GateDecision.rebase`), and the
next window judges the restarted candidate. Publishing thus resumes on the second full window of normal
input after a burst.

Noise and flipped choices (a burst on the items users do not choose) are learnable too, at least by a
model with item parameters, and spread over many items: the gate also watches the share of the window's
events on *rare* items (outside the head of recent events, `publishing.publisher`), against its running
level, and holds a window far above it like a concentrated one.
"""

from __future__ import annotations

import dataclasses
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
    concentration_ratio
        The window counts as concentrated when the share of its events that go to its most frequent item
        exceeds this multiple of the level of that share (and by `z` standard errors): a share no natural
        window gives one item (docs/decisions.md, "Poison guard"). Held without the collapse check's
        escape, since a promotion is learnable. 0 turns the check off.
    rare_ratio
        The window counts as a burst on rare items when the share of its events on items outside the head
        of recent events exceeds this multiple of the level of that share (and by `z` standard errors):
        noise and flipped choices put most of a burst there, natural drift a few new items at a time.
        Suspect like a concentrated window. 0 turns the check off.
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
    concentration_ratio: float = 3.0
    rare_ratio: float = 3.0


@dataclass
class GateDecision:
    """One verdict of the gate, with the figures it was made on.

    Attributes
    ----------
    top_item_share
        Share of the window's events that went to its most frequent item (NaN when not measured).
    rare_item_share
        Share of the window's events on items outside the head of recent events (NaN when not measured).
    suspect
        The window's input looked poisoned (concentrated, or collapsed without a learnable gain): the
        candidate that learned from it is quarantined.
    rebase
        The quarantined candidate met normal input again: the publisher restarts it from the serving
        version instead of publishing what it learned from the suspect windows.
    """

    published: bool
    reason: str
    candidate_hr: float
    serving_hr: float
    window_events: int
    window_start: float
    window_end: float
    decided_at: float = field(default_factory=time.time)
    version: int | None = None
    top_item_share: float = float("nan")
    rare_item_share: float = float("nan")
    suspect: bool = False
    rebase: bool = False

    def as_dict(self) -> dict[str, object]:
        """Plain JSON values; a figure that was not measured (no window) is None, never NaN."""
        return {
            "published": self.published,
            "reason": self.reason,
            "candidate_hr": finite_or_none(self.candidate_hr),
            "serving_hr": finite_or_none(self.serving_hr),
            "window_events": self.window_events,
            "window_start": finite_or_none(self.window_start),
            "window_end": finite_or_none(self.window_end),
            "decided_at": self.decided_at,
            "version": self.version,
            "top_item_share": finite_or_none(self.top_item_share),
            "rare_item_share": finite_or_none(self.rare_item_share),
            "suspect": self.suspect,
            "rebase": self.rebase,
        }


def finite_or_none(value: float) -> float | None:
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
        return hit_rate_of_ranks(self.ranks_by(model), k)

    def ranks_by(self, model: Model) -> np.ndarray:
        """Each event's target rank under another `model` (-1: not rankable)."""
        return rank_candidates(model, self.query, self.candidates)


@dataclass
class RunningLevel:
    """A mean over the first `windows` values, then an exponential mean over about `windows`: slow enough
    that a burst does not drag it far, fast enough to follow drift. NaN until `warmup` values were added.

    >>> level = RunningLevel(windows=2, warmup=2)
    >>> level.add(1.0); level.value
    nan
    >>> level.add(3.0); level.value
    2.0
    >>> level.add(4.0); level.value  # weight 1/2 from now on
    3.0
    """

    windows: int
    warmup: int = 1
    count: int = 0
    mean: float = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.mean += (value - self.mean) / min(self.count, self.windows)  # the first value: weight 1

    @property
    def value(self) -> float:
        return self.mean if self.count >= self.warmup else float("nan")


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
        self.config = config = config or GateConfig()
        self.decisions: deque[GateDecision] = deque(maxlen=config.history)
        self.published = 0
        self.held = 0
        #: Suspect windows the candidate learned from since it was last published or restarted.
        self.quarantined = 0
        #: Quarantined candidates restarted from the serving version.
        self.rebases = 0
        self._hr_level = RunningLevel(config.level_windows, config.warmup_windows)
        self._share_level = RunningLevel(config.level_windows, config.warmup_windows)
        self._rare_level = RunningLevel(config.level_windows, config.warmup_windows)
        self._paused_events = 0
        self._pause_reason = ""

    @property
    def level(self) -> float:
        """Running mean of HR on published windows (NaN until `warmup_windows` were published)."""
        return self._hr_level.value

    @property
    def concentration_level(self) -> float:
        """Running mean of the top item's share on published windows (NaN until `warmup_windows`)."""
        return self._share_level.value

    @property
    def rare_level(self) -> float:
        """Running mean of the rare items' share on published windows (NaN until `warmup_windows`)."""
        return self._rare_level.value

    def pause(self, events: int, reason: str) -> None:
        """Hold every candidate until windows of `events` more events were judged (a cool-down)."""
        self._paused_events, self._pause_reason = max(int(events), 0), reason

    def forget_rare_level(self) -> None:
        """Start the rare items' level afresh (the counts it was measured against were lost)."""
        self._rare_level = RunningLevel(self.config.level_windows, self.config.warmup_windows)

    def state_dict(self) -> dict[str, object]:
        """The counters, levels, quarantine and cool-down as plain JSON values (a trainer checkpoint
        records them: a trainer restarted mid-burst must not forget that its candidate is quarantined, nor
        judge without a level for its first windows)."""
        return {
            "published": self.published,
            "held": self.held,
            "quarantined": self.quarantined,
            "rebases": self.rebases,
            "hr_level": dataclasses.asdict(self._hr_level),
            "share_level": dataclasses.asdict(self._share_level),
            "rare_level": dataclasses.asdict(self._rare_level),
            "paused_events": self._paused_events,
            "pause_reason": self._pause_reason,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Take back what `state_dict` returned."""
        self.published, self.held = int(state["published"]), int(state["held"])  # type: ignore[arg-type]
        self.quarantined, self.rebases = int(state["quarantined"]), int(state["rebases"])  # type: ignore[arg-type]
        self._hr_level = RunningLevel(**state["hr_level"])  # type: ignore[arg-type]
        self._share_level = RunningLevel(**state["share_level"])  # type: ignore[arg-type]
        self._rare_level = RunningLevel(**state["rare_level"])  # type: ignore[arg-type]
        self._paused_events = int(state["paused_events"])  # type: ignore[arg-type]
        self._pause_reason = str(state["pause_reason"])

    def decide(
        self,
        candidate_hr: float,
        serving_hr: float,
        window_events: int,
        loss: float | None = None,
        *,
        window_start: float = float("nan"),
        window_end: float = float("nan"),
        top_item_share: float = float("nan"),
        rare_item_share: float = float("nan"),
    ) -> GateDecision:
        """The verdict for a candidate; `loss` is its last training loss (None for count-based models),
        `top_item_share` the share of the window's events that went to its most frequent item and
        `rare_item_share` the share on items outside the head of recent events."""
        k, tolerance, minimum = self.config.k, self.config.tolerance, self.config.min_window_events
        suspect = rebase = False
        if loss is not None and not math.isfinite(loss):
            passed, reason = False, f"non-finite training loss: {loss}"
        elif self._paused_events > 0:
            passed, reason = False, f"{self._pause_reason}; paused for {self._paused_events} more events"
            self._paused_events = max(self._paused_events - window_events, 0)
        elif window_events < minimum:
            passed = not self.quarantined  # a small window cannot show that the input is normal again
            reason = f"window of {window_events} events is below {minimum}"
            if self.quarantined:
                reason += f": the candidate stays quarantined after {self.quarantined} suspect windows"
        elif self._concentrated(top_item_share, window_events):
            passed, suspect = False, True
            reason = (
                f"window concentrated: its top item has {top_item_share:.3f} of the events vs a level of "
                f"{self.concentration_level:.3f} (a promotion is learnable: no gain clears it)"
            )
        elif self._above(rare_item_share, self.rare_level, self.config.rare_ratio, window_events):
            passed, suspect = False, True
            reason = (
                f"window on rare items: {rare_item_share:.3f} of its events vs a level of "
                f"{self.rare_level:.3f} (noise or flipped choices)"
            )
        elif (collapsed := self._collapsed(serving_hr, window_events)) and not self._learned(
            candidate_hr, serving_hr, window_events
        ):
            passed, suspect = False, True
            reason = (
                f"window collapsed: serving HR@{k} {serving_hr:.4f} vs level {self.level:.4f}, and the "
                f"candidate's {candidate_hr:.4f} is no clear gain (noise is not learnable)"
            )
        elif self.quarantined and not collapsed:
            passed, rebase = False, True
            reason = (
                f"the candidate learned from {self.quarantined} suspect windows and the input is normal "
                "again: it restarts from the serving version"
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
        decision = GateDecision(
            passed,
            reason,
            *figures,
            top_item_share=top_item_share,
            rare_item_share=rare_item_share,
            suspect=suspect,
            rebase=rebase,
        )
        self.decisions.append(decision)
        if passed:
            self.published += 1
            self.quarantined = 0
            if window_events >= minimum:
                self._hr_level.add(candidate_hr)
                if math.isfinite(top_item_share):
                    self._share_level.add(top_item_share)
                if math.isfinite(rare_item_share):
                    self._rare_level.add(rare_item_share)
        else:
            self.held += 1
            self.quarantined += suspect
            if rebase:
                self.quarantined = 0
                self.rebases += 1
        return decision

    def _collapsed(self, serving_hr: float, window_events: int) -> bool:
        ratio = self.config.collapse_ratio
        if ratio <= 0 or not math.isfinite(self.level) or not math.isfinite(serving_hr):
            return False
        level = self.level
        return serving_hr < ratio * level and serving_hr < level - self._error(level, window_events)

    def _concentrated(self, share: float, window_events: int) -> bool:
        return self._above(share, self.concentration_level, self.config.concentration_ratio, window_events)

    def _above(self, share: float, level: float, ratio: float, window_events: int) -> bool:
        """Whether a window's `share` is over `ratio` times its `level` and significantly above it."""
        if ratio <= 0 or not math.isfinite(level) or not math.isfinite(share):
            return False
        return share > ratio * level and share > level + self._error(level, window_events)

    def _error(self, p: float, window_events: int) -> float:
        """`z` standard errors of a share `p` measured on a window."""
        return self.config.z * math.sqrt(p * (1.0 - p) / window_events)

    def _learned(self, candidate_hr: float, serving_hr: float, window_events: int) -> bool:
        p = max(serving_hr, 1.0 / window_events)
        margin = max(self.config.collapse_margin, self._error(p, window_events))
        return candidate_hr >= serving_hr + margin
