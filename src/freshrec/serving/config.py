"""The serving stage's settings: plain dataclasses, importable without torch or faiss (a configuration
file names them; only a running server needs what they configure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from freshrec.errors import ConfigError

__all__ = ["RetrievalConfig", "ServingConfig"]

Metric = Literal["inner_product", "cosine"]

#: faiss' k-means wants at least this many training points per list (it warns below 39).
_TRAIN_POINTS_PER_LIST = 40


@dataclass(frozen=True)
class RetrievalConfig:
    """How an `ItemIndex` searches.

    Parameters
    ----------
    exact_below
        Catalogue size under which search is exact. Measured on 2 cores: at 20,000 items x 64 an exact query
        takes ~0.2 ms (the matrix, 5 MB, stays in cache) and IVF saves < 0.1 ms of it at ~93% recall; at
        50,000 exact costs ~1.2 ms against ~0.12 ms. The ANN index is built when the catalogue reaches this
        size and dropped when it falls under half of it (hysteresis, so a catalogue that hovers around the
        threshold does not rebuild on every update).
    metric
        ``"inner_product"`` (scores are dot products, what MF and two-tower models are trained for) or
        ``"cosine"`` (vectors and queries are L2-normalised first; scores are cosines).
    nlist
        Number of IVF lists; None picks ``4 * sqrt(n)`` at each build (capped so every list gets
        `_TRAIN_POINTS_PER_LIST` training points).
    nprobe
        Lists scanned per query: the recall/latency knob. With the automatic nlist, 128 gave recall@10 of
        0.95 / 0.97 / 0.97 at 20,000 / 50,000 / 100,000 clustered items (~0.3 ms per query at 100,000; 96
        dipped to 0.93 at 20,000).
    rebuild_growth
        Rebuild the ANN index (new lists, new centroids) once the catalogue grew or shrank by this factor
        since the last build: lists tuned for 20,000 items get long and slow at 200,000.
    rebuild_after_changes
        Rebuild once the distinct items whose vectors changed since the last build reach this fraction of
        the catalogue: an online model's item vectors drift, and centroids trained on old vectors balance
        the lists ever worse. Items are counted once however often they change: the popular items an
        online model updates every second are a small share of the catalogue (counting every upsert
        rebuilt 100,000 items about once a minute under 300 events/s, seconds of a core each time).
    max_overfetch
        Extra results fetched in the first ANN pass to make up for excluded (seen) items; rows that still come
        up short are fetched again with all of their exclusions, then searched exactly as a last resort.
    initial_capacity
        Rows allocated up front; the arrays double when full.
    seed
        Seed of the k-means training sample and of faiss' k-means.
    """

    exact_below: int = 20_000
    metric: Metric = "inner_product"
    nlist: int | None = None
    nprobe: int = 128
    rebuild_growth: float = 2.0
    rebuild_after_changes: float = 1.0
    max_overfetch: int = 256
    initial_capacity: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.metric not in ("inner_product", "cosine"):
            raise ConfigError(f"metric must be 'inner_product' or 'cosine', got {self.metric!r}")
        for name in ("exact_below", "nprobe", "initial_capacity"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.nlist is not None and (not isinstance(self.nlist, int) or self.nlist < 1):
            raise ConfigError(f"nlist must be None (automatic) or a positive integer, got {self.nlist!r}")
        if not self.rebuild_growth > 1.0:
            raise ConfigError(f"rebuild_growth must be > 1 (a factor), got {self.rebuild_growth!r}")
        if not self.rebuild_after_changes > 0.0:
            raise ConfigError(
                f"rebuild_after_changes must be > 0 (a fraction of the catalogue), got "
                f"{self.rebuild_after_changes!r}"
            )
        if not isinstance(self.max_overfetch, int) or self.max_overfetch < 0:
            raise ConfigError(f"max_overfetch must be a non-negative integer, got {self.max_overfetch!r}")


@dataclass
class ServingConfig:
    """How the server answers (the ``[serving]`` section of a configuration file; where it reads the model
    and writes events are the ``[publishing] store`` and ``[source] log`` it shares with the trainer).

    Parameters
    ----------
    host, port
        Where `freshrec serve` listens.
    user_capacity
        Users whose history and seen items are kept.
    id_capacity
        Raw item ids remembered to answer with the ids clients sent.
    fsync
        The event log's fsync policy: an ingest is answered only once its events are durable under it.
    history_length
        Recent items kept per user, for models that read a history.
    retrieval
        Settings of the item index that vector models answer from.
    compute_threads
        Threads torch and faiss may use in this process (set at `ServingRuntime.start`). One request is a
        single small matrix product or one IVF probe, which gain nothing from a thread pool, while an idle
        pool's spinning and an index rebuild on every core take CPU from the requests.
    follower_nice
        CPU priority (Linux nice increment) of the thread that applies new versions and maintains the item
        index: when the cores are busy, requests go first and a delta waits a little, instead of an index
        rebuild (seconds of a core) queueing every request behind it. 0 keeps the process's priority.
    max_body_bytes
        Largest request body of ``POST /events``: a larger one is refused with 413 from its
        ``Content-Length``, or as soon as it passes the limit while streaming, never read whole.
    max_events_per_request
        Most records one ``POST /events`` may carry (413 beyond): the answer lists every rejected record,
        so this also bounds the answer.
    max_json_depth
        Deepest nesting of arrays and objects a body may have (400 beyond; checked before parsing). An
        array of events whose context is an object is 3 deep.
    max_parallel_ingests
        Request bodies parsed, validated and appended at once, each on a worker thread (never on the event
        loop, which keeps answering meanwhile); more wait their turn. Bounds the memory of parsing.
    future_tolerance_s
        How far past this server's wall clock an event's timestamp may lie (seconds; default one day):
        ``POST /events`` rejects a later one, naming the field and by how much. Ranking runs at the newest
        accepted event time, so one event dated far ahead would otherwise age every other event at once.
    ingest_token_file, read_token_file, admin_token_file
        Files holding the bearer token of a scope (``freshrec.serving.auth``): ingest is ``POST /events``,
        read is ``/recommend``, ``/versions`` and ``/metrics``, admin is ``/admin/rollback``. The token itself
        is never a configuration value (every published version stores the configuration, and
        ``/versions`` shows it): give it in ``FRESHREC_INGEST_TOKEN`` / ``FRESHREC_READ_TOKEN`` /
        ``FRESHREC_ADMIN_TOKEN`` or in one of these files. None and no variable: the scope is open (admin:
        to loopback clients only).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    user_capacity: int = 1_000_000
    id_capacity: int = 2_000_000
    fsync: str = "every-batch"
    history_length: int = 50
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    compute_threads: int = 1
    follower_nice: int = 5
    max_body_bytes: int = 1 << 20
    max_events_per_request: int = 10_000
    max_json_depth: int = 32
    max_parallel_ingests: int = 4
    future_tolerance_s: float = 86_400.0
    ingest_token_file: Path | None = None
    read_token_file: Path | None = None
    admin_token_file: Path | None = None

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_events_per_request", "max_parallel_ingests"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        tolerance = self.future_tolerance_s
        if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not tolerance >= 0:
            raise ConfigError(
                f"future_tolerance_s must be a number of seconds >= 0 (default 86400, one day), got "
                f"{tolerance!r}"
            )
        if not isinstance(self.max_json_depth, int) or self.max_json_depth < 3:
            raise ConfigError(
                f"max_json_depth must be an integer of at least 3 (an array of events with a context "
                f"object), got {self.max_json_depth!r}"
            )
