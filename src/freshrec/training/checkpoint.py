"""Trainer checkpoints: the live loop's whole state at a source position, so that a restarted trainer
learns every event exactly once and re-reads only what came after its newest checkpoint.

A checkpoint holds everything that changes the next step (see `TrainingLoop.state_dict`): the model's
parameters and optimizer state (private arrays included: random generators, the order of free slots), the
feature state (histories, seen items, catalogue, negative sampler), the deduplication window, the
trainer's counters and the evaluator's sums, with the source position every event before which it has
learned. It is one safetensors file, written atomically (temporary file, fsync, rename) with the SHA-256
of its tensors in its header; the newest few are kept, so that a damaged newest one is reported and the
previous one used.

The state is copied on the loop's thread (a consistent cut between two batches), and hashed and written
by a background thread: the trainer does not wait for the disk. A source position is committed only once
the checkpoint that holds its effect is on disk.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freshrec import __version__
from freshrec.durable import DamagedFileError, read_tensor_file, write_tensor_file
from freshrec.errors import ConfigError
from freshrec.model_state import State

__all__ = ["Checkpoint", "CheckpointConfig", "CheckpointStore", "CheckpointWriter"]

log = logging.getLogger(__name__)

#: Changes when the meaning of a checkpoint's arrays does: an older trainer's checkpoint is then ignored.
FORMAT = 1
_FILE = re.compile(r"^checkpoint-(\d{12})\.safetensors$")


@dataclass
class CheckpointConfig:
    """When and where `freshrec train` checkpoints (the ``[checkpoints]`` section).

    Parameters
    ----------
    directory
        Where checkpoints are written (None: ``checkpoints/`` inside the model store's directory).
    interval_seconds
        Checkpoint at most this often while events arrive (and always on SIGTERM): a trainer killed
        without warning re-learns at most about this many seconds of events, each exactly once.
    keep
        Newest checkpoints kept: an older one is the fall-back when the newest is damaged.
    fsync
        Flush each checkpoint to disk before it counts (off: for tests and benchmarks only).
    """

    directory: Path | None = None
    interval_seconds: float = 10.0
    keep: int = 3
    fsync: bool = True

    def __post_init__(self) -> None:
        if not self.interval_seconds > 0:
            raise ConfigError(f"interval_seconds must be > 0 (seconds), got {self.interval_seconds!r}")
        if self.keep < 1:
            raise ConfigError(f"keep must be at least 1 (checkpoints kept), got {self.keep!r}")


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint as read back.

    Attributes
    ----------
    path
        Its file.
    sequence
        Its number (1, 2, ...: the newest has the highest).
    position
        The source position it holds every effect before: a restarted trainer reads from here.
    state
        `TrainingLoop.state_dict` output.
    metadata
        What was written beside it (model spec, publisher's state, counts, creation time).
    """

    path: Path
    sequence: int
    position: int
    state: State
    metadata: dict[str, Any]

    @property
    def created(self) -> float:
        return float(self.metadata.get("created", 0.0))


class CheckpointStore:
    """A directory of numbered checkpoint files, newest kept.

    >>> import tempfile, numpy as np
    >>> store = CheckpointStore(tempfile.mkdtemp(), keep=2, fsync=False)
    >>> for position in (10, 20, 30):
    ...     _ = store.write({"w": np.full(2, position)}, position, {"model": "m"})
    >>> [path.name for path in store.paths()]
    ['checkpoint-000000000002.safetensors', 'checkpoint-000000000003.safetensors']
    >>> newest = store.newest_intact()
    >>> newest.position, newest.state["w"].tolist()
    (30, [30, 30])
    """

    def __init__(self, directory: str | Path, keep: int = 3, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.keep = keep
        self.fsync = fsync

    def paths(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [path for path in self.directory.iterdir() if _FILE.match(path.name)]
        return sorted(found, key=lambda path: path.name)

    def remove_partial_writes(self) -> int:
        """Delete temporary files left by a writer killed mid-write (call only as the one writer);
        returns how many."""
        if not self.directory.is_dir():
            return 0
        partial = [path for path in self.directory.glob(".checkpoint-*.tmp") if path.is_file()]
        for path in partial:
            path.unlink(missing_ok=True)
        return len(partial)

    def write(self, state: State, position: int, metadata: dict[str, Any]) -> Path:
        """Write the next checkpoint (atomically, checksummed), then drop all but the newest `keep`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        existing = self.paths()
        sequence = int(_FILE.match(existing[-1].name).group(1)) + 1 if existing else 1  # type: ignore[union-attr]
        path = self.directory / f"checkpoint-{sequence:012d}.safetensors"
        header = {
            **metadata,
            "format": FORMAT,
            "position": int(position),
            "created": time.time(),
            "freshrec": __version__,
        }
        write_tensor_file(path, state, header, fsync=self.fsync, sparse=True)
        for old in [*existing, path][: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def newest_intact(self, accept: Callable[[Checkpoint], str | None] | None = None) -> Checkpoint | None:
        """The newest checkpoint that reads back intact (and that `accept` does not refuse: it returns why
        a checkpoint cannot be used, or None), logging each one passed over with the reason."""
        for path in reversed(self.paths()):
            try:
                state, metadata = read_tensor_file(path)
            except DamagedFileError as error:
                log.warning("checkpoint %s is damaged and not used: %s", path, error)
                continue
            if metadata.get("format") != FORMAT:
                found = metadata.get("format")
                log.warning("checkpoint %s has format %r, this trainer reads %d", path, found, FORMAT)
                continue
            sequence = int(_FILE.match(path.name).group(1))  # type: ignore[union-attr]
            checkpoint = Checkpoint(path, sequence, int(metadata["position"]), state, metadata)
            refusal = accept(checkpoint) if accept is not None else None
            if refusal is not None:
                log.warning("checkpoint %s is not used: %s", path, refusal)
                continue
            return checkpoint
        return None


class CheckpointWriter:
    """Writes checkpoints on a background thread, one at a time, newest first.

    `submit` hands over a state already copied; if the previous one is still being written, the new one
    waits in its place (a newer state makes an older pending one worthless). `durable_position` is the
    position of the newest checkpoint on disk: what the source may commit.
    """

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store
        self.durable_position: int | None = None
        self.written = 0
        self.last_error: Exception | None = None
        self._pending: tuple[State, int, dict[str, Any]] | None = None
        self._busy = False
        self._closed = False
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="freshrec-checkpoint", daemon=True)
        self._thread.start()

    def submit(self, state: State, position: int, metadata: dict[str, Any]) -> None:
        with self._condition:
            self._pending = (state, position, metadata)
            self._condition.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted is on disk; False on timeout."""
        with self._condition:
            return self._condition.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Write what is pending, then stop the thread."""
        self.flush(timeout)
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._pending is not None or self._closed)
                if self._pending is None:
                    return
                (state, position, metadata), self._pending = self._pending, None
                self._busy = True
            try:
                self.store.write(state, position, metadata)
                self.durable_position = position
                self.written += 1
            except Exception as error:  # a full disk must not kill the trainer: the next one retries
                self.last_error = error
                log.error("checkpoint at position %d was not written: %s", position, error)
            finally:
                with self._condition:
                    self._busy = False
                    self._condition.notify_all()
