import numpy as np
import pytest

from freshrec.evaluation.gate import GateConfig
from freshrec.models.cooccurrence import CooccurrenceConfig, CooccurrenceModel
from freshrec.preprocess.validate import EventValidator
from freshrec.publishing.publisher import ModelPublisher, PublisherConfig
from freshrec.publishing.store import ModelStore, StoreConfig
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream
from freshrec.training.loop import TrainingLoop
from freshrec.training.online import OnlineTrainer, TrainerConfig


class Ticks:
    """A clock that advances one second per reading: every due() check is a publish opportunity."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def events(n: int, seed: int = 1):
    stream = SyntheticStream(SyntheticConfig(n_events=n, n_users=300, n_items=400, seed=seed))
    validator = EventValidator()
    for raw in stream.batches(2048):
        batch = validator.validate(raw).events
        batch.event_id = batch.event_id + seed * 1_000_000  # streams of other seeds are other events
        yield batch


def small_model() -> CooccurrenceModel:
    return CooccurrenceModel(CooccurrenceConfig(capacity=2048, max_neighbors=16))


def live_loop(model, publisher: ModelPublisher, batch_size: int) -> TrainingLoop:
    """The live loop: the trainer learns, the publisher decides after every micro-batch."""
    return TrainingLoop(OnlineTrainer(model, TrainerConfig(batch_size=batch_size)), publisher=publisher)


def test_published_versions_reproduce_the_candidate(tmp_path):
    model = small_model()
    with ModelStore(StoreConfig(tmp_path / "store", keep_versions=5)) as store:
        publisher = ModelPublisher(
            model,
            store,
            PublisherConfig(interval_ms=500, snapshot_every=3, gate=GateConfig(tolerance=1.0)),
            metadata={"model": model.name},
            clock=Ticks(),
        )
        loop = live_loop(model, publisher, 128)
        for batch in events(6000):
            loop.feed_events(batch)
        assert publisher.gate.published >= 10 and publisher.gate.held == 0
        kinds = {info.kind for info in store.versions()}
        assert kinds == {"snapshot", "delta"} and len(store.versions()) <= 5 + 3
        version = publisher.version
        assert store.current_version() == version
        decision = publisher.gate.decisions[-1]
        assert decision.published and decision.version == version and 0 < decision.window_events <= 128

    # A server starting from the store sees exactly the state that was published last.
    state, loaded = ModelStore.open(tmp_path / "store").load()
    assert loaded.version == version
    served = small_model()
    served.load_state_dict(state)
    shadow_state = publisher.shadow.state_dict()
    assert state.keys() == shadow_state.keys()
    for name in state:
        np.testing.assert_array_equal(state[name], shadow_state[name], err_msg=name)


def test_a_regressing_candidate_is_held_and_its_changes_kept_for_later(tmp_path):
    model = small_model()
    with ModelStore(StoreConfig(tmp_path / "store")) as store:
        # A negative tolerance demands strict improvement: most candidates are held.
        publisher = ModelPublisher(
            model,
            store,
            PublisherConfig(interval_ms=500, gate=GateConfig(tolerance=-0.5, min_window_events=1)),
            clock=Ticks(),
        )
        loop = live_loop(model, publisher, 128)
        for batch in events(3000):
            loop.feed_events(batch)
        assert publisher.gate.held > 0 and publisher.gate.published == 0
        assert store.current_version() == 1  # only the initial snapshot
        held = publisher.gate.decisions[-1]
        assert not held.published and "below serving" in held.reason
        # Loosen the gate: the next version carries every change since version 1.
        publisher.gate.config.tolerance = 1.0
        for batch in events(500, seed=2):
            loop.feed_events(batch)
        assert store.current_version() >= 2
        state, _ = store.load()
    candidate = model.state_dict()
    # The candidate has learned the batch after the publish; compare with the shadow instead.
    for name, array in publisher.shadow.state_dict().items():
        np.testing.assert_array_equal(state[name], array, err_msg=name)
    assert set(candidate) == set(state)


def test_a_publisher_needs_evaluation(tmp_path):
    model = small_model()
    with ModelStore(StoreConfig(tmp_path / "store")) as store:
        publisher = ModelPublisher(model, store)
        with pytest.raises(Exception, match="evaluate=True"):
            TrainingLoop(OnlineTrainer(model, TrainerConfig(evaluate=False)), publisher=publisher)


def test_small_batches_add_up_to_a_judged_window_and_every_decision_reaches_the_status_file(tmp_path):
    model = small_model()
    with ModelStore(StoreConfig(tmp_path / "store", fsync=False)) as store:
        clock = Ticks()
        publisher = ModelPublisher(
            model,
            store,
            PublisherConfig(interval_ms=8_000, gate=GateConfig(tolerance=-0.5, min_window_events=64)),
            clock=clock,
        )
        # Batches of 16: one publish attempt per 8 clock ticks, i.e. windows of about 4 batches.
        loop = live_loop(model, publisher, 16)
        for batch in events(2000):
            loop.feed_events(batch)
        decisions = list(publisher.gate.decisions)
        assert decisions and all(d.window_events >= 48 for d in decisions)
        # A window of several batches is judged (here: held by the strict gate), not waved through.
        assert publisher.gate.held > 0 and any(d.window_events >= 64 and not d.published for d in decisions)
        status = ModelStore.open(tmp_path / "store").read_status()["gate"]
        assert status["held"] == publisher.gate.held and status["published"] == publisher.gate.published
        last = status["decisions"][-1]
        assert last["reason"] == decisions[-1].reason and last["window_events"] == decisions[-1].window_events


def test_a_restarted_trainer_continues_from_the_served_version(tmp_path):
    first = small_model()
    with ModelStore(StoreConfig(tmp_path / "store", fsync=False)) as store:
        publisher = ModelPublisher(
            first,
            store,
            PublisherConfig(interval_ms=0, gate=GateConfig(tolerance=1.0)),
            metadata={"model": first.name},
        )
        loop = live_loop(first, publisher, 256)
        batches = list(events(3000))
        publisher.metadata["log_offset"] = 2048  # what `freshrec train` records from the event log
        for batch in batches:
            loop.feed_events(batch)
        served_version = store.current_version()
        served, _ = store.load()
        trained = store.versions()[-1].metadata["events_trained"]

    # A new process: a fresh model, the same store. It must not start over (or replace what is served).
    second = small_model()
    with ModelStore(StoreConfig(tmp_path / "store", fsync=False)) as store:
        publisher = ModelPublisher(
            second,
            store,
            PublisherConfig(interval_ms=0, gate=GateConfig(tolerance=1.0)),
            metadata={"model": second.name},
        )
        assert store.current_version() == served_version and publisher.resume_offset == 2048
        for name, array in second.state_dict().items():
            np.testing.assert_array_equal(array, served[name], err_msg=name)
        loop = live_loop(second, publisher, 256)
        loop.trainer.observe(batches[0])  # features only: the model does not move
        assert second.drain_changes().changed_rows == 0
        loop.feed_events(next(events(600, seed=9)))
        after = [info for info in store.versions() if info.version > served_version]
        assert after[0].kind == "snapshot"  # its deltas would not extend the adopted version's chain
        # Each micro-batch (256 + 256 + 88) is published once learned: the lineage counts every event.
        assert after[-1].metadata["events_trained"] == trained + 600
