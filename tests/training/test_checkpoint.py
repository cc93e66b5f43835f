"""Trainer checkpoints: written whole and checked, the newest intact one used, and a loop restored from
one continues exactly as if it had never stopped."""

import logging
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from freshrec.durable import DamagedFileError, read_tensor_file, write_tensor_file
from freshrec.embeddings.config import TableConfig
from freshrec.models.popularity import PopularityModel
from freshrec.models.twotower import TwoTowerConfig, TwoTowerModel
from freshrec.preprocess.pipeline import IngestPipeline, PipelineConfig
from freshrec.preprocess.validate import EventValidator
from freshrec.publishing.publisher import ModelPublisher, PublisherConfig
from freshrec.publishing.store import ModelStore, StoreConfig
from freshrec.sources.eventlog import EventLog, EventLogConfig, EventLogReader
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream
from freshrec.training.checkpoint import CheckpointStore
from freshrec.training.loop import TrainingLoop
from freshrec.training.online import OnlineTrainer, TrainerConfig

READ = 512  # the pipeline's read size in these tests: restarts at its multiples read the same batches


# ---------------------------------------------------------------------- files
@settings(max_examples=60, deadline=None)
@given(
    arrays=st.dictionaries(
        st.text("abc._", min_size=1, max_size=6),
        hnp.arrays(
            st.sampled_from([np.float32, np.float64, np.int64, np.uint64, np.bool_, np.uint8]),
            hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
        ),
        max_size=4,
    ),
    sparse_rows=st.integers(1024, 3000),
    live=st.integers(0, 1500),
)
def test_a_tensor_file_reads_back_exactly_sparse_or_not(tmp_path_factory, arrays, sparse_rows, live):
    table = np.zeros((sparse_rows, 3), np.float32)
    live = min(live, sparse_rows)
    table[:live] = np.arange(live * 3, dtype=np.float32).reshape(live, 3) + 1  # mostly free rows, or not
    arrays = {**arrays, "table": table}
    path = tmp_path_factory.mktemp("file") / "state.safetensors"
    for sparse in (False, True):
        write_tensor_file(path, arrays, {"note": "x"}, fsync=False, sparse=sparse)
        read, metadata = read_tensor_file(path)
        assert metadata == {"note": "x"}
        assert set(read) == set(arrays)
        for name, array in arrays.items():
            assert read[name].dtype == array.dtype and read[name].shape == array.shape
            assert np.array_equal(read[name], array, equal_nan=array.dtype.kind == "f")


def test_a_sparse_file_of_a_young_table_is_small(tmp_path):
    table = np.zeros((100_000, 8), np.float32)
    table[:100] = 1.0
    size = write_tensor_file(tmp_path / "t", {"table": table}, {}, fsync=False, sparse=True)
    assert size < table.nbytes / 100


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "delete"])
def test_a_damaged_tensor_file_is_refused_by_name(tmp_path, damage):
    path = tmp_path / "state.safetensors"
    write_tensor_file(path, {"w": np.arange(1000, dtype=np.float64)}, {"a": 1}, fsync=False)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(data[: len(data) - 10])
    elif damage == "flip":
        data[-100] ^= 0x01
        path.write_bytes(data)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    with pytest.raises(DamagedFileError, match="state.safetensors"):
        read_tensor_file(path)


def test_the_newest_intact_checkpoint_is_used_and_a_damaged_one_reported(tmp_path, caplog):
    store = CheckpointStore(tmp_path, keep=3, fsync=False)
    for position in (100, 200, 300, 400):
        store.write({"w": np.full(4, position)}, position, {"model": "m"})
    assert [int(p.name[11:23]) for p in store.paths()] == [2, 3, 4]  # the oldest dropped
    newest = store.paths()[-1]
    newest.write_bytes(newest.read_bytes()[:-3])
    with caplog.at_level(logging.WARNING):
        found = store.newest_intact()
    assert found is not None and found.position == 300 and found.state["w"].tolist() == [300] * 4
    assert str(newest) in caplog.text and "damaged" in caplog.text
    refused = store.newest_intact(accept=lambda c: "another model" if c.position == 300 else None)
    assert refused is not None and refused.position == 200
    assert CheckpointStore(tmp_path / "none").newest_intact() is None


# ---------------------------------------------------------------------- the loop
def write_log(directory, n_events: int, seed: int = 3):
    """An event log holding a synthetic stream (validated, as the server writes it)."""
    stream = SyntheticStream(SyntheticConfig(n_events=n_events, n_users=150, n_items=120, seed=seed))
    validator = EventValidator()
    with EventLog.open(EventLogConfig(directory)) as log:
        for raw in stream.batches(1000):
            log.append(validator.validate(raw).events)


def two_tower() -> TwoTowerModel:
    table = TableConfig(capacity=512)
    return TwoTowerModel(TwoTowerConfig(dim=8, hidden=16, users=table, items=table))


