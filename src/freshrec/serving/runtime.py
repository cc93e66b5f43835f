"""What a serving process holds and does: the published model, following the store version by version
(`freshrec.serving.served`), the live feature state, following the event log event by event
(`freshrec.serving.follower`), and the door events come in through.

Two background threads keep it fresh, one per follower. A request reads the model and the feature state
under the lock their updates take, so it is always computed with exactly one version, never a half-applied
one. Never imports the trainer.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from freshrec.events import EventBatch
from freshrec.features.state import FeatureConfig
from freshrec.models.base import Model
from freshrec.models.rating import RatingModel
from freshrec.models.registry import ModelSpec
from freshrec.preprocess.encode import encode_ids, encode_int
from freshrec.preprocess.pipeline import IngestPipeline, PipelineConfig
from freshrec.preprocess.validate import Rejection, ValidationResult
from freshrec.publishing.store import ModelStore, StoreError
from freshrec.serving.config import ServingConfig
from freshrec.serving.follower import EventFollower
from freshrec.serving.served import ServedModel, limit_faiss_threads
from freshrec.sources.eventlog import EventLog, EventLogConfig
from freshrec.sources.streams import EventSink, open_sink


@dataclass
class Recommendation:
    item_ids: list[object]
    scores: list[float]
    model_version: int


@dataclass
class IngestResult:
    accepted: int
    rejections: list[Rejection]
    first_offset: int | None
    last_offset: int | None


class ServingRuntime:
    """The model and feature state of one serving process.

    Parameters
    ----------
    config
        How much to keep and how to answer.
    store_dir
        The model store the trainer publishes to.
    log_dir
        The event log: `ingest` appends here (this process is its writer), and the feature state follows it.
    pipeline
        The ingest pipeline's settings, the trainer's (validation at the door, deduplication window).
    build_model
        Builds an empty model from a version's spec (default: the registry's).
    """

    def __init__(
        self,
        config: ServingConfig,
        store_dir: Path,
        log_dir: Path,
        pipeline: PipelineConfig | None = None,
        build_model: Callable[[ModelSpec], Model] = ModelSpec.build,
        stream: str | None = None,
    ) -> None:
        self.config = config
        self.store_dir, self.log_dir = Path(store_dir), Path(log_dir)
        pipeline = pipeline or PipelineConfig()
        self.store = ModelStore.open(self.store_dir)
        # Accepted events go to the event log (this process is its one writer) or to a broker stream, which
        # any number of replicas write and follow.
        self.log: EventLog | None = None
        self.sink: EventSink | None = None
        if stream is None:
            self.log = EventLog.open(EventLogConfig(directory=self.log_dir, fsync=config.fsync))
        else:
            self.sink = open_sink(stream)
        self._send_lock = threading.Lock()  # a producer's delivery reports are per send
        # The door: events are validated here, once; the log's readers take them as they are.
        self.door = IngestPipeline(pipeline)
        # Guards the served model, the index's contents, the version and the feature state together.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.served = ServedModel(
            self.store,
            self._lock,
            config.retrieval,
            build_model,
            config.compute_threads,
            config.follower_nice,
        )
        features = FeatureConfig(
            history_length=config.history_length,
            user_capacity=config.user_capacity,
            negative_window=0,
        )
        item_ids = dataclasses.replace(pipeline, item_ids=config.id_capacity)
        self.events = EventFollower(self.log_dir, self._lock, features, item_ids, stream=stream)
        self._threads = [
            threading.Thread(
                target=self.served.follow, args=(self._stop,), name="freshrec-store", daemon=True
            ),
            threading.Thread(target=self.events.follow, args=(self._stop,), name="freshrec-log", daemon=True),
        ]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        import torch  # here: the configuration that names this module must not import torch

        torch.set_num_threads(self.config.compute_threads)
        limit_faiss_threads(self.config.compute_threads)
        self.served.load_initial()  # a damaged store starts on its newest intact version, or unready
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=5)
        if self.log is not None:
            self.log.close()
        if self.sink is not None:
            self.sink.close()
        self.store.close()

    # ------------------------------------------------------------------ what it holds
    @property
    def ready(self) -> bool:
        return self.served.ready

    @property
    def version(self) -> int:
        """The served version (`served` holds its model, item index and publication time)."""
        return self.served.version

    def store_health(self) -> dict[str, object]:
        """The served model's `ServedModel.health`, what this process reads of the store
        (`ModelStore.health`) and what the writer last said of it (``writer``, from its status file);
        ``degraded`` when this server could not load a version the store names or read the manifest only
        from its backup."""
        try:
            store: dict[str, object] = self.store.health()
        except StoreError as error:  # the manifest and its backup are both damaged
            store = {"manifest_from_backup": False, "manifest_problem": str(error)}
        health: dict[str, object] = {**store, **self.served.health()}
        health["degraded"] = bool(
            health["degraded"] or health["manifest_from_backup"] or "manifest_problem" in health
        )
        health["writer"] = self.store.read_status().get("store")
        return health

    @property
    def events_applied(self) -> int:
        return self.events.events_applied

    @property
    def catalogue_size(self) -> int:
        catalogue = self.events.features.catalogue
        return len(catalogue) if catalogue is not None else 0

    # ------------------------------------------------------------------ requests
    @property
    def ranking_time(self) -> float:
        """The time requests are ranked at: the newest event time of the log this server follows (time
        decay and recency then mean the same in a replayed stream as in a live one). Only before the log
        holds any event, the wall clock."""
        newest = self.events.newest_time
        return time.time() if newest is None else newest

    def recommend(self, user_id: str | int, k: int, exclude_seen: bool = True) -> Recommendation:
        """Top-k items for a user, from the current version and the user's live history."""
        user_key = user_key_of(user_id)
        features = self.events.features
        with self._lock:
            model = self.served.model
            if model is None:
                raise RuntimeError("no model version is loaded yet")
            query = features.query(user_key, np.array([self.ranking_time]), length=model.history_length)
            seen = features.seen_items(int(user_key[0])) if exclude_seen else np.zeros(0, np.uint64)
            assert features.catalogue is not None
            raw, scores = self.served.answer(
                query, seen, features.catalogue, k, self.events.pipeline.raw_item_ids
            )
            version = self.served.version
        return Recommendation(raw.tolist(), scores.tolist(), version)

    def ingest(self, records: list[object]) -> IngestResult:
        """Validate, append the accepted events durably (to the log, or acknowledged by the stream's
        broker: a broker that fails raises `SourceError`, and nothing is reported accepted), answer per
        rejected event. Log offsets are returned for the log only."""
        result = self.door.validate_records(records)
        events, rejections = self._refuse_future(result, records)
        first = last = None
        if len(events) and self.sink is not None:
            with self._send_lock:
                self.sink.send(events)
        elif len(events):
            assert self.log is not None
            first, last = self.log.append(events)
            self.log.wait_durable(last)
        return IngestResult(len(events), rejections, first, last)

    def _refuse_future(
        self, result: ValidationResult, records: list[object]
    ) -> tuple[EventBatch, list[Rejection]]:
        """The accepted events less those dated more than `ServingConfig.future_tolerance_s` past the wall
        clock and, while a rating model is served, those rated off its scale (the trainer would refuse
        their batch); the rejections with theirs added, in input order."""
        now = time.time()
        tolerance = self.config.future_tolerance_s
        ahead = np.asarray(result.events.timestamp, dtype=np.float64) - now
        late = ahead > tolerance
        reason = f"in the future (tolerance {_duration(tolerance)}: serving.future_tolerance_s)"
        refused = [
            Rejection(int(position), "timestamp", f"{_duration(float(by))} {reason}", records[int(position)])
            for position, by in zip(result.positions[late], ahead[late], strict=True)
        ]
        off_scale = np.zeros(len(late), dtype=bool)
        model = self.served.model
        if isinstance(model, RatingModel):
            low, high = model.config.min_rating, model.config.max_rating
            values = np.asarray(result.events.value, dtype=np.float64)
            off_scale = ~late & np.isfinite(values) & ((values < low) | (values > high))
            why = f"outside the rating scale [{low:g}, {high:g}] of the served {model.name}"
            refused += [
                Rejection(int(position), "value", f"{value:g} is {why}", records[int(position)])
                for position, value in zip(result.positions[off_scale], values[off_scale], strict=True)
            ]
        dropped = late | off_scale
        if not dropped.any():
            return result.events, list(result.rejections)
        rejections = sorted([*result.rejections, *refused], key=lambda rejection: rejection.position)
        return result.events.take(np.flatnonzero(~dropped)), rejections


