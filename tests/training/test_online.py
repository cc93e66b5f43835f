import numpy as np
import pytest

from freshrec.events import Event, EventBatch
from freshrec.interactions import Interactions, Query
from freshrec.models.base import LearnStats, Model, StateChanges
from freshrec.preprocess.encode import encode_ids
from freshrec.training.online import OnlineTrainer, RecentItemSampler, TrainerConfig


class RememberingModel(Model):
    """Scores 1 for every item it has learned from, 0 otherwise: any leak of a batch into its own scores
    would show up as hits that test-then-train forbids."""

    name = "remembering"

    def __init__(self, history_length: int = 3) -> None:
        self.history_length = history_length
        self.learned: set[int] = set()
        self.batches: list[Interactions] = []

    def score(self, query: Query, candidate_keys: np.ndarray) -> np.ndarray:
        known = np.isin(candidate_keys, np.array(sorted(self.learned), dtype=np.uint64))
        return np.broadcast_to(known.astype(np.float32), (len(query), len(candidate_keys))).copy()

    def learn(self, batch: Interactions) -> LearnStats:
        self.batches.append(batch)
        self.learned.update(batch.item_keys.tolist())
        return LearnStats(loss=0.5)

    def state_dict(self):
        return {"learned": np.array(sorted(self.learned), dtype=np.uint64)}

    def load_state_dict(self, state):
        self.learned = set(state["learned"].tolist())

    def drain_changes(self):
        return StateChanges(replaced=self.state_dict())

    def apply_changes(self, changes):
        self.load_state_dict(changes.replaced)


def stream(pairs):
    return EventBatch.from_events(Event(str(n), float(n), u, i) for n, (u, i) in enumerate(pairs))


def test_a_batch_is_scored_before_it_is_learned():
    # Item 1 appears first at event 0; users b and c act on it inside the same batch, user d in the next.
    events = stream([("a", 1), ("b", 1), ("c", 1), ("x", 2), ("d", 1), ("e", 3)])
    model = RememberingModel()
    trainer = OnlineTrainer(model, TrainerConfig(batch_size=4, k=1))
    trainer.process(events)
    # Within batch 1 no item was learned yet: ties are broken by first appearance, so item 1 (column 0)
    # is ranked first anyway for b and c: 2 hits by order, not by leaked learning. In batch 2, item 1 is the
    # only learned item and d's target: a hit; e's item 3 is new: a miss.
    summary = trainer.evaluator.summary()
    assert summary.events == 6
    assert summary.hr == pytest.approx(3 / 6)
    assert trainer.totals.events == 6 and trainer.totals.batches == 2
    assert list(trainer.totals.losses) == [0.5, 0.5]


def test_learned_batches_carry_pre_event_histories_and_negatives():
    events = stream([("a", 1), ("a", 2), ("a", 3), ("b", 4), ("a", 5)])
    model = RememberingModel(history_length=2)
    trainer = OnlineTrainer(model, TrainerConfig(batch_size=3, negatives=2, k=5))
    trainer.process(events)
    keys = {i: int(encode_ids(np.array([i]))[0]) for i in range(1, 6)}
    first, second = model.batches
    assert first.query.history_keys.tolist() == [[0, 0], [0, keys[1]], [keys[1], keys[2]]]
    assert second.query.history_keys.tolist() == [[0, 0], [keys[2], keys[3]]]
    assert first.negative_keys.shape == (3, 2)
    assert set(second.negative_keys.ravel().tolist()) <= {keys[1], keys[2], keys[3]}


def test_seen_items_are_excluded_and_repeats_are_misses():
    # a acts on 1 then on 1 again: the repeat cannot be recommended to a (excluded), so it is a miss.
    events = stream([("a", 1), ("b", 2), ("a", 1)])
    trainer = OnlineTrainer(RememberingModel(), TrainerConfig(batch_size=1, k=10))
    trainer.process(events)
    assert trainer.evaluator.summary().hr == 0.0


def test_without_evaluation_only_learning_is_timed():
    trainer = OnlineTrainer(RememberingModel(), TrainerConfig(batch_size=2, evaluate=False))
    trainer.process(stream([("a", 1), ("b", 2), ("c", 3)]))
    assert trainer.evaluator.events == 0
    assert trainer.totals.events == 3 and trainer.totals.scoring_seconds < 0.01


def test_sampler_draws_only_recent_items():
    sampler = RecentItemSampler(window=3, seed=1)
    sampler.add(np.array([9, 9, 9, 1, 2, 3], dtype=np.uint64))
    assert set(sampler.sample(200).tolist()) == {1, 2, 3}
    assert sampler.sample(4, 2).shape == (4, 2)


def test_evaluate_fraction_ranks_an_unbiased_sample_and_keeps_feature_state_whole():
    from freshrec.models.popularity import PopularityModel

    rng = np.random.default_rng(3)
    users, items = rng.integers(0, 300, 20_000), rng.zipf(1.3, 20_000).clip(1, 500)
    pairs = list(zip(users.tolist(), items.tolist(), strict=True))
    events = stream(pairs)
    full = OnlineTrainer(PopularityModel(), TrainerConfig(batch_size=64))
    sampled = OnlineTrainer(PopularityModel(), TrainerConfig(batch_size=64, evaluate_fraction=0.25))
    full.process(events)
    sampled.process(events)

    ranked = sampled.evaluator.events
    assert abs(ranked - 5_000) < 4 * np.sqrt(20_000 * 0.25 * 0.75)  # Binomial(20,000, 0.25)
    standard_error = np.sqrt(0.25 / ranked)
    assert abs(sampled.evaluator.summary().hr - full.evaluator.summary().hr) < 4 * standard_error
    # The sample only decides what is ranked: the catalogue and every user's seen items follow all events.
    assert len(sampled.features.catalogue) == len(full.features.catalogue)
    for user in encode_ids(np.array([0, 1, 2, 299])):
        seen_sampled, seen_full = sampled.features.seen_items(int(user)), full.features.seen_items(int(user))
        assert np.array_equal(np.sort(seen_sampled), np.sort(seen_full))


def test_evaluate_fraction_outside_zero_one_is_refused():
    from freshrec.errors import ConfigError

    for fraction in (0.0, -0.5, 1.5):
        with pytest.raises(ConfigError, match="evaluate_fraction"):
            TrainerConfig(evaluate_fraction=fraction)