def training_loop(model, checkpoints=None, publisher=None) -> TrainingLoop:
    trainer = OnlineTrainer(model, TrainerConfig(batch_size=128, negatives=8, evaluate=True))
    pipeline = IngestPipeline(PipelineConfig(read_size=READ, dedupe_window=4096))
    return TrainingLoop(trainer, pipeline, publisher, checkpoints=checkpoints, checkpoint_interval=1e9)


def run_from(loop: TrainingLoop, log_dir, start, stop_after: int | None = None) -> None:
    """Feed the log from `start` (to its end, or `stop_after` read batches)."""
    reader = EventLogReader(log_dir, start_offset=start)
    batches = list(reader.batches(READ))
    loop.run(reader, batches=batches if stop_after is None else batches[:stop_after])


@pytest.mark.parametrize("make_model", [PopularityModel, two_tower], ids=["popularity", "two-tower"])
def test_a_loop_restored_from_a_checkpoint_continues_exactly(tmp_path, make_model):
    """Killed after a checkpoint (its objects thrown away) and restored, the loop ends in the state an
    uninterrupted loop reaches: the same parameters, optimizer state, random generators, feature state
    and counts, down to the bit."""
    write_log(tmp_path / "log", 6_000)
    uninterrupted = training_loop(make_model())
    run_from(uninterrupted, tmp_path / "log", "earliest")

    checkpoints = CheckpointStore(tmp_path / "checkpoints", fsync=False)
    first = training_loop(make_model(), checkpoints)
    run_from(first, tmp_path / "log", "earliest", stop_after=5)
    assert first.checkpoint(wait=True)
    first.close()
    run_from(first, tmp_path / "log", 5 * READ, stop_after=2)  # learned after the checkpoint, then lost

    saved = checkpoints.newest_intact()
    assert saved is not None and saved.position == 5 * READ
    restored = training_loop(make_model(), checkpoints)
    restored.restore(saved)
    run_from(restored, tmp_path / "log", saved.position)
    restored.close()

    expected, actual = uninterrupted.state_dict(), restored.state_dict()
    assert set(actual) == set(expected)
    for name, array in expected.items():
        assert np.array_equal(actual[name], array, equal_nan=True), name
    assert restored.trainer.totals.events == uninterrupted.trainer.totals.events == 6_000


def publishing_loop(store: ModelStore, checkpoints: CheckpointStore) -> TrainingLoop:
    """A popularity loop that checkpoints to `checkpoints` and tries to publish after every batch."""
    model = PopularityModel()
    config = PublisherConfig(interval_ms=0)
    publisher = ModelPublisher(model, store, config, metadata={"model": {"name": "popularity"}})
    return training_loop(model, checkpoints, publisher)


def test_a_restored_publisher_holds_versions_until_past_the_served_position(tmp_path):
    """The served version learned events after the checkpoint: after a restart nothing is published until
    the trainer has learned them again, and every version's count matches its log offset."""
    write_log(tmp_path / "log", 8_000)
    checkpoints = CheckpointStore(tmp_path / "checkpoints", fsync=False)

    def loop_over(store: ModelStore) -> TrainingLoop:
        return publishing_loop(store, checkpoints)

    with ModelStore(StoreConfig(tmp_path / "store", keep_versions=1000, fsync=False)) as store:
        first = loop_over(store)
        run_from(first, tmp_path / "log", "earliest", stop_after=4)
        first.checkpoint(wait=True)
        run_from(first, tmp_path / "log", 4 * READ, stop_after=6)  # published, then the trainer dies
        served_offset = store.versions()[-1].metadata["log_offset"]
        assert served_offset == 10 * READ
        versions_before = store.current_version()

    with ModelStore(StoreConfig(tmp_path / "store", keep_versions=1000, fsync=False)) as store:
        restored = loop_over(store)
        saved = checkpoints.newest_intact()
        assert saved is not None and saved.position == 4 * READ
        restored.restore(saved)
        assert restored.publisher is not None and restored.publisher.holding
        run_from(restored, tmp_path / "log", saved.position, stop_after=5)  # not yet past the served offset
        assert store.current_version() == versions_before
        run_from(restored, tmp_path / "log", 9 * READ)
        versions = store.versions()
        after = [info for info in versions if info.version > versions_before]
        assert after and after[0].kind == "snapshot"  # the candidate no longer follows the served version
        for info in versions:
            if "log_offset" in info.metadata:
                assert info.metadata["events_trained"] == info.metadata["log_offset"], info.version
        assert versions[-1].metadata["events_trained"] == 8_000
        restored.close()


