"""Rolling the served model back to a kept version, from any process.

A store has exactly one writer (the trainer). When no trainer runs, `rollback` takes the writer lock and
rolls back itself. When a trainer holds the store, the rollback must go through it, for two reasons: only
the writer may change the manifest, and the trainer must also reset its own model to the rolled-back
version, or its next publish would put the bad parameters back. So `rollback` leaves a request file in the
store directory, the trainer's publisher picks it up within its poll interval (`pending_rollback`,
`answer_rollback`), and the asking process waits until the manifest history records the answer under the
request's id.

Each request has a file of its own, and whoever removes it from under its request name decides its fate,
atomically: the writer claims it by renaming it (then answers it at once), the asker withdraws it on
timeout by unlinking it. Exactly one of the two succeeds, so an asker that could not withdraw knows the
request was claimed and waits for its outcome instead of reporting a timeout that is not true. The answer
is recorded in the manifest before the claimed file is removed, so a claimed file gone without a record
means not applied; a claimed file left by a writer that died is never answered by the next one (it
removes it), so the asker can conclude "not applied" once the writer lock is free.

It must never touch the manifest from a process that does not hold the writer lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from freshrec.publishing.store import (
    LOCK_FILE,
    MANIFEST,
    ModelStore,
    StoreConfig,
    StoreError,
    StoreLockedError,
    VersionNotFoundError,
)

#: A waiting request is ``rollback-request.<time_ns>.<id>.json`` in the store directory (oldest first by
#: name); the writer claims it by renaming it to ``rollback-claimed.<time_ns>.<id>.json``.
ROLLBACK_REQUEST = "rollback-request."
ROLLBACK_CLAIMED = "rollback-claimed."
_SUFFIX = ".json"
#: How often the asker polls the manifest history for the answer.
_POLL_SECONDS = 0.01
#: A claimed request is answered at once; after this long without an answer the asker checks whether the
#: writer is still alive (a lock test it never makes while the writer answers normally).
_CLAIMED_GRACE_SECONDS = 1.0
#: The asker gives up on a claimed request after this long (a writer hung while answering): the outcome
#: is then reported as unknown, never as withdrawn.
_CLAIMED_LIMIT_SECONDS = 120.0


class RollbackTimeoutError(StoreError):
    """The rollback was not applied: the store's writer did not answer in time (the request was withdrawn),
    or it claimed the request and stopped before answering. `request_id` names the request."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class RollbackOutcomeUnknownError(StoreError):
    """The writer claimed the request and neither answered nor stopped within `_CLAIMED_LIMIT_SECONDS`:
    whether it was applied shows in the manifest history later, under `request_id`."""

    def __init__(self, message: str, request_id: str) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True)
class RollbackRequest:
    """What a process without the writer lock asks of the writer."""

    id: str
    to: int
    reason: str
    requested: float


@dataclass(frozen=True)
class RollbackOutcome:
    """A rollback that happened.

    Attributes
    ----------
    version
        The version now current.
    previous
        The version that was current before.
    via
        ``"store"``: this process held the writer lock and rolled back itself; ``"trainer"``: the running
        trainer did it on request (and reset its model to `version`).
    request
        The id of the request the trainer answered (None when rolled back directly); the manifest history
        records it.
    """

    version: int
    previous: int
    via: Literal["store", "trainer"]
    request: str | None = field(default=None, repr=False, compare=False)


def rollback(directory: str | Path, to: int, reason: str = "", timeout: float = 10.0) -> RollbackOutcome:
    """Make the kept version `to` the one served, whether or not a trainer is running.

    Returns only once the outcome is known. Raises `VersionNotFoundError` (listing the kept versions) if
    `to` is not kept, and `RollbackTimeoutError` if it was not applied because a running trainer did not
    take the request within `timeout` seconds (the request is then withdrawn, so that it cannot take effect
    later by surprise). A request the trainer took just before the timeout is waited for and reported as
    it ended.

    >>> import tempfile, numpy as np
    >>> folder = tempfile.mkdtemp()
    >>> with ModelStore(StoreConfig(folder, fsync=False)) as store:
    ...     for value in (1.0, 2.0):
    ...         _ = store.publish_snapshot({"w": np.full(2, value, np.float32)})
    >>> rollback(folder, to=1, reason="bad update")
    RollbackOutcome(version=1, previous=2, via='store')
    """
    directory = Path(directory)
    if not (directory / MANIFEST).is_file():
        raise StoreError(f"no model store at {directory} (no {MANIFEST}): check the store directory")
    try:
        store = ModelStore(StoreConfig(directory))
    except StoreLockedError:
        return _ask_writer(directory, to, reason, timeout)
    with store:
        previous = store.current_version()
        store.rollback(to, reason)
        return RollbackOutcome(to, previous, "store")


