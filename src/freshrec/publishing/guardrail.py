"""The guardrail: after versions are published, watch what users get against the last version trusted, and
ask for an automatic rollback when it is significantly worse (Ekko's rollback of SLO-detrimental updates).

The publish gate judges a candidate before it ships; some poisoned versions still get out (a learnable
burst the gate's checks do not see, the last micro-batch before a publish, which no window judged). The
guardrail keeps a copy of a *trusted* version and scores it on the events the trainer evaluates anyway,
next to the serving version. Every `GuardrailConfig.watch_events` it compares the two on the same events:
- the serving version is worse by more than the gate's tolerance and by `GateConfig.z` standard errors of
  the paired difference: roll back to the trusted version;
- otherwise, when the input of the watch looked normal, the serving version becomes the trusted one: a
  version earns trust on normal input only, so a burst cannot vouch for what it taught. Normal means that
  no gate window in the watch was suspect and that the watch's HR is not significantly (z standard errors)
  below the guardrail's own level (a running mean over trusted watches), so that the guardrail holds its
  trusted copy through a burst even when the gate's checks are off or its windows too small to judge.

It decides and keeps figures; the publisher acts (rolls the store back, resets its models, pauses the gate
for the cool-down). It never touches the store itself.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

from freshrec.evaluation.gate import GateConfig, RunningLevel, ScoredBatch
from freshrec.models.base import Model


@dataclass
class GuardrailConfig:
    """When a published version is rolled back automatically.

    Parameters
    ----------
    enabled
        Keep a trusted copy and watch (costs a third copy of the model and a third ranking of each
        evaluated event while the serving version differs from the trusted one).
    watch_events
        Evaluated events per comparison of the serving and the trusted version. A drop must exceed the
        gate's `tolerance` and its `z` standard errors of the paired difference to roll back.
    cooldown_events
        After an automatic rollback, the gate holds every candidate for this many evaluated events (the
        restarted candidate learns meanwhile), so a burst still running cannot flap versions in and out.
    level_watches
        The level is a running mean of the HR of trusted watches over about this many watches.
    max_untrusted_watches
        After this many watches in a row below the level, the level starts afresh: the input got harder
        for good (a new regime, not a burst), and a trusted copy that never moves would stop protecting.
        It bounds the length of a burst that the level alone can hold trust through.
    history
        Verdicts remembered for the status document.
    """

    enabled: bool = True
    watch_events: int = 1024
    cooldown_events: int = 1024
    level_watches: int = 20
    max_untrusted_watches: int = 16
    history: int = 20


@dataclass
class GuardrailVerdict:
    """One comparison of the serving version with the trusted one."""

    action: Literal["rollback", "trust", "keep"]
    reason: str
    serving_hr: float
    trusted_hr: float
    events: int
    serving_version: int
    trusted_version: int

    def as_dict(self) -> dict[str, object]:
        return {
            "action": self.action,
            "reason": self.reason,
            "serving_hr": self.serving_hr,
            "trusted_hr": self.trusted_hr,
            "events": self.events,
            "serving_version": self.serving_version,
            "trusted_version": self.trusted_version,
        }


class Guardrail:
    """Watches the serving version against a trusted copy.

    Parameters
    ----------
    trusted
        The version trusted at the start (the guardrail keeps its own copy).
    version
        Its number in the store.
    gate
        The publish gate's settings: its cut-off K, tolerance and significance `z` apply here too.
    """

    def __init__(
        self,
        trusted: Model,
        version: int,
        config: GuardrailConfig | None = None,
        gate: GateConfig | None = None,
    ) -> None:
        self.config = config or GuardrailConfig()
        self.gate = gate or GateConfig()
        self.k = self.gate.k
        self.trusted = copy.deepcopy(trusted)
        self.trusted_version = version
        self.rollbacks = 0
        self.verdicts: deque[GuardrailVerdict] = deque(maxlen=self.config.history)
        self._suspect = False
        self._level = RunningLevel(self.config.level_watches, _WARMUP_WATCHES)
        self._untrusted = 0  # watches in a row below the level
        self._reset_watch()

    def _reset_watch(self) -> None:
        self._events = 0
        self._serving_hits = 0
        self._trusted_hits = 0
        self._squared_differences = 0  # sum of (serving hit - trusted hit)^2 over the events

    def saw_suspect_window(self) -> None:
        """The gate found a window suspect: this watch cannot make the serving version trusted."""
        self._suspect = True

    def watch(
        self, scored: ScoredBatch, serving_ranks: np.ndarray, serving_version: int
    ) -> GuardrailVerdict | None:
        """Add the events of a step, ranked by the serving version (`serving_ranks`), and the trusted
        version's ranks of them; a verdict when the watch is complete."""
        serving = (serving_ranks >= 0) & (serving_ranks < self.k)
        if serving_version == self.trusted_version:
            trusted = serving  # the same parameters: no need to rank again
        else:
            ranks = scored.ranks_by(self.trusted)
            trusted = (ranks >= 0) & (ranks < self.k)
        self._events += len(serving)
        self._serving_hits += int(serving.sum())
        self._trusted_hits += int(trusted.sum())
        self._squared_differences += int(np.count_nonzero(serving != trusted))
        if self._events < self.config.watch_events:
            return None
        verdict = self._judge(serving_version)
        self.verdicts.append(verdict)
        self._reset_watch()
        self._suspect = False
        return verdict

    def _judge(self, serving_version: int) -> GuardrailVerdict:
        n = self._events
        serving_hr, trusted_hr = self._serving_hits / n, self._trusted_hits / n
        drop = trusted_hr - serving_hr
        # Both versions ranked the same events: the standard error of the mean paired difference, which is
        # far smaller than two independent ones when the versions mostly agree.
        variance = max(self._squared_differences / n - drop * drop, 0.0)
        margin = max(self.gate.tolerance, self.gate.z * math.sqrt(variance / n))
        figures = (serving_hr, trusted_hr, n, serving_version, self.trusted_version)
        if drop > margin:
            reason = (
                f"guardrail: version {serving_version} HR@{self.k} {serving_hr:.4f} is {drop:.4f} below "
                f"trusted version {self.trusted_version} ({trusted_hr:.4f}) on the same {n} events "
                f"(margin {margin:.4f})"
            )
            return GuardrailVerdict("rollback", reason, *figures)
        if self._suspect:
            reason = f"version {serving_version} not trusted: the gate found suspect windows in the watch"
            return GuardrailVerdict("keep", reason, *figures)
        level = self._level.value
        if math.isfinite(level) and serving_hr < level - self.gate.z * math.sqrt(level * (1 - level) / n):
            self._untrusted += 1
            if self._untrusted >= self.config.max_untrusted_watches:
                self._level = RunningLevel(self.config.level_watches, _WARMUP_WATCHES)
                self._untrusted = 0
            reason = (
                f"version {serving_version} not trusted: HR@{self.k} {serving_hr:.4f} is far below the "
                f"level {level:.4f}"
            )
            return GuardrailVerdict("keep", reason, *figures)
        self._level.add(serving_hr)
        self._untrusted = 0
        reason = f"version {serving_version} HR@{self.k} {serving_hr:.4f} vs {trusted_hr:.4f}: trusted"
        return GuardrailVerdict("trust", reason, *figures)

    def trust(self, model: Model, version: int) -> None:
        """Make `model` (the serving version `version`) the trusted one: a full copy of its state."""
        if version != self.trusted_version:
            self.trusted.load_state_dict(model.state_dict())
            self.trusted_version = version
        self._reset_watch()

    def rolled_back(self, version: int) -> None:
        """The publisher rolled back to the trusted state, now serving as `version`: count it and start a
        fresh watch."""
        self.rollbacks += 1
        self.trusted_version = version
        self._reset_watch()
        self._suspect = False

    def state_dict(self) -> dict[str, object]:
        """What a trainer checkpoint records (plain JSON values): the trusted version's number (its
        parameters are in the store), the level and the counters. The watch in progress starts afresh."""
        return {
            "trusted_version": self.trusted_version,
            "rollbacks": self.rollbacks,
            "level": dataclasses.asdict(self._level),
            "untrusted": self._untrusted,
        }

    def load_state_dict(self, state: dict[str, object], trusted: dict[str, np.ndarray] | None = None) -> None:
        """Take back what `state_dict` returned; `trusted` is the trusted version's model state (loaded
        from the store by the caller; None: keep the current copy)."""
        if trusted is not None:
            self.trusted.load_state_dict(trusted)
        self.trusted_version = int(state["trusted_version"])  # type: ignore[arg-type]
        self.rollbacks = int(state["rollbacks"])  # type: ignore[arg-type]
        self._level = RunningLevel(**state["level"])  # type: ignore[arg-type]
        self._untrusted = int(state["untrusted"])  # type: ignore[arg-type]
        self._reset_watch()
        self._suspect = False

    def status(self) -> dict[str, object]:
        """The guardrail's figures for the status document."""
        last = self.verdicts[-1] if self.verdicts else None
        return {
            "rollbacks": self.rollbacks,
            "trusted_version": self.trusted_version,
            "guardrail_serving_hr": last.serving_hr if last else None,
            "guardrail_trusted_hr": last.trusted_hr if last else None,
            "guardrail": [verdict.as_dict() for verdict in self.verdicts if verdict.action != "trust"],
        }


#: Trusted watches before the level is used.
_WARMUP_WATCHES = 3