def test_a_checkpoint_ahead_of_the_served_version_is_published_without_new_events(tmp_path):
    """Killed after its last checkpoint but before publishing it, a trainer restarted on a quiet log
    publishes what the checkpoint learned at once: the served version must not stay behind for want of
    new events."""
    write_log(tmp_path / "log", 6_000)
    checkpoints = CheckpointStore(tmp_path / "checkpoints", fsync=False)
    with ModelStore(StoreConfig(tmp_path / "store", keep_versions=1000, fsync=False)) as store:
        first = publishing_loop(store, checkpoints)
        run_from(first, tmp_path / "log", "earliest", stop_after=4)
        assert first.publisher is not None
        first.publisher.config.interval_ms = 10**9  # no version after these: the trainer dies first
        run_from(first, tmp_path / "log", 4 * READ)
        first.checkpoint(wait=True)
        assert store.versions()[-1].metadata["log_offset"] == 4 * READ

    with ModelStore(StoreConfig(tmp_path / "store", keep_versions=1000, fsync=False)) as store:
        restored = publishing_loop(store, checkpoints)
        saved = checkpoints.newest_intact()
        assert saved is not None and saved.position == 6_000
        restored.restore(saved)
        restored.idle()  # no event arrives
        newest = store.versions()[-1].metadata
        assert newest["log_offset"] == newest["events_trained"] == 6_000
        assert newest["prequential"]["events"] == 6_000
        restored.close()


def test_the_gate_and_the_guardrail_resume_from_a_checkpoint(tmp_path):
    """A trainer restarted mid cool-down, with a guardrail that trusts an older version than the served
    one, keeps both: the gate's levels, counters and pause, and the trusted version's parameters (loaded
    from the store), so a restart cannot make a burst's versions trusted or lift a quarantine."""
    write_log(tmp_path / "log", 6_000)
    checkpoints = CheckpointStore(tmp_path / "checkpoints", fsync=False)

    def loop_over(store: ModelStore) -> TrainingLoop:
        return publishing_loop(store, checkpoints)

    with ModelStore(StoreConfig(tmp_path / "store", keep_versions=1000, fsync=False)) as store:
        first = loop_over(store)
        run_from(first, tmp_path / "log", "earliest", stop_after=8)
        publisher = first.publisher
        assert publisher is not None and publisher.guardrail is not None
        assert 0 < publisher.guardrail.trusted_version < publisher.version  # trust lags a watch behind
        publisher.gate.pause(3000, "cool-down after rollback to version 2")
        saved_gate, trusted = publisher.gate.state_dict(), publisher.guardrail.trusted_version
        first.checkpoint(wait=True)
        first.close()

    with ModelStore(StoreConfig(tmp_path / "store", keep_versions=1000, fsync=False)) as store:
        restored = loop_over(store)
        saved = checkpoints.newest_intact()
        assert saved is not None
        restored.restore(saved)
        publisher = restored.publisher
        assert publisher is not None and publisher.guardrail is not None
        restored_gate = publisher.gate.state_dict()
        # All but the rare items' level, which restarts with the recent counts it is measured against.
        assert restored_gate.pop("rare_level") != saved_gate.pop("rare_level")
        assert restored_gate == saved_gate and publisher.gate.level > 0
        assert publisher.guardrail.trusted_version == trusted != store.current_version()
        expected, _ = store.load(trusted)
        for name, array in publisher.guardrail.trusted.state_dict().items():
            assert np.array_equal(array, expected[name]), name
        run_from(restored, tmp_path / "log", saved.position, stop_after=1)
        assert "cool-down after rollback to version 2" in publisher.gate.decisions[-1].reason
        restored.close()


def test_a_source_position_is_committed_only_once_checkpointed(tmp_path):
    """Each position the loop commits is that of a checkpoint already on disk."""
    write_log(tmp_path / "log", 3_000)
    checkpoints = CheckpointStore(tmp_path / "checkpoints", fsync=False)
    committed: list[int] = []

    class Reader(EventLogReader):
        def commit(self, offset):  # noqa: D102
            on_disk = {c.position for c in [checkpoints.newest_intact()] if c is not None}
            assert offset in on_disk, (offset, on_disk)
            committed.append(offset)

    loop = training_loop(PopularityModel(), checkpoints)
    loop.run(Reader(tmp_path / "log", start_offset="earliest"))
    # The first batch was checkpointed at once (then the interval is long): at most that one committed.
    assert set(committed) <= {READ}
    loop.checkpoint(wait=True)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    loop.run(Reader(tmp_path / "log", start_offset=3_000), follow=True, stop=stop)  # idle: commits
    loop.close()
    assert committed[-1] == 3_000 and committed == sorted(set(committed))


def test_replays_commit_each_batch_without_checkpoints(tmp_path):
    write_log(tmp_path / "log", 1_500)
    committed: list[int] = []

    class Reader(EventLogReader):
        def commit(self, offset):  # noqa: D102
            committed.append(offset)

    loop = training_loop(PopularityModel())
    loop.run(Reader(tmp_path / "log", start_offset="earliest"))
    assert committed == [512, 1024, 1_500]
