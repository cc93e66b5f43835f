"""A model store written the way the trainer writes it, and the ways its files get damaged: shared by the
unit tests of a store that heals (tests/publishing) and the end-to-end ones (tests/e2e/test_store_heals.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from freshrec.evaluation.gate import GateConfig
from freshrec.events import EventBatch
from freshrec.models.registry import ModelSpec
from freshrec.preprocess.validate import EventValidator
from freshrec.publishing.publisher import ModelPublisher, PublisherConfig
from freshrec.publishing.store import MANIFEST, MANIFEST_BACKUP, ModelStore, StoreConfig
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream
from freshrec.training.loop import TrainingLoop
from freshrec.training.online import OnlineTrainer, TrainerConfig

#: A co-occurrence model small enough that a version takes milliseconds; `freshrec serve` rebuilds it from
#: the spec every version records.
SPEC = ModelSpec.of("cooccurrence", {"capacity": 1024, "max_neighbors": 16})


class DamagingStore(ModelStore):
    """A writer whose disk damages the next version file it writes once `damage_next` is set: after the
    hash is taken, before the manifest names it, as when a file goes bad between its write and the first
    read."""

    damage_next = False

    def _write_atomically(self, name: str, data: bytes | Sequence[memoryview]) -> None:
        if self.damage_next and re.match(r"^v\d{10}\.(snapshot|delta)\.safetensors$", name):
            self.damage_next = False
            chunks = [data] if isinstance(data, bytes) else data
            damaged = bytearray(b"".join(bytes(chunk) for chunk in chunks))
            damaged[-5] ^= 0x01
            data = bytes(damaged)
        super()._write_atomically(name, data)


def trainer(store: ModelStore) -> tuple[ModelPublisher, TrainingLoop]:
    """A publisher and the live loop publishing its model to `store` after every micro-batch of 64 events,
    as `freshrec train` would (a new process: it adopts the store's current version)."""
    model = SPEC.build()
    publisher = ModelPublisher(
        model,
        store,
        PublisherConfig(interval_ms=0, gate=GateConfig(tolerance=1.0)),
        metadata={"model": SPEC.as_dict()},
    )
    return publisher, TrainingLoop(OnlineTrainer(model, TrainerConfig(batch_size=64)), publisher=publisher)


def events(n: int, seed: int = 1) -> EventBatch:
    stream = SyntheticStream(SyntheticConfig(n_events=n, n_users=200, n_items=300, seed=seed))
    batch = EventBatch.concat([EventValidator().validate(raw).events for raw in stream.batches(10_000)])
    batch.event_id = batch.event_id + seed * 1_000_000  # streams of other seeds are other events
    return batch


def write_store(directory: Path, versions: int = 30, keep: int = 20) -> None:
    """A store of `versions` versions (a snapshot, then deltas, compacted every ``keep // 2``), as a trainer
    leaves it: with 30 and 20, versions 11-30 are kept, 11 and 21 have a full state, 30 is current."""
    with ModelStore(StoreConfig(directory, keep_versions=keep, fsync=False)) as store:
        _, loop = trainer(store)
        loop.feed_events(events(64 * (versions - 1)))
        store.wait_for_compaction()
        assert store.current_version() == versions, store.current_version()


def newest_file(directory: Path) -> tuple[int, Path]:
    """The current version and its own file."""
    reader = ModelStore.open(directory)
    info = reader.versions()[-1]
    assert info.version == reader.current_version()
    return info.version, directory / info.file


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # tensor data, the header intact: only the hash can tell
    path.write_bytes(bytes(data))


#: A damage: what it does to a store of `write_store`, returning (the version a reader must load instead of
#: the current one, the file the log line must name).
Damage = Callable[[Path], tuple[int, str]]


def truncated_delta(directory: Path) -> tuple[int, str]:
    version, path = newest_file(directory)
    truncate(path)
    return version - 1, path.name


def flipped_byte(directory: Path) -> tuple[int, str]:
    version, path = newest_file(directory)
    flip_a_byte(path)
    return version - 1, path.name


def deleted_file(directory: Path) -> tuple[int, str]:
    version, path = newest_file(directory)
    path.unlink()
    return version - 1, path.name


def wrong_hash(directory: Path) -> tuple[int, str]:
    version, path = newest_file(directory)
    manifest = directory / MANIFEST
    document = json.loads(manifest.read_text())
    entry = next(e for e in document["versions"] if e["version"] == version)
    entry["sha256"] = "0" * 64
    manifest.write_text(json.dumps(document))
    return version - 1, path.name


def truncated_snapshot(directory: Path) -> tuple[int, str]:
    """The newest full state cut: an older one and the deltas after it still lead to the current version."""
    reader = ModelStore.open(directory)
    newest = max((info for info in reader.versions() if info.full is not None), key=lambda i: i.version)
    assert newest.full is not None
    truncate(directory / newest.full.file)
    return reader.current_version(), newest.full.file


def damaged_manifest(directory: Path) -> tuple[int, str]:
    """manifest.json cut: the backup is the manifest before the last publish."""
    truncate(directory / MANIFEST)
    return int(json.loads((directory / MANIFEST_BACKUP).read_text())["current"]), MANIFEST


DAMAGES: dict[str, Damage] = {
    "truncated delta": truncated_delta,
    "flipped byte": flipped_byte,
    "deleted file": deleted_file,
    "wrong hash in the manifest": wrong_hash,
    "truncated snapshot": truncated_snapshot,
    "damaged manifest": damaged_manifest,
}