def _duration(seconds: float) -> str:
    """A span for people: ``2 days``, ``1.5 hours``, ``90 s``.

    >>> _duration(2 * 86_400), _duration(86_400), _duration(5_400), _duration(3_599.99), _duration(50)
    ('2 days', '1 day', '1.5 hours', '1 hour', '50 s')
    """
    for unit, size in (("day", 86_400.0), ("hour", 3_600.0), ("minute", 60.0)):
        count = round(seconds / size, 1)  # 3599.99 s (an hour ahead, measured a moment later) is 1 hour
        if count >= 1:
            return f"{count:g} {unit}" + ("" if count == 1 else "s")
    return f"{seconds:.3g} s"


def user_key_of(user_id: str | int) -> np.ndarray:
    """uint64 [1]: the key of one raw id, as `encode_ids` gives it, without its column machinery.

    `encode_ids` classifies a column with Arrow regular expressions, ~1 ms for a column of one on a loaded
    core: a third of a request's time. A decimal string that round-trips through int is that integer
    (`encode_ids`'s documented rule), so it takes the integer path; anything else goes through `encode_ids`.

    >>> ids = ["42", "-7", "042", " 42", "-0", "²", "alice", 42, str(2**63)]
    >>> [int(user_key_of(i)[0]) for i in ids] == encode_ids(np.array(ids, dtype=object)).tolist()
    True
    """
    if (
        isinstance(user_id, str)
        and len(user_id) <= 18
        and user_id.isascii()
        and user_id.lstrip("-").isdigit()
    ):
        number = int(user_id)
        if str(number) == user_id:
            return np.array([encode_int(number)], dtype=np.uint64)
    return encode_ids(np.array([user_id], dtype=object))
