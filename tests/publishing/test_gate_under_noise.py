"""A stream whose items turn to noise mid-way: the gate must hold versions back, so the version served
keeps its quality on the users whose behaviour did not change; and publishing resumes when clean data
returns. The same run with the level check off shows the damage the gate prevents (so this can fail)."""

import dataclasses

import numpy as np
import pytest

from freshrec.evaluation.gate import GateConfig, hit_rate
from freshrec.events import EventBatch
from freshrec.features.catalogue import CandidateSet
from freshrec.features.history import HistoryConfig, UserHistory
from freshrec.models.cooccurrence import CooccurrenceConfig, CooccurrenceModel
from freshrec.preprocess.encode import encode_ids
from freshrec.preprocess.validate import EventValidator
from freshrec.publishing.publisher import ModelPublisher, PublisherConfig
from freshrec.publishing.store import ModelStore, StoreConfig
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream
from freshrec.training.loop import TrainingLoop
from freshrec.training.online import OnlineTrainer, TrainerConfig

CLEAN, NOISE, RECOVERY = 12_000, 12_000, 8_000
TOLERANCE = 0.01


def model() -> CooccurrenceModel:
    return CooccurrenceModel(CooccurrenceConfig(capacity=4096, max_neighbors=32))


@pytest.fixture(scope="module")
def streams() -> tuple[EventBatch, EventBatch]:
    """The clean stream, and the same stream with the items of its middle part replaced by random ones."""
    config = SyntheticConfig(n_events=CLEAN + NOISE + RECOVERY, n_users=800, n_items=600, seed=5)
    validator = EventValidator()
    parts = [validator.validate(raw).events for raw in SyntheticStream(config).batches(100_000)]
    clean = EventBatch.concat(parts)
    items = np.asarray(clean.item_id).copy()
    rng = np.random.default_rng(0)
    middle = slice(CLEAN, CLEAN + NOISE)
    items[middle] = rng.choice(np.unique(items[:CLEAN]), size=NOISE)
    return clean, dataclasses.replace(clean, item_id=items)


def served_hr_on_clean_events(state: dict[str, np.ndarray], clean: EventBatch) -> float:
    """HR@10 of a served state on the clean middle part, with the users' clean histories."""
    served = model()
    served.load_state_dict(state)
    users, items = encode_ids(clean.user_id), encode_ids(clean.item_id)
    history = UserHistory(HistoryConfig(served.history_length))
    catalogue = np.unique(items[:CLEAN])
    history.query_and_record(users[:CLEAN], items[:CLEAN], clean.timestamp[:CLEAN])
    hits = []
    for start in range(CLEAN, CLEAN + NOISE, 1000):
        part = slice(start, start + 1000)
        query = history.query_and_record(users[part], items[part], clean.timestamp[part])
        hits.append(hit_rate(served, query, items[part], CandidateSet.for_keys(catalogue, items[part]), k=10))
    return float(np.mean(hits))


def run(stream: EventBatch, tmp_path, collapse_ratio: float) -> list[dict]:
    """Train with a publish attempt after every batch; per phase (clean, noise, recovery): the state served
    at its end, and the gate's decisions during it."""
    candidate = model()
    phases = []
    with ModelStore(StoreConfig(tmp_path / f"store-{collapse_ratio}", fsync=False, keep_versions=3)) as store:
        gate = GateConfig(tolerance=TOLERANCE, collapse_ratio=collapse_ratio)
        publisher = ModelPublisher(
            candidate, store, PublisherConfig(interval_ms=0, gate=gate), metadata={"model": candidate.name}
        )
        loop = TrainingLoop(OnlineTrainer(candidate, TrainerConfig(batch_size=256)), publisher=publisher)
        for start, end in [(0, CLEAN), (CLEAN, CLEAN + NOISE), (CLEAN + NOISE, len(stream))]:
            decided = publisher.gate.published + publisher.gate.held
            loop.feed_events(stream.take(slice(start, end)))
            count = publisher.gate.published + publisher.gate.held - decided
            decisions = list(publisher.gate.decisions)[-count:]
            phases.append({"served": store.load()[0], "decisions": decisions})
    return phases


def test_noise_is_held_back_and_the_served_quality_on_clean_events_holds(streams, tmp_path):
    clean, noisy = streams
    clean_phase, noise, recovery = run(noisy, tmp_path, collapse_ratio=GateConfig().collapse_ratio)

    published_in_noise = sum(d.published for d in noise["decisions"])
    collapsed = sum("collapsed" in d.reason for d in noise["decisions"])
    assert len(noise["decisions"]) > 40 and published_in_noise <= 2 and collapsed >= 40
    hr_before = served_hr_on_clean_events(clean_phase["served"], clean)
    hr_after = served_hr_on_clean_events(noise["served"], clean)
    assert hr_before > 0.3  # the clean stream is learnable
    assert hr_after >= hr_before - TOLERANCE
    # Clean data came back: the candidate passes again and publishing resumes.
    assert sum(d.published for d in recovery["decisions"]) > 20

    # Control: without the level check the gate is blind on noise: the candidate is "not worse" on
    # unpredictable events, so nearly every noisy version is published. (Uniform noise happens to cost
    # this co-occurrence model little on clean events, measured 0.537 -> 0.543; a version learned from
    # noise must not ship either way: the next noise may not be uniform.)
    _, unguarded_noise, _ = run(noisy, tmp_path, collapse_ratio=0.0)
    assert sum(d.published for d in unguarded_noise["decisions"]) > 40
