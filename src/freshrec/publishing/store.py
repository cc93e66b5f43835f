"""The model store: a directory of numbered model versions (full snapshots and row deltas) named by an
atomically replaced manifest, written by one trainer and read by any number of serving processes.

Layout of the directory::

    manifest.json                        the only source of truth: kept versions, `current`, history
    v0000000007.snapshot.safetensors     a full state
    v0000000008.delta.safetensors        rows/<name>, values/<name>, replaced/<name> relative to version 7
    writer.lock                          held (fcntl) by the one writer

A version file is written under a temporary name, fsynced and renamed before the manifest that names it,
and the manifest records each file's size and sha256: a reader trusts only files the manifest names and
verifies them before use, so a half-written, damaged or stray file is never applied.

It must never unpickle anything (safetensors and JSON only: a model file cannot run code), never let a
non-finite value into a version, and never modify or delete a file that the manifest still names.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from safetensors.numpy import load as load_tensors

from freshrec.errors import ConfigError, FreshrecError

MANIFEST = "manifest.json"
LOCK_FILE = "writer.lock"
#: The writer's latest state for operators (the publish gate's decisions): replaced, never appended.
STATUS = "status.json"
FORMAT = 2
#: Manifest formats this freshrec reads: 1 wrote every version's metadata inline.
READABLE_FORMATS = (1, 2)
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


class StoreError(FreshrecError):
    """The model store cannot do what was asked (wrong base, unknown version, invalid state...)."""


class StoreCorruptError(StoreError):
    """A file the manifest names is missing, truncated or altered: it is never applied."""


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
        Keep the last N versions; older ones are dropped unless a kept delta needs them to load.
    fsync
        Flush every file and the directory to disk before the manifest names it (off: faster, for tests
        and benchmarks only; a power loss may then leave a manifest naming an empty file).

    >>> StoreConfig("/tmp/store").keep_versions
    20
    """

    directory: str | Path
    keep_versions: int = 20
    fsync: bool = True

    def __post_init__(self) -> None:
        if self.keep_versions < 1:
            raise ConfigError(
                f"StoreConfig.keep_versions={self.keep_versions}: keep at least 1 version (default 20)"
            )


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

    def as_json(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The manifest entry, with each `SHARED_METADATA` value replaced by ``{"shared": digest}``, and
        the shared values by digest (computed once: the manifest is rewritten on every publish with every
        kept version, and a deep `asdict` of 20 entries' metadata took 22 ms of each publish). Do not
        modify."""
        cached = self.__dict__.get("_json")
        if cached is None:
            entry = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
            entry["tensors"] = {name: [dtype, list(shape)] for name, (dtype, shape) in self.tensors.items()}
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
        return cls(**{**entry, "tensors": tensors, "metadata": metadata})

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
    """

    version: int
    snapshot: int
    deltas: tuple[int, ...]
    info: VersionInfo
    bytes_read: int

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

    def to_bytes(self) -> bytes:
        entries, shared = [], {}
        for version in sorted(self.versions):
            entry, values = self.versions[version].as_json()
            entries.append(entry)
            shared.update(values)
        document = {
            "format": FORMAT,
            "current": self.current,
            "latest": self.latest,
            "shared": shared,
            "versions": entries,
            "history": self.history,
        }
        return json.dumps(document, indent=1).encode()

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

    Parameters
    ----------
    config
        Directory, retention and fsync policy.

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
        self.config = config
        self.directory = Path(config.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = self._acquire_lock()
        try:
            self._manifest = self._read_manifest() or _Manifest()
            self._remove_unnamed_files()
        except BaseException:
            self.close()
            raise
        self._cached: tuple[tuple[int, int, int] | None, _Manifest | None] = (None, None)

    @classmethod
    def open(cls, directory: str | Path) -> ModelStore:
        """Open a store read-only. A store not yet created or still empty has current version 0."""
        store = cls.__new__(cls)
        store.config = StoreConfig(directory)
        store.directory = Path(directory)
        store._lock_fd = None
        store._manifest = None  # type: ignore[assignment]  # readers always go to the file
        store._cached = (None, None)
        return store

    @property
    def writable(self) -> bool:
        return self._lock_fd is not None

    def close(self) -> None:
        """Release the writer lock (a reader has nothing to release)."""
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
        """The full state of `version` (default: the current one): the newest snapshot at or before it,
        then each delta after it in order. Every file is verified against the manifest before use.

        Raises `VersionNotFoundError` if the version is not kept, `StoreCorruptError` if a file it needs is
        damaged (nothing is returned: the caller keeps what it has).
        """
        for attempt in range(3):
            manifest = self._current_manifest()
            target = manifest.current if version is None else version
            chain = _chain(manifest, target, self.directory)
            try:
                state, size = self._read_snapshot(chain[0])
                for info in chain[1:]:
                    delta, delta_size = self._read_delta(info)
                    apply_delta(state, delta)
                    size += delta_size
            except FileNotFoundError as missing:
                # Retention may drop a file between our manifest read and the open: look again.
                if attempt < 2 and self._manifest_changed_since(manifest):
                    continue
                raise StoreCorruptError(
                    f"{missing.filename} is named by the manifest of {self.directory} but missing; "
                    "this version cannot be loaded: roll back to another kept version or publish a snapshot"
                ) from missing
            loaded = LoadedVersion(
                target, chain[0].version, tuple(i.version for i in chain[1:]), chain[-1], size
            )
            return state, loaded
        raise AssertionError("unreachable")

    def read_delta(self, version: int) -> Delta:
        """The changes of delta `version` relative to ``version - 1``, verified, for a server that holds
        ``version - 1`` (apply with `apply_delta`). Raises `StoreError` if `version` is a snapshot."""
        manifest = self._current_manifest()
        info = _kept(manifest, version, self.directory)
        if info.kind != "delta":
            raise StoreError(f"version {version} is a snapshot, not a delta; load it with load({version})")
        try:
            return self._read_delta(info)[0]
        except FileNotFoundError as missing:
            raise VersionNotFoundError(
                f"version {version} was dropped while being read; load() the current version"
            ) from missing

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

    # ------------------------------------------------------------------ writing
    def publish_snapshot(self, state: State, metadata: dict[str, Any] | None = None) -> int:
        """Publish the full `state` as the next version and make it current; returns its number.

        Raises `NonFiniteValueError` (naming the tensor) if any float holds NaN or infinity.
        """
        manifest = self._writer_manifest("publish_snapshot")
        tensors: State = {}
        schema = {}
        for name, array in state.items():
            if name.startswith(_FILL_PREFIX):
                raise StoreError(
                    f"state tensor {name!r}: names starting with {_FILL_PREFIX!r} are the store's"
                )
            checked = _checked_array(name, array)
            schema[name] = (str(checked.dtype), tuple(checked.shape))
            tensors[name], fill = _trim_trailing_rows(checked)
            if fill is not None:
                tensors[_FILL_PREFIX + name] = fill
        return self._publish("snapshot", tensors, schema, None, _json_metadata(metadata), manifest)

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
                self._record(manifest, {**event, "action": "rollback-refused", "error": str(error)})
            raise
        self._record(dataclasses.replace(manifest, current=to), {**event, "action": "rollback"})

    def _record(self, manifest: _Manifest, event: dict[str, Any]) -> None:
        updated = dataclasses.replace(manifest, history=[*manifest.history, event][-HISTORY_LIMIT:])
        self._write_atomically(MANIFEST, updated.to_bytes())
        self._manifest = updated

    def write_status(self, document: dict[str, Any]) -> None:
        """Replace the status file with `document` (JSON). Atomic but not fsynced: it describes the writer
        (e.g. held gate decisions, which never become versions) and losing it on a crash loses nothing."""
        self._writer_manifest("write_status")
        temporary = self.directory / f".{STATUS}.{os.getpid()}.tmp"
        temporary.write_text(json.dumps(_json_metadata(document)))
        os.replace(temporary, self.directory / STATUS)

    def read_status(self) -> dict[str, Any]:
        """The last `write_status` document ({} if none)."""
        try:
            return json.loads((self.directory / STATUS).read_bytes())
        except (FileNotFoundError, ValueError):
            return {}

    # ------------------------------------------------------------------ internals
    def _publish(
        self,
        kind: VersionKind,
        tensors: State,
        schema: dict[str, tuple[str, tuple[int, ...]]],
        base: int | None,
        metadata: dict[str, Any],
        manifest: _Manifest,
    ) -> int:
        version = manifest.latest + 1
        created = time.time()
        header = {"version": version, "kind": kind, "base": base, "created": created, "metadata": metadata}
        chunks = _safetensors_chunks(tensors, {"freshrec": json.dumps(header)})
        digest = hashlib.sha256()
        for chunk in chunks:
            digest.update(chunk)
        name = f"v{version:010d}.{kind}.safetensors"
        self._write_atomically(name, chunks)  # the file is durable before any manifest names it
        size = sum(len(chunk) for chunk in chunks)
        info = VersionInfo(version, kind, name, base, size, digest.hexdigest(), created, metadata, schema)
        versions = {**manifest.versions, version: info}
        kept = _retained(versions, self.config.keep_versions, version)
        updated = dataclasses.replace(
            manifest, current=version, latest=version, versions={v: versions[v] for v in sorted(kept)}
        )
        self._write_atomically(MANIFEST, updated.to_bytes())
        self._manifest = updated
        # Only now that no manifest names them may the dropped files go (readers may still hold them open).
        for dropped in set(versions) - kept:
            _unlink(self.directory / versions[dropped].file)
        return version

    def _write_atomically(self, name: str, data: bytes | Sequence[memoryview]) -> None:
        temporary = self.directory / f".{name}.{os.getpid()}.tmp"
        with open(temporary, "wb") as file:
            for chunk in [data] if isinstance(data, bytes) else data:
                file.write(chunk)
            file.flush()
            if self.config.fsync:
                os.fsync(file.fileno())
        os.replace(temporary, self.directory / name)
        if self.config.fsync:  # the rename itself is durable only once the directory is
            directory = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

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
        named = {info.file for info in self._manifest.versions.values()}
        for path in self.directory.iterdir():
            stray = path.name.endswith(".tmp") or bool(_VERSION_FILE.match(path.name))
            if stray and path.name not in named:
                _unlink(path)

    def _read_manifest(self) -> _Manifest | None:
        path = self.directory / MANIFEST
        try:
            with open(path, "rb") as file:
                signature = _signature(os.fstat(file.fileno()))
                manifest = _Manifest.from_bytes(file.read(), path)
        except FileNotFoundError:
            return None
        self._cached = (signature, manifest)
        return manifest

    def _current_manifest(self) -> _Manifest:
        if self._lock_fd is not None:
            return self._manifest  # the writer's copy is the truth: only it changes the file
        try:
            signature = _signature(os.stat(self.directory / MANIFEST))
        except FileNotFoundError:
            return _Manifest()
        cached_signature, cached = self._cached
        if cached is not None and signature == cached_signature:
            return cached
        return self._read_manifest() or _Manifest()

    def _manifest_changed_since(self, manifest: _Manifest) -> bool:
        return self._current_manifest() is not manifest

    def _read_verified(self, info: VersionInfo) -> State:
        path = self.directory / info.file
        with open(path, "rb") as file:  # once open, a concurrent unlink cannot take the bytes away
            data = file.read()
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != info.size or digest != info.sha256:
            raise StoreCorruptError(
                f"version {info.version} file {path} has {len(data)} bytes and sha256 {digest[:12]}..., the "
                f"manifest says {info.size} bytes and {info.sha256[:12]}...: the file is damaged and is not "
                "applied; stay on the version you hold or roll back to another kept version"
            )
        try:
            return load_tensors(data)
        except Exception as error:  # the hash matched, so the writer itself wrote a bad file
            raise StoreCorruptError(
                f"version {info.version} file {path} is not safetensors: {error}"
            ) from error

    def _read_snapshot(self, info: VersionInfo) -> tuple[State, int]:
        state = self._read_verified(info)
        for key in [key for key in state if key.startswith(_FILL_PREFIX)]:
            name, fill = key[len(_FILL_PREFIX) :], state.pop(key)
            dtype, shape = info.tensors[name]
            full = np.empty(shape, dtype=dtype)
            kept = len(state[name])
            full[:kept] = state[name]
            full[kept:] = fill
            state[name] = full
        return state, info.size

    def _read_delta(self, info: VersionInfo) -> tuple[Delta, int]:
        tensors = self._read_verified(info)
        delta = Delta(info.version, int(info.base or 0), metadata=info.metadata)
        for key, array in tensors.items():
            prefix, _, name = key.partition("/")
            if prefix == "rows":
                delta.rows[name] = (array, tensors["values/" + name])
            elif prefix == "replaced":
                delta.replaced[name] = array
            elif prefix != "values":
                raise StoreCorruptError(f"version {info.version} holds unknown tensor {key!r}")
        return delta, info.size


_SAFETENSORS_DTYPES = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "uint16": "U16", "int16": "I16", "uint32": "U32",
    "int32": "I32", "uint64": "U64", "int64": "I64", "float16": "F16", "float32": "F32", "float64": "F64",
}  # fmt: skip


def _safetensors_chunks(tensors: State, metadata: dict[str, str]) -> list[memoryview]:
    """The bytes of a safetensors file as views of the arrays themselves: a 57 MB state is hashed and
    written without first being copied into one buffer (``safetensors.numpy.save`` spends ~4x longer)."""
    header: dict[str, Any] = {"__metadata__": metadata}
    views, offset = [], 0
    for name in sorted(tensors):
        array = tensors[name]
        if array.dtype.name not in _SAFETENSORS_DTYPES:
            raise StoreError(f"tensor {name!r} has dtype {array.dtype}, which safetensors cannot hold")
        # safetensors is little-endian and C-ordered; reshape(-1) keeps 0-d and empty arrays viewable
        flat = np.ascontiguousarray(array.reshape(-1), dtype=array.dtype.newbyteorder("<")).view(np.uint8)
        entry = {"dtype": _SAFETENSORS_DTYPES[array.dtype.name], "shape": list(array.shape)}
        header[name] = {**entry, "data_offsets": [offset, offset + flat.nbytes]}
        views.append(memoryview(flat))
        offset += flat.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    return [memoryview(struct.pack("<Q", len(encoded)) + encoded), *views]


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


def _chain(manifest: _Manifest, version: int, directory: Path) -> list[VersionInfo]:
    """The versions to read for `version`: its snapshot, then each delta up to it."""
    chain = [_kept(manifest, version, directory)]
    while chain[-1].kind == "delta":
        base = chain[-1].base
        if base not in manifest.versions:
            raise StoreCorruptError(
                f"version {chain[-1].version} is a delta on version {base}, which {directory} no longer "
                "keeps; publish a snapshot"
            )
        chain.append(manifest.versions[base])
    return chain[::-1]


def _kept(manifest: _Manifest, version: int, directory: Path) -> VersionInfo:
    if version not in manifest.versions:
        kept = sorted(manifest.versions)
        raise VersionNotFoundError(
            f"version {version} is not kept in {directory}; "
            f"kept versions: {kept or 'none (nothing published)'}"
        )
    return manifest.versions[version]


def _retained(versions: dict[int, VersionInfo], keep: int, current: int) -> set[int]:
    """The last `keep` versions and `current`, plus every version their loading needs."""
    needed: set[int] = set()
    for version in {*sorted(versions)[-keep:], current}:
        while version not in needed:  # walk back to the snapshot; stop where a chain is already kept
            needed.add(version)
            info = versions[version]
            if info.kind == "snapshot":
                break
            version = int(info.base)  # type: ignore[arg-type]
    return needed


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