def pending_rollback(directory: str | Path) -> RollbackRequest | None:
    """The writer's side: claim the oldest waiting request, if any (one directory listing when there is
    none). A claimed request must be answered with `answer_rollback`; its asker can no longer withdraw it.

    Claimed files found here were left by a writer that died before answering (this one answers what it
    claims at once): they are removed unanswered, as their askers, seeing the writer lock free, have
    reported them not applied.
    """
    directory = Path(directory)
    with os.scandir(directory) as entries:
        names = sorted(e.name for e in entries if e.name.endswith(_SUFFIX) and e.name.startswith("rollback-"))
    for name in names:
        if name.startswith(ROLLBACK_CLAIMED):
            (directory / name).unlink(missing_ok=True)
    for name in names:
        if not name.startswith(ROLLBACK_REQUEST):
            continue
        claimed = directory / (ROLLBACK_CLAIMED + name[len(ROLLBACK_REQUEST) :])
        try:
            os.rename(directory / name, claimed)
        except FileNotFoundError:
            continue  # withdrawn by its asker a moment ago
        try:
            return RollbackRequest(**json.loads(claimed.read_bytes()))
        except (ValueError, TypeError) as error:
            # Written atomically, so this is not a torn write: someone put a bad file there. Drop it.
            claimed.unlink(missing_ok=True)
            raise StoreError(
                f"{directory / name} is not a rollback request ({error}); it was removed"
            ) from None
    return None


def answer_rollback(store: ModelStore, request: RollbackRequest) -> bool:
    """The writer's side: roll `store` back as the claimed `request` asks, then remove the request. False
    (recorded in the history as refused, for the asker to read) if the version is not kept."""
    try:
        store.rollback(request.to, request.reason, request_id=request.id)
        return True
    except VersionNotFoundError:
        return False
    finally:
        # After the manifest records the answer: an asker that sees the file gone reads the history next.
        for path in _request_files(store.directory, request.id, ROLLBACK_CLAIMED):
            path.unlink(missing_ok=True)


def _ask_writer(directory: Path, to: int, reason: str, timeout: float) -> RollbackOutcome:
    request = RollbackRequest(uuid.uuid4().hex, int(to), reason, time.time())
    stem = f"{time.time_ns():020d}.{request.id}{_SUFFIX}"
    waiting, claimed = directory / (ROLLBACK_REQUEST + stem), directory / (ROLLBACK_CLAIMED + stem)
    temporary = directory / f".{ROLLBACK_REQUEST}{request.id}.tmp"
    temporary.write_text(json.dumps(asdict(request)))
    os.replace(temporary, waiting)
    reader = ModelStore.open(directory)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outcome = _answer_of(reader, request)
        if outcome is not None:
            return outcome
        if not waiting.exists():  # claimed: from now on its outcome decides, not the timeout
            return _await_claimed(reader, request, claimed)
        time.sleep(max(0.0, min(_POLL_SECONDS, deadline - time.monotonic())))
    try:
        waiting.unlink()
    except FileNotFoundError:
        return _await_claimed(reader, request, claimed)  # the writer took it: its outcome decides
    raise RollbackTimeoutError(
        f"rollback to version {to}: the trainer holding {directory} did not take the request within "
        f"{timeout:g} s (is it stuck on a long batch?); the request was withdrawn and not applied: retry, or "
        "stop the trainer and roll back",
        request.id,
    )


def _await_claimed(reader: ModelStore, request: RollbackRequest, claimed: Path) -> RollbackOutcome:
    """The outcome of a request the writer claimed: its answer, or not applied if the writer dropped it."""
    started = time.monotonic()
    while True:
        gone = not claimed.exists()  # before reading the history: the writer records, then removes
        outcome = _answer_of(reader, request)
        if outcome is not None:
            return outcome
        waited = time.monotonic() - started
        if gone or (waited > _CLAIMED_GRACE_SECONDS and not _writer_holds_lock(reader.directory)):
            outcome = _answer_of(reader, request)  # the writer may have recorded it just before stopping
            if outcome is not None:
                return outcome
            claimed.unlink(missing_ok=True)
            raise RollbackTimeoutError(
                f"rollback to version {request.to}: the trainer holding {reader.directory} took the request "
                "and stopped before answering it; it was not applied: retry",
                request.id,
            )
        if waited > _CLAIMED_LIMIT_SECONDS:
            raise RollbackOutcomeUnknownError(
                f"rollback to version {request.to}: the trainer holding {reader.directory} took the request "
                f"{waited:.0f} s ago and has not answered; whether it applies shows in the store's history "
                f"under request {request.id} (GET /versions, or the manifest)",
                request.id,
            )
        time.sleep(_POLL_SECONDS)


def _answer_of(reader: ModelStore, request: RollbackRequest) -> RollbackOutcome | None:
    """The outcome the manifest history records for `request` (None: not answered yet)."""
    for event in reversed(reader.history()):
        if event.get("request") != request.id:
            continue
        if event["action"] == "rollback":
            return RollbackOutcome(int(event["to"]), int(event["from"]), "trainer", request.id)
        raise VersionNotFoundError(event.get("error", f"version {request.to} is not kept"))
    return None


def _writer_holds_lock(directory: Path) -> bool:
    """Whether a process holds the store's writer lock, without taking it for longer than the test."""
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _request_files(directory: Path, request_id: str, prefix: str) -> list[Path]:
    return list(directory.glob(f"{prefix}*.{request_id}{_SUFFIX}"))
