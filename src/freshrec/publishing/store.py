"""The model store: a directory of numbered model versions (full snapshots and row deltas) named by an
atomically replaced manifest, written by one trainer and read by any number of serving processes.

Layout of the directory::

    manifest.json                        the only source of truth: kept versions, `current`, history
    manifest.json.prev                   the manifest before the last one, read when manifest.json is damaged
    v0000000007.snapshot.safetensors     a full state
    v0000000008.delta.safetensors        rows/<name>, values/<name>, replaced/<name> relative to version 7
    v0000000010.snapshot.safetensors     the full state of delta version 10, written by the store (compaction)
    writer.lock                          held (fcntl) by the one writer

A version file is written under a temporary name, fsynced and renamed before the manifest that names it,
and the manifest records each file's size and sha256: a reader trusts only files the manifest names and
verifies them before use, so a half-written, damaged or stray file is never applied. A reader that finds
the current version damaged loads the newest intact version before it (and says which, naming the file).

The writer compacts: every `StoreConfig.compact_every` versions it writes the newest delta version's full
state from the files alone (no model), in a background thread, so the oldest kept version always loads
from kept files and retention can drop whole chains; servers following deltas never reload for it.

It must never unpickle anything (safetensors and JSON only: a model file cannot run code), never let a
non-finite value into a version, and never modify or delete a file that the manifest still names.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from safetensors.numpy import load as load_tensors

from freshrec.durable import safetensors_chunks, write_atomically
from freshrec.errors import ConfigError, FreshrecError

MANIFEST = "manifest.json"
#: The manifest before the last replace (a hard link to its file: no bytes written), read when
#: `MANIFEST` is damaged or missing.
MANIFEST_BACKUP = "manifest.json.prev"
LOCK_FILE = "writer.lock"
#: The writer's latest state for operators (the publish gate's decisions): replaced, never appended.
STATUS = "status.json"
FORMAT = 3
#: Manifest formats this freshrec reads: 1 wrote every version's metadata inline, 2 had no compaction.
READABLE_FORMATS = (1, 2, 3)
#: Metadata values that repeat from version to version (the model's spec, the whole configuration):
#: the manifest holds each distinct one once, in ``shared``, and versions name it by digest. Without it a
#: manifest of a few hundred versions grew to megabytes, rewritten on every publish and re-read by every
#: server on every version.
SHARED_METADATA = ("model", "config")
#: Rollbacks remembered in the manifest (it is rewritten on every publish, so it must stay small).
HISTORY_LIMIT = 200
_VERSION_FILE = re.compile(r"^v(\d{10})\.(snapshot|delta)\.safetensors$")
_DELTA_PREFIXES = ("rows/", "values/", "replaced/")
#: A snapshot tensor stored without its trailing free rows comes with ``fill/<name>``: the row they all were.
_FILL_PREFIX = "fill/"
_TRIM_MIN_ROWS = 1024
_TRIM_BLOCK_ROWS = 4096
_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: what safetensors stores and serving can use

VersionKind = Literal["snapshot", "delta"]
State = dict[str, np.ndarray]

_log = logging.getLogger(__name__)


class StoreError(FreshrecError):
    """The model store cannot do what was asked (wrong base, unknown version, invalid state...)."""


class StoreCorruptError(StoreError):
    """A file the manifest names is missing, truncated or altered: it is never applied.

    `missing_file` names a file that was not there at all (retention of a newer manifest may have dropped
    it between a reader's manifest read and its open: the reader looks again before calling it damage)."""

    def __init__(self, message: str, missing_file: str | None = None) -> None:
        super().__init__(message)
        self.missing_file = missing_file


class StoreLockedError(StoreError):
    """Another writer holds the store: a store has exactly one writer."""


class VersionNotFoundError(StoreError, KeyError):
    """The version asked for is not kept by the store (never published, or dropped by retention)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DeltaBaseError(StoreError):
    """A delta does not follow the current, newest version: the caller must publish a snapshot."""


class NonFiniteValueError(StoreError, ValueError):
    """A tensor holds NaN or infinity: such a state must never reach the store."""


@dataclass
class StoreConfig:
    """Where the store lives and how much of its past it keeps.

    Parameters
    ----------
    directory
        The store's directory (created by the writer).
    keep_versions
        The most versions kept on disk, each loadable from kept files alone; nothing older stays. Versions
        go in whole chains (a compacted version and the deltas after it), so the newest
        ``keep_versions - compact_every + 1`` are always kept, the newest `keep_versions` most of the time.
    compact_every
        Write the full state of the newest version, from the store's own files and in a background thread,
        once this many versions followed the newest full state (None: ``keep_versions // 2``, at least 1).
        Larger: less writing, a shallower guaranteed rollback depth; at most ``keep_versions // 2`` the
        writer never waits for a compaction, and it may not exceed `keep_versions`.
    fsync
        Flush every file and the directory to disk before the manifest names it (off: faster, for tests
        and benchmarks only; a power loss may then leave a manifest naming an empty file).

    >>> config = StoreConfig("/tmp/store")
    >>> config.keep_versions, config.compaction_interval
    (20, 10)
    """

    directory: str | Path
    keep_versions: int = 20
    compact_every: int | None = None
    fsync: bool = True

    def __post_init__(self) -> None:
        if self.keep_versions < 1:
            raise ConfigError(
                f"StoreConfig.keep_versions={self.keep_versions}: keep at least 1 version (default 20)"
            )
        if self.compact_every is not None and not 1 <= self.compact_every <= self.keep_versions:
            raise ConfigError(
                f"StoreConfig.compact_every={self.compact_every}: between 1 and keep_versions "
                f"({self.keep_versions}), since one of the newest keep_versions needs its full state; or "
                "leave it unset (keep_versions // 2)"
            )

    @property
    def compaction_interval(self) -> int:
        """Versions after the newest full state at which the store writes the next one."""
        return self.compact_every or max(1, self.keep_versions // 2)


@dataclass(frozen=True)
class FileRef:
    """A file of the store as the manifest names it: a reader refuses it unless size and sha256 match."""

    file: str
    size: int
    sha256: str


@dataclass(frozen=True)
class VersionInfo:
    """One kept version as the manifest describes it.

    Attributes
    ----------
    version
        Its number (1, 2, ...; never reused).
    kind
        ``"snapshot"`` (the full state) or ``"delta"`` (changes relative to `base`).
    file
        File name inside the store directory.
    base
        The version a delta applies to (always ``version - 1``); None for a snapshot.
    size, sha256
        Byte size and hex SHA-256 of the file: a reader refuses a file that does not match.
    created
        Unix time of publication.
    metadata
        What the publisher passed (model name, config, events trained...), as JSON values.
    tensors
        Name -> (dtype name, shape) of the full state *after* this version.
    compacted
        For a delta: the full state after it, written later by the store from the files before it (None:
        not compacted). A server following versions applies the delta; one loading from scratch starts
        here.
    """

    version: int
    kind: VersionKind
    file: str
    base: int | None
    size: int
    sha256: str
    created: float
    metadata: dict[str, Any]
    tensors: dict[str, tuple[str, tuple[int, ...]]]
    compacted: FileRef | None = None

    @property
    def own(self) -> FileRef:
        """The file published as this version (the snapshot or the delta)."""
        return FileRef(self.file, self.size, self.sha256)

    @property
    def full(self) -> FileRef | None:
        """The file holding the whole state of this version, if any: a snapshot's own, a delta's compacted."""
        return self.own if self.kind == "snapshot" else self.compacted

    @property
    def files(self) -> tuple[str, ...]:
        """Every file of this version in the store directory."""
        return (self.file,) if self.compacted is None else (self.file, self.compacted.file)

    def as_json(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The manifest entry, with each `SHARED_METADATA` value replaced by ``{"shared": digest}``, and
        the shared values by digest (computed once: the manifest is rewritten on every publish with every
        kept version, and a deep `asdict` of 20 entries' metadata took 22 ms of each publish). Do not
        modify."""
        cached = self.__dict__.get("_json")
        if cached is None:
            entry = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
            entry["tensors"] = {name: [dtype, list(shape)] for name, (dtype, shape) in self.tensors.items()}
            if self.compacted is None:
                del entry["compacted"]
            else:
                entry["compacted"] = dataclasses.asdict(self.compacted)
            metadata, shared = dict(self.metadata), {}
            for key in SHARED_METADATA:
                if isinstance(metadata.get(key), dict):
                    text = json.dumps(metadata[key], sort_keys=True)
                    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
                    shared[digest] = metadata[key]
                    metadata[key] = {"shared": digest}
            entry["metadata"] = metadata
            cached = (entry, shared)
            object.__setattr__(self, "_json", cached)  # frozen: a cache, not a change of value
        return cached

    def as_json_text(self) -> str:
        """`as_json`'s entry as compact JSON, encoded once (the manifest holds one per line)."""
        text = self.__dict__.get("_json_text")
        if text is None:
            text = json.dumps(self.as_json()[0], separators=(",", ":"))
            object.__setattr__(self, "_json_text", text)
        return text

    @classmethod
    def from_json(cls, entry: dict[str, Any], shared: dict[str, Any] | None = None) -> VersionInfo:
        tensors = {
            name: (str(dtype), tuple(int(n) for n in shape))
            for name, (dtype, shape) in entry["tensors"].items()
        }
        metadata = dict(entry["metadata"])
        for key, value in metadata.items():
            if isinstance(value, dict) and set(value) == {"shared"} and shared is not None:
                metadata[key] = shared[value["shared"]]
        compacted = FileRef(**entry["compacted"]) if entry.get("compacted") else None
        return cls(**{**entry, "tensors": tensors, "metadata": metadata, "compacted": compacted})

    def metadata_json(self) -> dict[str, Any]:
        """The whole entry with its metadata as published (what `GET /versions` shows)."""
        entry, _ = self.as_json()
        return {**entry, "metadata": self.metadata}


@dataclass(frozen=True)
class LoadedVersion:
    """What `ModelStore.load` assembled.

    Attributes
    ----------
    version
        The version the returned state is.
    snapshot
        The snapshot it started from.
    deltas
        The deltas applied after the snapshot, in order (empty when `version` is a snapshot).
    info
        The manifest entry of `version`.
    bytes_read
        Bytes of version files read (snapshot plus deltas).
    damaged
        What was found damaged on the way, one line per file (empty: nothing). A load of the current
        version may then return an older one: `version` says which.
    """

    version: int
    snapshot: int
    deltas: tuple[int, ...]
    info: VersionInfo
    bytes_read: int
    damaged: tuple[str, ...] = ()

    @property
    def metadata(self) -> dict[str, Any]:
        return self.info.metadata


@dataclass
class Delta:
    """The changes of one delta version relative to its base (field names as in `models.base.StateChanges`).

    Attributes
    ----------
    version, base
        This version and the one it applies to (``version - 1``).
    rows
        name -> (row indices int64 [r], new rows [r, ...]): ``state[name][rows] = values``.
    replaced
        name -> the whole new array.
    metadata
        What the publisher passed with this version.
    """

    version: int
    base: int
    rows: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    replaced: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Manifest:
    current: int = 0
    latest: int = 0  # highest version ever published: numbering continues after it
    versions: dict[int, VersionInfo] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def files(self) -> set[str]:
        return {name for info in self.versions.values() for name in info.files}

    def newest_full(self) -> int:
        """The newest version with a whole state on disk (0: none)."""
        return max((v for v, info in self.versions.items() if info.full is not None), default=0)

    def to_bytes(self) -> bytes:
        """The manifest file: one line per version, each encoded once per version rather than on every
        publish (an indented dump of the whole document was most of a small delta's publish time)."""
        entries, shared = [], {}
        for version in sorted(self.versions):
            info = self.versions[version]
            entries.append(info.as_json_text())
            shared.update(info.as_json()[1])
        head = {"format": FORMAT, "current": self.current, "latest": self.latest}
        lines = [
            json.dumps(head)[:-1] + ",",
            f'"shared": {json.dumps(shared)},',
            '"versions": [',
            ",\n".join(entries),
            f'], "history": {json.dumps(self.history)}}}',
        ]
        return "\n".join(lines).encode()

    @classmethod
    def from_bytes(cls, data: bytes, path: Path) -> _Manifest:
        try:
            document = json.loads(data)
            if document.get("format") not in READABLE_FORMATS:
                raise StoreError(
                    f"{path} has format {document.get('format')!r}, this freshrec reads formats "
                    f"{', '.join(map(str, READABLE_FORMATS))}; use the freshrec version that wrote the store"
                )
            shared = document.get("shared", {})
            versions = {int(e["version"]): VersionInfo.from_json(e, shared) for e in document["versions"]}
            return cls(int(document["current"]), int(document["latest"]), versions, list(document["history"]))
        except (ValueError, KeyError, TypeError) as error:
            raise StoreCorruptError(
                f"{path} is not a valid store manifest ({error!r}); restore it"
            ) from error


def apply_delta(state: State, delta: Delta) -> State:
    """Apply `delta` to `state` in place and return it; the whole delta is checked first, so a delta that
    does not fit (unknown tensor, row out of range, wrong shape or dtype) raises and changes nothing.

    Copy the state first if other threads read it while it changes.

    >>> state = {"w": np.zeros((3, 2), np.float32), "step": np.array([0])}
    >>> delta = Delta(2, 1, rows={"w": (np.array([2]), np.ones((1, 2), np.float32))},
    ...               replaced={"step": np.array([5])})
    >>> apply_delta(state, delta)["w"].tolist(), state["step"].tolist()
    ([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]], [5])
    """
    for name, (rows, values) in delta.rows.items():
        if name not in state:
            raise StoreError(
                f"delta of version {delta.version} changes rows of tensor {name!r}, which the state lacks; "
                f"load version {delta.version} in full instead"
            )
        _check_rows(name, rows, values, str(state[name].dtype), state[name].shape, f"version {delta.version}")
    for name, (rows, values) in delta.rows.items():
        state[name][rows] = values
    for name, array in delta.replaced.items():
        state[name] = np.array(array, copy=True)
    return state


class ModelStore:
    """A directory of model versions: the writer (trainer) publishes and rolls back, readers (servers) load.

    ``ModelStore(config)`` opens the store for writing (creating the directory) and holds its writer lock
    until `close`; ``ModelStore.open(directory)`` opens it read-only, from any process, any number of times.
    The writer also compacts, in a background thread of its own (see `StoreConfig.compact_every`).

    Parameters
    ----------
    config
        Directory, retention, compaction and fsync policy.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with ModelStore(StoreConfig(folder, fsync=False)) as store:
    ...     v1 = store.publish_snapshot({"w": np.zeros((4, 2), np.float32)}, {"model": "mf"})
    ...     v2 = store.publish_delta({"w": (np.array([1]), np.ones((1, 2), np.float32))}, {}, base=v1)
    >>> reader = ModelStore.open(folder)
    >>> state, info = reader.load()
    >>> info.version, info.snapshot, info.deltas, state["w"][1].tolist()
    (2, 1, (2,), [1.0, 1.0])
    """

    def __init__(self, config: StoreConfig) -> None:
        self._init(config)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._acquire_lock()
        try:
            manifest = self._read_manifest() or _Manifest()
            if self._read_backup:
                # Numbers the damaged manifest may have given out must not be given again: a server may
                # hold one of those versions and would take a new version of the same number for it.
                manifest = dataclasses.replace(manifest, latest=max(manifest.latest, self._highest_file()))
            self._manifest = manifest
            self._remove_unnamed_files()
            if self._read_backup:  # heal manifest.json now; its damaged bytes must not become the backup
                self._replace_manifest(manifest, backup=False)
                self._read_backup = False
        except BaseException:
            self.close()
            raise
        self._compactor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="freshrec-compact")

    @classmethod
    def open(cls, directory: str | Path) -> ModelStore:
        """Open a store read-only. A store not yet created or still empty has current version 0."""
        store = cls.__new__(cls)
        store._init(StoreConfig(directory))
        return store

    def _init(self, config: StoreConfig) -> None:
        self.config = config
        self.directory = Path(config.directory)
        self._lock_fd: int | None = None
        self._manifest = _Manifest()  # the writer's copy; readers always go to the file
        self._cached: tuple[tuple[int, int, int] | None, _Manifest | None] = (None, None)
        self._read_backup = False  # the manifest last read came from MANIFEST_BACKUP
        self._backup_ok = True  # MANIFEST on disk is one this writer may take as the next backup
        self._reported: set[str] = set()
        self._manifest_lock = threading.Lock()  # the publishing thread and the compactor both replace it
        self._compactor: ThreadPoolExecutor | None = None
        self._compaction: Future[None] | None = None
        self._compacting = 0  # the version the last compaction started was for
        self._snapshot_wanted: str | None = None
        self._compaction_failures = 0

    @property
    def writable(self) -> bool:
        return self._lock_fd is not None

    def close(self) -> None:
        """Wait for a compaction in progress, then release the writer lock (a reader has nothing to
        release)."""
        if self._compactor is not None:
            self._compactor.shutdown(wait=True)
            self._compactor = None
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> ModelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading
    def versions(self) -> list[VersionInfo]:
        """The kept versions, oldest first."""
        manifest = self._current_manifest()
        return [manifest.versions[v] for v in sorted(manifest.versions)]

    def current_version(self) -> int:
        """The version `load()` returns: the newest one, or the one rolled back to (0: nothing published)."""
        return self._current_manifest().current

    def history(self) -> list[dict[str, Any]]:
        """Rollbacks recorded in the manifest: time, from, to, reason."""
        return list(self._current_manifest().history)

    def load(self, version: int | None = None) -> tuple[State, LoadedVersion]:
        """The full state of `version` (default: the current one): the newest full state at or before it,
        then each delta after it in order. Every file is verified against the manifest before use, and a
        damaged full state is passed over for an older one whose deltas lead to the same version.

        When no intact files lead to the current version, ``load()`` returns the newest kept version before
        it that they do lead to (`LoadedVersion.version` says which and `LoadedVersion.damaged` what was
        found; the log says both, once); ``load(version)`` returns exactly `version` or raises.

        Raises `VersionNotFoundError` if the version is not kept (or nothing is published), and
        `StoreCorruptError` if intact files lead to no version asked for (nothing is returned: the caller
        keeps what it has).
        """
        for attempt in range(3):
            manifest = self._current_manifest()
            damaged: list[StoreCorruptError] = []
            try:
                if version is None:
                    state, loaded = self._load_newest_intact(manifest, damaged)
                else:
                    state, loaded = self._load_exactly(manifest, version, damaged)
            except StoreCorruptError:
                if attempt < 2 and self._dropped_meanwhile(damaged):
                    continue
                raise
            if damaged and attempt < 2 and self._dropped_meanwhile(damaged):
                continue
            if damaged:
                self._report_damage(manifest.current if version is None else version, loaded)
            return state, loaded
        raise AssertionError("unreachable")

    def read_delta(self, version: int) -> Delta:
        """The changes of delta `version` relative to ``version - 1``, verified, for a server that holds
        ``version - 1`` (apply with `apply_delta`). Raises `StoreError` if `version` is a snapshot,
        `StoreCorruptError` if its file is damaged."""
        manifest = self._current_manifest()
        info = _kept(manifest, version, self.directory)
        if info.kind != "delta":
            raise StoreError(f"version {version} is a snapshot, not a delta; load it with load({version})")
        try:
            return self._read_delta(info)
        except StoreCorruptError as error:
            if self._dropped_meanwhile([error]):
                raise VersionNotFoundError(
                    f"version {version} was dropped while being read; load() the current version"
                ) from error
            raise

    def wait_for_change(self, after_version: int, timeout: float, poll_interval: float = 0.05) -> int | None:
        """Block until the current version differs from `after_version` and return it, or return None after
        `timeout` seconds. Polls the manifest's stat (no read unless it changed): cheap for a background
        thread."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.current_version()
            if current != after_version:
                return current
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(poll_interval, left))

    def health(self) -> dict[str, Any]:
        """What an operator needs to know about the store's state (`GET /versions` shows the writer's):
        versions kept and the bound, the newest version with a full state on disk, whether the manifest was
        read from its backup, and for the writer, why it wants a snapshot (a compaction found damage)."""
        manifest = self._current_manifest()
        health: dict[str, Any] = {
            "versions": len(manifest.versions),
            "keep_versions": self.config.keep_versions,
            "newest_full": manifest.newest_full(),
            "manifest_from_backup": self._read_backup,
        }
        if self.writable:
            health["compact_every"] = self.config.compaction_interval
            health["compaction_failures"] = self._compaction_failures
            health["snapshot_wanted"] = self._snapshot_wanted
        return health

    @property
    def snapshot_wanted(self) -> str | None:
        """Why the writer needs a full snapshot from the trainer (None: it does not): a compaction found the
        newest version unreachable from intact files, which only a snapshot of the model can mend."""
        return self._snapshot_wanted

    # ------------------------------------------------------------------ writing
    def publish_snapshot(
        self,
        state: State,
        metadata: dict[str, Any] | None = None,
        rollback: dict[str, Any] | None = None,
    ) -> int:
        """Publish the full `state` as the next version and make it current; returns its number.

        `rollback` (``from``, ``reason``, ...) makes the publish a rollback by republishing: the state of a
        version no longer kept is published again, and the manifest history records it, in the same write,
        as a ``rollback`` to the new version (with the time). Raises `NonFiniteValueError` (naming the
        tensor) if any float holds NaN or infinity.
        """
        manifest = self._writer_manifest("publish_snapshot")
        tensors, schema = _snapshot_tensors(state)
        # A compaction in progress counts for retention, which a snapshot moves on: let it finish first.
        self.wait_for_compaction()
        version = self._publish(
            "snapshot", tensors, schema, None, _json_metadata(metadata), manifest, rollback
        )
        self._snapshot_wanted = None
        return version

    def publish_delta(
        self,
        rows: dict[str, tuple[np.ndarray, np.ndarray]],
        replaced: dict[str, np.ndarray],
        metadata: dict[str, Any] | None = None,
        *,
        base: int,
    ) -> int:
        """Publish the changes relative to version `base` as the next version and make it current.

        Parameters
        ----------
        rows
            name -> (row indices [r], new rows [r, ...]) of tensors whose leading dimension is a row.
        replaced
            name -> whole new array (dense parameters, small arrays, new tensors).
        metadata
            JSON-able description of the version.
        base
            The version the changes are relative to: it must be the current version and the newest one
            (not a rolled-back one), else `DeltaBaseError` and the caller publishes a snapshot.
        """
        manifest = self._writer_manifest("publish_delta")
        if base != manifest.current or manifest.current != manifest.latest or base == 0:
            reason = (
                f"the current version is {manifest.current}"
                if base != manifest.current or base == 0
                else f"version {base} is current only by a rollback (the newest is {manifest.latest})"
            )
            raise DeltaBaseError(
                f"publish_delta(base={base}) refused: {reason}; a delta must follow the current, newest "
                "version, so publish a snapshot instead"
            )
        schema = dict(manifest.versions[base].tensors)
        tensors: State = {}
        for name, pair in rows.items():
            if name in replaced:
                raise StoreError(f"tensor {name!r} is both in rows and replaced of one delta; send it once")
            if name not in schema:
                raise StoreError(
                    f"delta rows name tensor {name!r}, which version {base} lacks; send it in replaced"
                )
            row_ids, values = np.asarray(pair[0]), _checked_array(name, pair[1])
            dtype, shape = schema[name]
            _check_rows(name, row_ids, values, dtype, shape, "the delta")
            tensors["rows/" + name] = np.ascontiguousarray(row_ids, dtype=np.int64)
            tensors["values/" + name] = values
        for name, array in replaced.items():
            checked = _checked_array(name, array)
            tensors["replaced/" + name] = checked
            schema[name] = (str(checked.dtype), tuple(checked.shape))
        return self._publish("delta", tensors, schema, base, _json_metadata(metadata), manifest)

    def rollback(self, to: int, reason: str = "", request_id: str | None = None) -> None:
        """Make the kept version `to` current (recorded in the manifest history); the next publish must
        then be a snapshot. Raises `VersionNotFoundError` listing the kept versions if `to` is not kept.

        `request_id` names the `publishing.rollback` request this answers: the history records it (as a
        ``rollback`` or, when `to` is not kept, a ``rollback-refused`` event) so that the asking process,
        which cannot write the store, learns the outcome."""
        manifest = self._writer_manifest("rollback")
        event: dict[str, Any] = {"time": time.time(), "from": manifest.current, "to": to, "reason": reason}
        if request_id is not None:
            event["request"] = request_id
        try:
            _kept(manifest, to, self.directory)
        except VersionNotFoundError as error:
            if request_id is not None:
                self._record({**event, "action": "rollback-refused", "error": str(error)})
            raise
        self._record({**event, "action": "rollback"}, current=to)

    def _record(self, event: dict[str, Any], current: int | None = None) -> None:
        with self._manifest_lock:
            manifest = self._manifest
            updated = dataclasses.replace(
                manifest,
                current=manifest.current if current is None else current,
                history=[*manifest.history, event][-HISTORY_LIMIT:],
            )
            self._replace_manifest(updated)

    def write_status(self, document: dict[str, Any]) -> None:
        """Replace the status file with `document` (JSON) and the writer's `health` under ``"store"``.
        Atomic but not fsynced: it describes the writer (e.g. held gate decisions, which never become
        versions) and losing it on a crash loses nothing."""
        self._writer_manifest("write_status")
        temporary = self.directory / f".{STATUS}.{os.getpid()}.tmp"
        temporary.write_text(json.dumps(_json_metadata({**document, "store": self.health()})))
        os.replace(temporary, self.directory / STATUS)

    def read_status(self) -> dict[str, Any]:
        """The last `write_status` document ({} if none)."""
        try:
            return json.loads((self.directory / STATUS).read_bytes())
        except (FileNotFoundError, ValueError):
            return {}

    def compact(self, version: int) -> None:
        """Write the full state of delta `version` now, in this thread: what the writer's background
        compaction does every `StoreConfig.compact_every` versions (a benchmark, or an operator who wants a
        server's start to read one file). A failure is logged and sets `snapshot_wanted`."""
        self._writer_manifest("compact")
        self.wait_for_compaction()
        self._compact(version)

    def wait_for_compaction(self, timeout: float | None = None) -> None:
        """Block until the compaction in progress, if any, has finished (tests, benchmarks, shutdown)."""
        if self._compaction is not None:
            self._compaction.exception(timeout)

    # ------------------------------------------------------------------ internals: writing
    def _publish(
        self,
        kind: VersionKind,
        tensors: State,
        schema: dict[str, tuple[str, tuple[int, ...]]],
        base: int | None,
        metadata: dict[str, Any],
        manifest: _Manifest,
        rollback: dict[str, Any] | None = None,
    ) -> int:
        version = manifest.latest + 1  # only this thread publishes: the compactor never changes `latest`
        created = time.time()
        header = {"version": version, "kind": kind, "base": base, "created": created, "metadata": metadata}
        written = self._write_version_file(f"v{version:010d}.{kind}.safetensors", tensors, header)
        info = VersionInfo(
            version, kind, written.file, base, written.size, written.sha256, created, metadata, schema
        )
        with self._manifest_lock:  # the file is durable before any manifest names it
            manifest = self._manifest
            versions = {**manifest.versions, version: info}
            history = manifest.history
            if rollback is not None:
                event = {"time": created, **rollback, "to": version, "action": "rollback"}
                history = [*history, event][-HISTORY_LIMIT:]
            updated = dataclasses.replace(
                manifest, current=version, latest=version, versions=versions, history=history
            )
            self._replace_retained(updated)
        self._keep_within_bound()
        self._start_compaction()
        return version

    def _write_version_file(self, name: str, tensors: State, header: dict[str, Any]) -> FileRef:
        chunks = safetensors_chunks(tensors, {"freshrec": json.dumps(header)})
        digest = hashlib.sha256()
        for chunk in chunks:
            digest.update(chunk)
        self._write_atomically(name, chunks)
        return FileRef(name, sum(len(chunk) for chunk in chunks), digest.hexdigest())

    def _replace_retained(self, manifest: _Manifest) -> None:
        """Replace the manifest with `manifest` less the versions retention drops (call under the lock)."""
        kept = _retained(manifest.versions, self.config.keep_versions, manifest.current)
        self._replace_manifest(
            dataclasses.replace(manifest, versions={v: manifest.versions[v] for v in sorted(kept)})
        )

    def _replace_manifest(self, updated: _Manifest, backup: bool = True) -> None:
        """Write `updated` as the manifest (the one it replaces becomes the backup), then delete the files
        it no longer names: only now may they go (readers may still hold them open)."""
        if backup and self._backup_ok:
            self._back_up_manifest()
        self._write_atomically(MANIFEST, updated.to_bytes())
        self._backup_ok = True
        previous, self._manifest = self._manifest, updated
        for name in previous.files() - updated.files():
            _unlink(self.directory / name)

    def _back_up_manifest(self) -> None:
        """Make MANIFEST_BACKUP the manifest about to be replaced: a hard link to its file, which is never
        written again (a replace gives the new manifest a new file), so no bytes are written or fsynced."""
        temporary = self.directory / f".{MANIFEST_BACKUP}.{os.getpid()}.tmp"
        _unlink(temporary)
        try:
            os.link(self.directory / MANIFEST, temporary)
        except FileNotFoundError:
            return  # the first publish: nothing to back up
        except OSError:  # a file system without hard links
            temporary.write_bytes((self.directory / MANIFEST).read_bytes())
        os.replace(temporary, self.directory / MANIFEST_BACKUP)  # made durable with the manifest's rename

    def _keep_within_bound(self) -> None:
        """After a publish: if retention had to keep more than `keep_versions` (no version among the newest
        has its full state yet), wait for the compaction in progress, and if that is not enough, compact the
        oldest of the newest `keep_versions` now. Never happens while compactions keep up (the default
        interval is half the bound)."""
        keep = self.config.keep_versions
        if len(self._manifest.versions) <= keep:
            return
        self.wait_for_compaction()
        manifest = self._manifest
        if len(manifest.versions) > keep and self._snapshot_wanted is None:
            oldest = sorted(manifest.versions)[-keep]
            if manifest.versions[oldest].full is None:
                self._compact(oldest)

    def _start_compaction(self) -> None:
        """Compact the newest version in the background once `compaction_interval` versions followed the
        newest full state (unless it is known unreachable). Full states are then never further apart than
        the interval, which is what bounds retention: if the previous compaction is still running, wait for
        it (only when compactions take longer than `compaction_interval` publishes)."""
        manifest = self._manifest
        newest = manifest.versions.get(manifest.latest)
        if self._compactor is None or self._snapshot_wanted is not None or newest is None:
            return
        full = max(manifest.newest_full(), self._compacting)  # the one in progress counts already
        if newest.full is None and manifest.latest - full >= self.config.compaction_interval:
            self.wait_for_compaction()
            if self._snapshot_wanted is None:  # the previous one may have failed
                self._compacting = manifest.latest
                self._compaction = self._compactor.submit(self._compact, manifest.latest)

    def _compact(self, version: int) -> None:
        """Write the full state of delta `version` from the files that lead to it and name it in the
        manifest. A failure is logged and makes the writer want a snapshot; it never raises."""
        try:
            manifest = self._manifest
            info = manifest.versions.get(version)
            if info is None or info.full is not None:
                return
            damaged: list[StoreCorruptError] = []
            found = self._load_along(manifest, version, damaged)
            if self._dropped_meanwhile(damaged):
                return  # retention dropped the files we were reading: the version went with them
            if found is None or found[1].version != version:
                self._compaction_failed(version, "; ".join(map(str, damaged)))
                return
            tensors, _ = _snapshot_tensors(found[0])
            header = {
                "version": version,
                "kind": "snapshot",
                "base": None,
                "created": info.created,
                "compacted": time.time(),
                "metadata": info.metadata,
            }
            written = self._write_version_file(f"v{version:010d}.snapshot.safetensors", tensors, header)
            with self._manifest_lock:
                manifest = self._manifest
                info = manifest.versions.get(version)
                if info is None or not self.writable:  # dropped (or closed) while we wrote
                    _unlink(self.directory / written.file)
                    return
                versions = {**manifest.versions, version: dataclasses.replace(info, compacted=written)}
                self._replace_retained(dataclasses.replace(manifest, versions=versions))
        except Exception as error:  # noqa: BLE001 - a compaction must never take the writer down
            self._compaction_failed(version, repr(error))

    def _compaction_failed(self, version: int, reason: str) -> None:
        self._compaction_failures += 1
        self._snapshot_wanted = f"version {version} could not be compacted: {reason}"
        _log.warning(
            "model store %s: %s; the trainer publishes a full snapshot next",
            self.directory,
            self._snapshot_wanted,
        )

    def _write_atomically(self, name: str, data: bytes | Sequence[memoryview]) -> None:
        write_atomically(self.directory / name, data, fsync=self.config.fsync)

    def _writer_manifest(self, operation: str) -> _Manifest:
        if self._lock_fd is None:
            raise StoreError(
                f"{operation} needs the writer: this store of {self.directory} was opened read-only "
                "(use ModelStore(StoreConfig(directory)) in the one writing process)"
            )
        return self._manifest

    def _acquire_lock(self) -> int:
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise StoreLockedError(
                    f"the store {self.directory} already has a writer (process {holder}); a store has one "
                    "writer: stop it, or open this one read-only with ModelStore.open(directory)"
                ) from error
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd

    def _remove_unnamed_files(self) -> None:
        """Drop leftovers of a writer that died mid-publish: temp files and version files never named."""
        named = self._manifest.files()
        for path in self.directory.iterdir():
            stray = path.name.endswith(".tmp") or bool(_VERSION_FILE.match(path.name))
            if stray and path.name not in named:
                _unlink(path)

    def _highest_file(self) -> int:
        """The highest version number a version file in the directory carries (0: none)."""
        found = (_VERSION_FILE.match(path.name) for path in self.directory.iterdir())
        return max((int(match.group(1)) for match in found if match), default=0)

    # ------------------------------------------------------------------ internals: reading
    def _read_manifest(self) -> _Manifest | None:
        """The manifest (None: nothing published), from MANIFEST_BACKUP when MANIFEST is damaged or
        missing (logged once)."""
        path = self.directory / MANIFEST
        signature = None
        try:
            with open(path, "rb") as file:
                signature = _signature(os.fstat(file.fileno()))
                manifest = _Manifest.from_bytes(file.read(), path)
            self._read_backup = False
        except (FileNotFoundError, StoreCorruptError) as problem:
            manifest = self._read_manifest_backup(problem)
            self._read_backup = manifest is not None
        self._cached = (signature, manifest)
        return manifest

    def _read_manifest_backup(self, problem: Exception) -> _Manifest | None:
        path = self.directory / MANIFEST_BACKUP
        what = f"{self.directory / MANIFEST} is missing" if isinstance(problem, OSError) else str(problem)
        try:
            manifest = _Manifest.from_bytes(path.read_bytes(), path)
        except FileNotFoundError:
            if isinstance(problem, OSError):
                return None  # nothing published yet
            raise StoreCorruptError(f"{what}, and there is no {path} to fall back to") from None
        except StoreCorruptError as error:
            raise StoreCorruptError(f"{what}; its backup is damaged too: {error}") from None
        # The backup may name the files of versions the last publish dropped: leave those versions out.
        versions = {
            v: info
            for v, info in manifest.versions.items()
            if all((self.directory / name).exists() for name in info.files)
        }
        if manifest.current not in versions:
            versions = manifest.versions  # load() will say what is missing
        manifest = dataclasses.replace(manifest, versions=versions)
        self._report(
            f"model store {self.directory}: {what}; reading {path} instead (current version "
            f"{manifest.current}); the writer rewrites the manifest when it next opens or publishes"
        )
        return manifest

    def _current_manifest(self) -> _Manifest:
        if self._lock_fd is not None:
            return self._manifest  # the writer's copy is the truth: only it changes the file
        try:
            signature = _signature(os.stat(self.directory / MANIFEST))
        except FileNotFoundError:
            signature = None
        cached_signature, cached = self._cached
        if cached is not None and signature == cached_signature:
            return cached
        return self._read_manifest() or _Manifest()

    def _dropped_meanwhile(self, damaged: list[StoreCorruptError]) -> bool:
        """Whether a file found missing is one the manifest no longer names (retention dropped it)."""
        missing = {error.missing_file for error in damaged if error.missing_file is not None}
        return bool(missing - self._current_manifest().files())

    def _load_newest_intact(
        self, manifest: _Manifest, damaged: list[StoreCorruptError]
    ) -> tuple[State, LoadedVersion]:
        """The current version, else the newest version before it that intact files lead to."""
        target = manifest.current
        _kept(manifest, target, self.directory)  # nothing published: VersionNotFoundError
        while target in manifest.versions:
            found = self._load_along(manifest, target, damaged)
            if found is not None:
                return found[0], dataclasses.replace(found[1], damaged=tuple(map(str, damaged)))
            # No full state on the way to `target` is intact, so nothing on that way loads: look below it.
            target = _path(manifest.versions, target)[-1].version - 1
        raise StoreCorruptError(
            f"no kept version up to the current one ({manifest.current}) of {self.directory} loads from "
            f"intact files: {'; '.join(map(str, damaged))}; restart the trainer (it publishes a snapshot)",
            next((error.missing_file for error in damaged if error.missing_file), None),
        )

    def _load_exactly(
        self, manifest: _Manifest, version: int, damaged: list[StoreCorruptError]
    ) -> tuple[State, LoadedVersion]:
        _kept(manifest, version, self.directory)
        found = self._load_along(manifest, version, damaged)
        if found is None or found[1].version != version:
            raise StoreCorruptError(
                f"version {version} cannot be loaded: {'; '.join(map(str, damaged))}; stay on the version "
                "you hold or roll back to another kept version",
                next((error.missing_file for error in damaged if error.missing_file), None),
            )
        return found[0], dataclasses.replace(found[1], damaged=tuple(map(str, damaged)))

    def _load_along(
        self, manifest: _Manifest, target: int, damaged: list[StoreCorruptError]
    ) -> tuple[State, LoadedVersion] | None:
        """The state of `target` from the newest intact full state on its way, or if a delta after that
        one is damaged, of the version before that delta (no other full state gets past it: a newer one
        was damaged, an older one needs the same delta). None if no full state on the way is intact.
        Damage found is appended to `damaged`."""
        path = _path(manifest.versions, target)  # newest first
        for at, base in enumerate(path):
            if base.full is None:
                continue
            try:
                state = self._read_full(base)
            except StoreCorruptError as error:
                damaged.append(error)
                continue
            reached, size, deltas = base, base.full.size, []
            for info in reversed(path[:at]):
                try:
                    apply_delta(state, self._read_delta(info))
                except StoreCorruptError as error:
                    damaged.append(error)
                    break
                except StoreError as error:  # verified, yet it does not fit: the writer wrote it wrong
                    damaged.append(StoreCorruptError(f"version {info.version} does not apply: {error}"))
                    break
                reached, size = info, size + info.size
                deltas.append(info.version)
            return state, LoadedVersion(reached.version, base.version, tuple(deltas), reached, size)
        return None

    def _report_damage(self, asked: int, loaded: LoadedVersion) -> None:
        if loaded.version == asked:
            outcome = f"loaded version {asked} from the full state of version {loaded.snapshot}"
        else:
            outcome = f"loaded version {loaded.version} instead of version {asked}"
        self._report(f"model store {self.directory}: {'; '.join(loaded.damaged)}; {outcome}")

    def _report(self, message: str) -> None:
        """Log `message` as a warning the first time this store meets it (a follower retries often)."""
        if message not in self._reported:
            if len(self._reported) > 1000:
                self._reported.clear()
            self._reported.add(message)
            _log.warning(message)

    def _read_verified(self, version: int, ref: FileRef) -> State:
        path = self.directory / ref.file
        try:
            with open(path, "rb") as file:  # once open, a concurrent unlink cannot take the bytes away
                data = file.read()
        except FileNotFoundError:
            raise StoreCorruptError(f"version {version} file {path} is missing", ref.file) from None
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != ref.size or digest != ref.sha256:
            raise StoreCorruptError(
                f"version {version} file {path} is damaged ({len(data)} bytes, sha256 {digest[:12]}...; "
                f"the manifest says {ref.size} bytes, {ref.sha256[:12]}...) and is not applied"
            )
        try:
            return load_tensors(data)
        except Exception as error:  # the hash matched, so the writer itself wrote a bad file
            raise StoreCorruptError(f"version {version} file {path} is not safetensors: {error}") from error

    def _read_full(self, info: VersionInfo) -> State:
        assert info.full is not None
        state = self._read_verified(info.version, info.full)
        for key in [key for key in state if key.startswith(_FILL_PREFIX)]:
            name, fill = key[len(_FILL_PREFIX) :], state.pop(key)
            dtype, shape = info.tensors[name]
            full = np.empty(shape, dtype=dtype)
            kept = len(state[name])
            full[:kept] = state[name]
            full[kept:] = fill
            state[name] = full
        return state

    def _read_delta(self, info: VersionInfo) -> Delta:
        tensors = self._read_verified(info.version, info.own)
        delta = Delta(info.version, int(info.base or 0), metadata=info.metadata)
        for key, array in tensors.items():
            prefix, _, name = key.partition("/")
            if prefix == "rows":
                delta.rows[name] = (array, tensors["values/" + name])
            elif prefix == "replaced":
                delta.replaced[name] = array
            elif prefix != "values":
                raise StoreCorruptError(f"version {info.version} holds unknown tensor {key!r}")
        return delta


def _trim_trailing_rows(array: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """`array` without its trailing run of rows equal to its last row, and that row (None: nothing to trim).

    Model state is slot-addressed over a capacity that is mostly free early on (a 100k-row co-occurrence
    model is 120 MB dense with a few thousand live rows), and free slots are handed out lowest first, so
    the free rows sit at the end, all alike. Rows are compared as bytes: the round trip is exact.
    """
    if array.ndim == 0 or len(array) < _TRIM_MIN_ROWS:
        return array, None
    rows = np.ascontiguousarray(array).reshape(len(array), -1).view(np.uint8)
    last = rows[-1]
    end = len(rows)
    # Scan back in blocks: a full table costs one block, not a pass over everything.
    while end > 0:
        start = max(0, end - _TRIM_BLOCK_ROWS)
        differs = np.flatnonzero((rows[start:end] != last).any(axis=1))
        if len(differs):
            end = start + int(differs[-1]) + 1
            break
        end = start
    if len(array) - end < _TRIM_MIN_ROWS:
        return array, None
    return array[:end], array[-1:]


def _path(versions: dict[int, VersionInfo], version: int) -> list[VersionInfo]:
    """`version` and the versions loading it may need, newest first: back through delta bases to a
    snapshot (or to where the kept chain ends). Each one with a full state can start the load."""
    path = [versions[version]]
    while path[-1].kind == "delta" and path[-1].base in versions:
        path.append(versions[int(path[-1].base)])  # type: ignore[arg-type]
    return path


def _kept(manifest: _Manifest, version: int, directory: Path) -> VersionInfo:
    if version not in manifest.versions:
        kept = sorted(manifest.versions)
        raise VersionNotFoundError(
            f"version {version} is not kept in {directory}; "
            f"kept versions: {kept or 'none (nothing published)'}"
        )
    return manifest.versions[version]


def _retained(versions: dict[int, VersionInfo], keep: int, current: int) -> set[int]:
    """The versions from the oldest full state among the newest `keep` on (whole chains: each loads from
    kept files), plus `current` and what it loads from. With no full state among the newest `keep` (a
    compaction not done yet, or failed), from the full state the oldest of them loads from: loading
    never breaks, the bound waits."""
    newest = sorted(versions)[-keep:]
    start = next((v for v in newest if versions[v].full is not None), None)
    if start is None:
        path = _path(versions, newest[0])
        start = next((info.version for info in path if info.full is not None), path[-1].version)
    kept = {v for v in versions if v >= start}
    for info in _path(versions, current) if current in versions else []:
        kept.add(info.version)
        if info.full is not None:
            break
    return kept


def _snapshot_tensors(state: State) -> tuple[State, dict[str, tuple[str, tuple[int, ...]]]]:
    """The tensors of a snapshot file of `state` (checked, trailing free rows left out) and its schema."""
    tensors: State = {}
    schema = {}
    for name, array in state.items():
        if name.startswith(_FILL_PREFIX):
            raise StoreError(f"state tensor {name!r}: names starting with {_FILL_PREFIX!r} are the store's")
        checked = _checked_array(name, array)
        schema[name] = (str(checked.dtype), tuple(checked.shape))
        tensors[name], fill = _trim_trailing_rows(checked)
        if fill is not None:
            tensors[_FILL_PREFIX + name] = fill
    return tensors, schema


def _checked_array(name: str, array: np.ndarray) -> np.ndarray:
    """A C-contiguous numeric copy-free view of `array`, refused if it is not numeric or not finite."""
    if not isinstance(name, str) or not name or name == "__metadata__":
        raise StoreError(f"tensor name {name!r} is not allowed: use a non-empty string")
    array = np.asarray(array, order="C")  # (ascontiguousarray would turn a 0-d array into 1-d)
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise StoreError(
            f"tensor {name!r} has dtype {array.dtype}; the store keeps only bool, integer and float arrays"
        )
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            bad = np.flatnonzero(~finite.ravel())
            raise NonFiniteValueError(
                f"tensor {name!r} holds {len(bad)} non-finite values (first at flat index {bad[0]}: "
                f"{array.ravel()[bad[0]]}); the model has diverged: do not publish it"
            )
    return array


def _check_rows(
    name: str, rows: np.ndarray, values: np.ndarray, dtype: str, shape: tuple[int, ...], where: str
) -> None:
    if rows.ndim != 1 or (rows.dtype.kind not in "iu" and len(rows)):
        raise StoreError(
            f"{where}: rows of tensor {name!r} must be a 1-D integer array, got {rows.dtype} {rows.shape}"
        )
    if not shape:
        raise StoreError(f"{where}: tensor {name!r} is a scalar and has no rows; send it in replaced")
    expected = (len(rows), *shape[1:])
    if values.shape != expected or str(values.dtype) != dtype:
        raise StoreError(
            f"{where}: values of tensor {name!r} are {values.dtype} {values.shape}, "
            f"expected {dtype} {expected}"
        )
    if len(rows) and (rows.min() < 0 or rows.max() >= shape[0]):
        raise StoreError(
            f"{where}: rows of tensor {name!r} span [{rows.min()}, {rows.max()}], outside [0, {shape[0]})"
        )


def _json_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    def encode(value: Any) -> Any:
        if isinstance(value, np.generic | np.ndarray):
            return value.tolist()
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.asdict(value)
        if isinstance(value, Path):
            return str(value)
        raise StoreError(
            f"metadata value {value!r} of type {type(value).__name__} is not JSON; pass plain values"
        )

    return json.loads(json.dumps(metadata or {}, default=encode))


def _signature(stat: os.stat_result) -> tuple[int, int, int]:
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
