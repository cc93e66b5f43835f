"""What `freshrec status` says of a model store: the version served, how old and how far behind the
trainer it is, what it learned, and what the gate and the guardrail decided.

It only reads (the manifest, the writer's status file, checkpoint headers), so it runs beside a live
trainer and servers; it never takes the writer's lock, never loads a model and never reads a tensor.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from freshrec.durable import DamagedFileError, read_tensor_metadata
from freshrec.publishing.store import ModelStore
from freshrec.training.checkpoint import CheckpointStore

__all__ = ["store_status"]

#: Gate decisions and rollbacks shown, newest last.
RECENT = 5


def store_status(
    store_dir: str | Path, checkpoint_dir: str | Path | None = None, now: float | None = None
) -> dict[str, Any]:
    """A JSON-able summary of the store in `store_dir`.

    Parameters
    ----------
    store_dir
        The model store (``publishing.store``).
    checkpoint_dir
        The trainer's checkpoints (default: ``checkpoints/`` inside the store), read for the lag: the
        trainer has learned every event before its newest checkpoint's log offset.
    now
        Epoch seconds the ages are measured at (default: the wall clock).

    Keys: ``store``, ``published`` (false: nothing yet; the rest is then mostly None), ``current``,
    ``latest`` (differs from current after a rollback), ``kind``, ``created``, ``age_seconds``,
    ``events_trained``, ``log_offset``, ``versions_kept``, ``keep_versions``, ``trainer`` (its newest
    checkpoint: ``log_offset``, ``age_seconds``; None without one), ``lag_events`` (events the trainer
    learned that the current version has not), ``lag_versions`` (``latest - current``), ``gate``
    (``published``, ``held``, ``quarantined``, ``recent`` decisions), ``rollbacks`` (``count``, ``recent``:
    those of the manifest history, by hand or by the guardrail).
    """
    store_dir = Path(store_dir)
    now = time.time() if now is None else now
    store = ModelStore.open(store_dir)
    try:
        versions = {info.version: info for info in store.versions()}
        current = store.current_version()
        history = store.history()
        writer = store.read_status()
    finally:
        store.close()
    info = versions.get(current)
    metadata = info.metadata if info is not None else {}
    writer_store = writer.get("store") or {}
    trainer = _newest_checkpoint(Path(checkpoint_dir) if checkpoint_dir else store_dir / "checkpoints", now)
    log_offset = metadata.get("log_offset")
    latest = max(versions, default=0)
    gate = writer.get("gate") or {}
    rollbacks = [event for event in history if event.get("action") == "rollback"]
    return {
        "store": str(store_dir),
        "published": info is not None,
        "current": current,
        "latest": latest,
        "kind": info.kind if info is not None else None,
        "created": info.created if info is not None else None,
        "age_seconds": now - info.created if info is not None else None,
        "events_trained": metadata.get("events_trained"),
        "log_offset": log_offset,
        "versions_kept": len(versions),
        "keep_versions": writer_store.get("keep_versions"),
        "trainer": trainer,
        "lag_events": (
            max(0, trainer["log_offset"] - int(log_offset))
            if trainer is not None and log_offset is not None
            else None
        ),
        "lag_versions": latest - current if info is not None else None,
        "gate": {
            "published": gate.get("published"),
            "held": gate.get("held"),
            "quarantined": gate.get("quarantined"),
            "recent": list(gate.get("decisions") or [])[-RECENT:],
        },
        "rollbacks": {"count": len(rollbacks), "recent": rollbacks[-RECENT:]},
    }


def _newest_checkpoint(directory: Path, now: float) -> dict[str, Any] | None:
    """The log offset and age of the newest checkpoint whose header reads (None: none does)."""
    for path in reversed(CheckpointStore(directory).paths()):  # the trainer's own list, oldest first
        try:
            metadata = read_tensor_metadata(path)
            position, created = int(metadata["position"]), float(metadata["created"])
        except (DamagedFileError, KeyError, TypeError, ValueError):
            continue  # the trainer logs a damaged checkpoint when it starts; here, the previous one says
        return {"log_offset": position, "age_seconds": now - created, "file": path.name}
    return None
