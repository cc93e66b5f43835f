"""Rolling the served model back to a kept version, from any process.

A store has exactly one writer (the trainer). When no trainer runs, `rollback` takes the writer lock and
rolls back itself. When a trainer holds the store, the rollback must go through it, for two reasons: only
the writer may change the manifest, and the trainer must also reset its own model to the rolled-back
version, or its next publish would put the bad parameters back. So `rollback` leaves a request file in the
store directory, the trainer's publisher picks it up within its poll interval (`serve_rollback_request`),
and the asking process waits until the manifest history records the answer under the request's id.

It must never touch the manifest from a process that does not hold the writer lock.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from freshrec.publishing.store import (
    MANIFEST,
    ModelStore,
    StoreConfig,
    StoreError,
    StoreLockedError,
    VersionNotFoundError,
)

#: The pending request, in the store directory; written atomically, removed by the writer that answers it.
ROLLBACK_REQUEST = "rollback-request.json"


class RollbackTimeoutError(StoreError):
    """The store's writer did not answer a rollback request in time."""


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
    """

    version: int
    previous: int
    via: Literal["store", "trainer"]


def rollback(directory: str | Path, to: int, reason: str = "", timeout: float = 10.0) -> RollbackOutcome:
    """Make the kept version `to` the one served, whether or not a trainer is running.

    Raises `VersionNotFoundError` (listing the kept versions) if `to` is not kept, and
    `RollbackTimeoutError` if a running trainer does not answer within `timeout` seconds (the request is then
    withdrawn, so that it cannot take effect later by surprise).

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
    """The request waiting in `directory`, if any (the writer's side; a stat when there is none)."""
    try:
        data = (Path(directory) / ROLLBACK_REQUEST).read_bytes()
    except FileNotFoundError:
        return None
    try:
        return RollbackRequest(**json.loads(data))
    except (ValueError, TypeError) as error:
        # Written atomically, so this is not a torn write: someone put a bad file there. Drop it.
        _withdraw(Path(directory), None)
        path = Path(directory) / ROLLBACK_REQUEST
        raise StoreError(f"{path} is not a rollback request ({error}); it was removed") from None


def answer_rollback(store: ModelStore, request: RollbackRequest) -> bool:
    """The writer's side: roll `store` back as `request` asks and remove the request. False (recorded in
    the history as refused, for the asker to read) if the version is not kept."""
    try:
        store.rollback(request.to, request.reason, request_id=request.id)
        return True
    except VersionNotFoundError:
        return False
    finally:
        _withdraw(store.directory, request.id)


def _ask_writer(directory: Path, to: int, reason: str, timeout: float) -> RollbackOutcome:
    request = RollbackRequest(uuid.uuid4().hex, int(to), reason, time.time())
    temporary = directory / f".{ROLLBACK_REQUEST}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(asdict(request)))
    os.replace(temporary, directory / ROLLBACK_REQUEST)
    reader = ModelStore.open(directory)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in reversed(reader.history()):
            if event.get("request") != request.id:
                continue
            if event["action"] == "rollback":
                return RollbackOutcome(int(event["to"]), int(event["from"]), "trainer")
            raise VersionNotFoundError(event.get("error", f"version {to} is not kept"))
        time.sleep(0.02)
    _withdraw(directory, request.id)
    raise RollbackTimeoutError(
        f"rollback to version {to}: the trainer holding {directory} did not answer within {timeout:g} s "
        "(is it stuck on a long batch?); the request was withdrawn: retry, or stop the trainer and roll back"
    )


def _withdraw(directory: Path, request_id: str | None) -> None:
    """Remove the pending request if it is still `request_id` (None: whatever it is)."""
    path = directory / ROLLBACK_REQUEST
    try:
        if request_id is not None and json.loads(path.read_bytes()).get("id") != request_id:
            return  # a newer request replaced ours: leave it to its writer
        path.unlink()
    except (FileNotFoundError, ValueError):
        pass
