"""The trainer side of publishing: when to publish, through the gate, as a delta or a snapshot.

The publisher keeps a *shadow* of the serving version in the trainer process (a second model instance that
receives exactly the changes published), so the gate can score the serving version without a round trip.
Changes are drained from the candidate only when a version is published: a held candidate keeps
accumulating them, and the next published delta carries everything since the last published one.

Never publishes a state with a non-finite value (the store refuses it too) and never blocks on the server.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from freshrec.errors import FreshrecError
from freshrec.evaluation.gate import (
    GateConfig,
    GateDecision,
    PublishGate,
    ScoredBatch,
    finite_or_none,
    hit_rate_of_ranks,
)
from freshrec.evaluation.prequential import RankingMetrics
from freshrec.models.base import Model
from freshrec.publishing.guardrail import Guardrail, GuardrailConfig, GuardrailVerdict
from freshrec.publishing.monitor import MonitorConfig, StreamMonitor
from freshrec.publishing.progress import TrainerProgress
from freshrec.publishing.rollback import answer_rollback, pending_rollback
from freshrec.publishing.store import DeltaBaseError, ModelStore, StoreCorruptError, VersionNotFoundError

#: Gate decisions kept in the store's status file for servers to show.
STATUS_DECISIONS = 20

_log = logging.getLogger(__name__)


@dataclass
class PublisherConfig:
    """How often versions are published.

    Parameters
    ----------
    interval_ms
        Publish at most this often (event batches are checked as they come).
    every_events
        Also publish after this many trained events, whichever comes first (None: time only).
    snapshot_every
        Also publish a full snapshot of the model after this many deltas (None: only when a delta cannot
        be published: the first version, after a restart or a rollback, changes the model could not track,
        or a store that found damage it cannot compact past). The store bounds a server's start and its
        retention by compacting on its own (`StoreConfig.compact_every`), from its files, off the
        trainer's path; a snapshot of the model instead makes every server reload the whole model (at 10
        versions/s, one every 100 versions put freshness at p50 3.3 s, bench/freshness.py).
    gate
        The publish gate's settings.
    rollback_poll_ms
        How often the trainer looks for a rollback request (`freshrec rollback`, ``POST /admin/rollback``):
        a file stat, so cheap enough to bound the wait of whoever asked to a few batches.
    guardrail
        The automatic rollback of published versions that do worse than the last trusted one.
    monitor
        How the stream figures of the status document (loss spikes, input shifts) are smoothed.
    """

    interval_ms: int = 1000
    every_events: int | None = None
    snapshot_every: int | None = None
    gate: GateConfig = field(default_factory=GateConfig)
    rollback_poll_ms: int = 50
    guardrail: GuardrailConfig = field(default_factory=GuardrailConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


class ModelPublisher:
    """Publishes a model's versions to a `ModelStore` through a `PublishGate`."""

    def __init__(
        self,
        model: Model,
        store: ModelStore,
        config: PublisherConfig | None = None,
        metadata: dict[str, Any] | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.model = model
        self.store = store
        self.config = config or PublisherConfig()
        self.gate = PublishGate(self.config.gate)
        self.metadata = dict(metadata or {})
        self._clock = clock
        # The shadow starts as the candidate's twin; the first version is a snapshot of both.
        self.shadow: Model = copy.deepcopy(model)
        self._deltas_since_snapshot: int | None = 0
        self._version = 0
        self._last_publish = -float("inf")
        self._events_since_publish = 0
        self._next_rollback_poll = 0.0
        self._window = _Window()
        self._popularity = RecentPopularity()
        self._suspect_events = 0  # in the suspect windows since the last normal one
        #: Event-log offset the adopted version had learned everything before (0: start from scratch).
        self.resume_offset = 0
        #: Over a broker stream, the broker positions that offset stands for (None: the event log's).
        self.resume_positions: dict[str, Any] | None = None
        #: The stream URL the adopted version learned from (None: the event log, or not recorded).
        self.resume_stream: str | None = None
        #: What a stream source says a position stands for (`StreamSource.positions_at`), recorded in
        #: each version beside ``log_offset`` as ``source_positions`` when it is published; None for the
        #: event log.
        self.position_details: Callable[[int], dict[Any, Any]] | None = None
        # Events the adopted version had learned: `events_trained` in metadata counts the whole lineage.
        self._events_trained_before = 0
        # After a restart from a checkpoint, versions wait until the trainer has passed this position
        # (what the served version had learned): publishing sooner would take users back in time.
        self._hold_until = 0
        self._trained = 0  # events the trainer had learned at the last `consider` (its own count)
        # Events learned by the lineage of the version in the shadow, and of the guardrail's trusted copy.
        self._served_events_trained = 0
        self.last_decision: GateDecision | None = None
        self.model.drain_changes()  # changes before the first snapshot are in the snapshot
        try:
            adopted = self._adopt_serving_version()
        except StoreCorruptError as error:  # no kept version loads from intact files
            _log.warning("%s; starting afresh, learning the event log from its start", error)
            adopted = False
        if not adopted:
            self._publish_snapshot(events_trained=0)
        self.monitor = StreamMonitor(self.config.monitor)
        #: The trainer's figures for the status document's ``"trainer"`` part (the dashboard's series).
        self.progress = TrainerProgress()
        self.progress.resume(store.read_status().get("trainer"))
        self.guardrail = (
            Guardrail(self.shadow, self._version, self.config.guardrail, self.config.gate)
            if self.config.guardrail.enabled
            else None
        )
        self._trusted_events_trained = self._served_events_trained

    def _adopt_serving_version(self) -> bool:
        """After a restart, continue from what is being served instead of replacing it with a fresh model:
        the candidate and the shadow load the store's current version, `resume_offset` says where in the
        event log that version's learning ended, and the first version published (through the gate) is a
        full snapshot. False if the store is empty or holds another kind or shape of model."""
        if self.store.current_version() == 0:
            return False
        state, loaded = self.store.load()
        if loaded.metadata.get("model") != self.metadata.get("model"):
            return False
        try:
            self.shadow.load_state_dict(state)
            self.model.load_state_dict(state)
        except (FreshrecError, KeyError, ValueError):
            return False  # the snapshot published next reloads the shadow from the candidate
        self.model.drain_changes()
        self.resume_offset = int(loaded.metadata.get("log_offset", 0))
        self.resume_positions = loaded.metadata.get("source_positions")
        config = loaded.metadata.get("config")
        source = config.get("source") if isinstance(config, dict) else None
        self.resume_stream = source.get("stream") if isinstance(source, dict) else None
        if self.resume_stream == "none":  # how the configuration writes an unset value
            self.resume_stream = None
        self._events_trained_before = int(loaded.metadata.get("events_trained", 0))
        self._served_events_trained = self._events_trained_before
        self._version = loaded.version
        self._deltas_since_snapshot = self.config.snapshot_every  # our drains do not extend that version
        return True

    def checkpoint_state(self) -> dict[str, Any]:
        """What a trainer checkpoint records of the publisher (`restore` takes it back): plain JSON."""
        state: dict[str, Any] = {
            "version": self._version,
            "events_trained_before": self._events_trained_before,
            "gate": self.gate.state_dict(),
        }
        if self.guardrail is not None:
            state["guardrail"] = self.guardrail.state_dict()
        return state

    def restore(
        self,
        saved: dict[str, Any],
        position: int,
        created: float,
        events_trained: int,
        prequential: RankingMetrics | None = None,
    ) -> int:
        """Continue after the trainer's loop restored a checkpoint taken at source `position` (Unix time
        `created`), whose publisher state was `saved` (`checkpoint_state`) and whose trainer had learned
        `events_trained` events; returns the position before which events are only observed, not learned.

        The candidate now holds the checkpoint's parameters; the shadow keeps the served version, which
        may hold effects of events after `position` (published before the crash). Those events are
        learned again on the checkpoint's state, so no version counts one twice; and no version is
        published until the trainer has passed the served version's position. The next version is a full
        snapshot (the candidate's state no longer follows the served version's). If the store was rolled
        back after the checkpoint (by an operator while the trainer was down, or by the guardrail before
        the crash), that choice wins: the candidate takes the served version's parameters and learns only
        what comes after it. The gate keeps its levels, quarantine and cool-down; the guardrail its trusted
        version, reloaded from the store while it is kept (else it trusts what is served). A checkpoint
        ahead of the served version (the trainer was killed between the two) is due for publishing at once,
        new events or not, with the checkpoint's `prequential` figures.
        """
        self.model.drain_changes()
        self._trained = events_trained
        self.metadata["log_offset"] = int(position)
        if prequential is not None:
            self._record_prequential(prequential)
        self._events_trained_before = int(saved.get("events_trained_before", 0))
        self._deltas_since_snapshot = self.config.snapshot_every
        self._window = _Window()
        if "gate" in saved:
            self.gate.load_state_dict(saved["gate"])
            # The recent counts rare items are measured against start empty: so does the share's level.
            self.gate.forget_rare_level()
        served = self.store.current_version()
        if served == 0:
            return position
        served_metadata = self._served_metadata()
        self._served_events_trained = int(served_metadata.get("events_trained", 0))
        self._restore_guardrail(saved.get("guardrail"))
        served_position = int(served_metadata.get("log_offset", 0))
        rolled_back = any(float(event.get("time", 0.0)) > created for event in self.store.history())
        if rolled_back:
            state, loaded = self.store.load()
            self.model.load_state_dict(state)
            self.model.drain_changes()
            self._events_trained_before = int(loaded.metadata.get("events_trained", 0)) - events_trained
            return max(position, served_position)
        self._hold_until = served_position if served_position > position else 0
        # Learned before the crash, published by no version: due now, not only once more events arrive.
        self._events_since_publish = max(position - served_position, 0)
        return position

    def _restore_guardrail(self, saved: dict[str, Any] | None) -> None:
        guardrail = self.guardrail
        if guardrail is None:
            return
        self._trusted_events_trained = self._served_events_trained  # the guardrail trusts the shadow
        if not saved:
            return
        trusted, version = None, int(saved["trusted_version"])
        if version != guardrail.trusted_version:
            try:
                trusted, loaded = self.store.load(version)
            except (StoreCorruptError, VersionNotFoundError) as error:
                _log.info("the guardrail trusts the served version: %s", error)
                return
            self._trusted_events_trained = int(loaded.metadata.get("events_trained", 0))
        guardrail.load_state_dict(saved, trusted)

    def _served_metadata(self) -> dict[str, Any]:
        current = self.store.current_version()
        for info in self.store.versions():
            if info.version == current:
                return info.metadata
        return {}

    @property
    def version(self) -> int:
        """The last version this publisher wrote."""
        return self._version

    @property
    def holding(self) -> bool:
        """Whether versions are held until the trainer passes the served version's position."""
        return self._hold_until > 0

    def due(self) -> bool:
        """Whether a publish should be attempted now."""
        if self._events_since_publish == 0:
            return False
        every = self.config.every_events
        if every is not None and self._events_since_publish >= every:
            return True
        return (self._clock() - self._last_publish) * 1000.0 >= self.config.interval_ms

    def consider(
        self,
        scored: ScoredBatch,
        loss: float | None,
        events: int,
        events_trained: int,
        position: int | None = None,
        prequential: RankingMetrics | None = None,
    ) -> GateDecision | None:
        """Take a batch the candidate ranked before learning it (`scored`) into the held-back window (the
        serving version's shadow ranks it too); then, when a publish is due, judge the window and publish
        the candidate as it stands now, or hold it.

        Parameters
        ----------
        events
            Events the candidate learned in the step (they count toward `PublisherConfig.every_events`).
        events_trained
            Events the candidate has learned in all, since it started.
        position
            The source position just after the last event learned (a log offset), recorded in the
            version's metadata as ``log_offset``: a restarted trainer resumes learning there.
        prequential
            The trainer's test-then-train figures over everything it has learned, recorded in the
            version's metadata as ``prequential`` (events ranked, HR@K, NDCG@K).

        The window gathers every batch since the last decision, so that small live batches add up to a
        window the gate can judge (it passes windows under `GateConfig.min_window_events` on the loss alone).
        """
        self._trained = events_trained
        if prequential is not None:
            self._record_prequential(prequential)
        times = scored.query.timestamps
        self.progress.observe(float(times.max()) if len(times) else float("nan"), prequential, events_trained)
        if self._hold_until:
            # Catching up after a restart: the shadow already learned these events, so its figures on them
            # say nothing, and a version now would serve less than is served.
            if position is not None and position >= self._hold_until:
                self._hold_until = 0
            else:
                self._events_since_publish += events
                if position is not None:
                    self.metadata["log_offset"] = int(position)
                return None
        k = self.config.gate.k
        serving_ranks = scored.ranks_by(self.shadow)
        self._window.add(scored, hit_rate_of_ranks(scored.ranks, k), hit_rate_of_ranks(serving_ranks, k))
        self.monitor.observe(scored, loss, events)
        self._events_since_publish += events
        if position is not None:
            self.metadata["log_offset"] = int(position)
        if self.guardrail is not None:
            verdict = self.guardrail.watch(scored, serving_ranks, self._version)
            if verdict is not None and self._follow_guardrail(self.guardrail, verdict):
                return None
        if not self.due():
            return None
        return self._decide(loss, events_trained)

    def _version_metadata(self, events_trained: int, **extra: Any) -> dict[str, Any]:
        """What a version published now records: the publisher's metadata, the lineage's events and, over
        a stream, the broker positions its ``log_offset`` stands for (asked only when publishing: a
        position's broker positions cost a look through the batches not yet committed)."""
        metadata = {**self.metadata, "events_trained": events_trained, **extra}
        if self.position_details is not None and "log_offset" in metadata:
            details = self.position_details(int(metadata["log_offset"]))
            metadata["source_positions"] = {str(key): value for key, value in details.items()}
        return metadata

    def _record_prequential(self, prequential: RankingMetrics) -> None:
        self.metadata["prequential"] = {
            "events": prequential.events,
            "hr": round(prequential.hr, 6),
            "ndcg": round(prequential.ndcg, 6),
        }

    def _decide(self, loss: float | None, events_trained: int) -> GateDecision:
        """Judge the held-back window (empty when idle: the loss alone decides), publish or hold, and
        record the decision in the store's status file. The window starts afresh: its serving figures
        were scored by a shadow that a publish replaces."""
        window, self._window = self._window, _Window()
        columns = window.columns
        decision = self.gate.decide(
            window.candidate_hr,
            window.serving_hr,
            window.events,
            loss,
            window_start=window.start,
            window_end=window.end,
            top_item_share=_top_item_share(columns),
            rare_item_share=self._popularity.rare_share(columns),
        )
        self.last_decision = decision
        # A burst must not make its own items the head, yet input that stays that way for a half-life of
        # the counts is the new normal: suspect windows are counted only after that long.
        self._suspect_events = self._suspect_events + window.events if decision.suspect else 0
        if self._suspect_events == 0 or self._suspect_events > self._popularity.half_life_events:
            self._popularity.add(columns)
        self.monitor.close_window()
        if decision.suspect and self.guardrail is not None:
            self.guardrail.saw_suspect_window()
        if decision.rebase:  # what it learned from the suspect windows must not ship: start from serving
            self.model.load_state_dict(self.shadow.state_dict())
            self.model.drain_changes()
        self._last_publish = self._clock()  # a held candidate waits a full interval before the next try
        if decision.published:
            decision.version = self._publish_changes(events_trained, decision)
            self._events_since_publish = 0
        self.progress.record(finite_or_none(window.candidate_hr), self.model.table_sizes())
        self._write_status()
        return decision

    def status(self) -> dict[str, Any]:
        """The gate's counters, level and recent decisions (what `GET /versions` and `/metrics` show)."""
        recent = list(self.gate.decisions)[-STATUS_DECISIONS:]
        last = self.last_decision.as_dict() if self.last_decision is not None else {}
        return {
            "version": self._version,
            "published": self.gate.published,
            "held": self.gate.held,
            "level": finite_or_none(self.gate.level),
            "quarantined": self.gate.quarantined,
            "rebases": self.gate.rebases,
            "top_item_share": last.get("top_item_share"),
            "top_item_share_level": finite_or_none(self.gate.concentration_level),
            "rare_item_share": last.get("rare_item_share"),
            "rare_item_share_level": finite_or_none(self.gate.rare_level),
            **self.monitor.figures(),
            **(self.guardrail.status() if self.guardrail is not None else {}),
            "decisions": [decision.as_dict() for decision in recent],
        }

    def _write_status(self) -> None:
        self.store.write_status({"gate": self.status(), "trainer": self.progress.figures()})

    def try_publish_idle(self, loss: float | None, events_trained: int) -> GateDecision | None:
        """When no new events arrive, publish what was learned last if due, so the newest events reach
        users without waiting for more. A candidate held on its last window stays held until it passes on
        a fresh one; otherwise only the loss is checked (there is no new window to score)."""
        if self._hold_until or not self.due():
            return None
        if self.last_decision is not None and not self.last_decision.published:
            return None
        return self._decide(loss, events_trained)

    def serve_rollback_request(self) -> int | None:
        """Answer a pending rollback request (at most every `rollback_poll_ms`): roll the store back and
        reset the candidate and the shadow to that version, so that learning continues from the parameters
        the operator chose instead of republishing the ones rolled back. Returns the version rolled back to,
        or None. The trainer's feature state (histories, seen items) is left live: it is not a parameter."""
        now = time.monotonic()
        if now < self._next_rollback_poll:
            return None
        self._next_rollback_poll = now + self.config.rollback_poll_ms / 1000.0
        request = pending_rollback(self.store.directory)
        if request is None or not answer_rollback(self.store, request):
            return None
        # The version rolled back to, now current; or, if its files are damaged, the newest intact one
        # before it, which is what servers load too.
        state, loaded = self.store.load()
        self._reset_to(state, loaded.version, int(loaded.metadata.get("events_trained", 0)))
        return loaded.version

    def _reset_to(self, state: dict[str, np.ndarray], version: int, events_trained: int) -> None:
        """The candidate and the shadow become `version` of the store (whose full state is `state` and
        whose lineage learned `events_trained` events), and so does the guardrail's trusted copy: a
        rolled-back version is what the operator or the guardrail trusts."""
        # `events_trained` counts what the served parameters learned: from now on, the chosen version's.
        self._events_trained_before = events_trained - self._trained
        self.model.load_state_dict(state)
        self.model.drain_changes()  # the store already holds everything the model now is
        self.shadow.load_state_dict(state)
        self._window = _Window()  # scored by the shadow that was just replaced
        self._version = version
        # A delta must follow the newest version, which a rollback never is: the next publish is a snapshot.
        self._deltas_since_snapshot = self.config.snapshot_every
        self.last_decision = None
        self._served_events_trained = events_trained
        if self.guardrail is not None:
            self.guardrail.trust(self.shadow, version)
            self._trusted_events_trained = events_trained

    def _follow_guardrail(self, guardrail: Guardrail, verdict: GuardrailVerdict) -> bool:
        """Trust the serving version or roll back to the trusted one, as the guardrail found; True if it
        rolled back. The rollback goes through the store when the trusted version is still kept (recorded
        in the manifest history with its reason), else its state is published again as a snapshot (with
        the rollback in its metadata); either way the gate then holds candidates for the cool-down."""
        if verdict.action == "trust":
            guardrail.trust(self.shadow, self._version)
            self._trusted_events_trained = self._served_events_trained
        if verdict.action != "rollback":
            return False
        trusted, to = guardrail.trusted.state_dict(), verdict.trusted_version
        events_trained = self._trusted_events_trained
        try:
            self.store.rollback(to, verdict.reason)
        except VersionNotFoundError:
            _log.info("trusted version %d is no longer kept: publishing its state again", to)
            rollback = {"from": verdict.serving_version, "state_of": to, "reason": verdict.reason}
            metadata = self._version_metadata(events_trained, rollback=rollback)
            to = self.store.publish_snapshot(trusted, metadata=metadata, rollback=rollback)
        _log.warning("%s: rolled back to version %d", verdict.reason, to)
        guardrail.rolled_back(to)
        self._reset_to(trusted, to, events_trained)
        self._events_since_publish = 0
        self.gate.pause(self.config.guardrail.cooldown_events, f"cool-down after rollback to version {to}")
        self._write_status()
        return True

    def _publish_changes(self, events_trained: int, decision: GateDecision) -> int:
        changes = self.model.drain_changes()
        events_trained += self._events_trained_before
        metadata = self._version_metadata(events_trained, gate=decision.as_dict())
        # Adoption and rollback set the count to `snapshot_every`, None when the trainer never snapshots on
        # its own: either way a snapshot is due. A store that found damage asks for one too.
        since, every = self._deltas_since_snapshot, self.config.snapshot_every
        delta_allowed = since is not None and (every is None or since < every)
        if changes.complete and delta_allowed and self.store.snapshot_wanted is None:
            try:
                version = self.store.publish_delta(
                    changes.rows, changes.replaced, metadata=metadata, base=self._version
                )
            except DeltaBaseError:
                # Someone rolled the store back: what serves is no longer our last version, so a delta
                # would not apply. Publish everything.
                return self._publish_snapshot(events_trained, metadata)
            self.shadow.apply_changes(changes)
            self._deltas_since_snapshot = (since or 0) + 1
            self._version = version
            self._served_events_trained = events_trained
            return version
        return self._publish_snapshot(events_trained, metadata)

    def _publish_snapshot(self, events_trained: int, metadata: dict[str, Any] | None = None) -> int:
        metadata = metadata or self._version_metadata(events_trained)
        state = self.model.state_dict()
        version = self.store.publish_snapshot(state, metadata=metadata)
        self.shadow.load_state_dict(state)
        self._deltas_since_snapshot = 0
        self._last_publish = self._clock()
        self._version = version
        self._served_events_trained = int(metadata.get("events_trained", events_trained))
        return version


class RecentPopularity:
    """Decayed counts of recent events per catalogue column, and the *head*: the most frequent items that
    make `head` of the counted events. An item outside it (or not yet in the catalogue) is rare.

    >>> popularity = RecentPopularity(half_life_events=1e9, head=0.9)
    >>> popularity.add(np.array([0] * 9 + [1]))
    >>> popularity.rare_share(np.array([0, 1, 2, -1]))  # item 1 is the last tenth, 2 and -1 never seen
    0.75
    """

    def __init__(self, half_life_events: float = 8192.0, head: float = 0.9) -> None:
        self.half_life_events = half_life_events
        self.head = head
        self._counts = np.zeros(0, dtype=np.float64)

    def add(self, columns: np.ndarray) -> None:
        """Count the events on catalogue `columns` (-1: not in the catalogue) after decaying the counts."""
        if len(columns) == 0:
            return
        self._counts *= 0.5 ** (len(columns) / self.half_life_events)
        known = columns[columns >= 0]
        if len(known) and known.max() >= len(self._counts):
            self._counts = np.pad(self._counts, (0, int(known.max()) + 1 - len(self._counts)))
        self._counts += np.bincount(known, minlength=len(self._counts))

    def rare_share(self, columns: np.ndarray) -> float:
        """Share of the events on `columns` whose item is rare (NaN when no event or nothing counted)."""
        total = self._counts.sum()
        if len(columns) == 0 or total <= 0:
            return float("nan")
        order = np.argsort(-self._counts, kind="stable")
        within = np.cumsum(self._counts[order]) - self._counts[order] < self.head * total
        in_head = np.zeros(len(self._counts) + 1, dtype=bool)  # the last entry stands for -1
        in_head[order[within & (self._counts[order] > 0)]] = True
        known = np.where((columns >= 0) & (columns < len(self._counts)), columns, -1)
        return float(1.0 - in_head[known].mean())


class _Window:
    """The held-back events since the last decision: hit counts of both models, the time span and the
    events' items (catalogue columns, for the top item's share)."""

    def __init__(self) -> None:
        self.events = 0
        self._candidate_hits = 0.0
        self._serving_hits = 0.0
        self._columns: list[np.ndarray] = []
        self.start = float("nan")
        self.end = float("nan")

    def add(self, scored: ScoredBatch, candidate_hr: float, serving_hr: float) -> None:
        n = len(scored.query)
        if n == 0:
            return
        self._candidate_hits += candidate_hr * n
        self._serving_hits += serving_hr * n
        self.events += n
        targets = scored.candidates.targets
        self._columns.append(targets)
        times = scored.query.timestamps
        self.start = float(np.nanmin([self.start, times.min()]))
        self.end = float(np.nanmax([self.end, times.max()]))

    @property
    def columns(self) -> np.ndarray:
        """The catalogue column of each event's item (-1: its first sighting)."""
        return np.concatenate(self._columns) if self._columns else np.zeros(0, np.int64)

    @property
    def candidate_hr(self) -> float:
        return self._candidate_hits / self.events if self.events else float("nan")

    @property
    def serving_hr(self) -> float:
        return self._serving_hits / self.events if self.events else float("nan")


def _top_item_share(columns: np.ndarray) -> float:
    """The share of a window's events (catalogue `columns`) that went to its most frequent item (NaN when
    empty). An item's first sighting has no column yet (-1) and counts for no item."""
    known = columns[columns >= 0]
    return float(np.bincount(known).max()) / len(columns) if len(known) else float("nan")
