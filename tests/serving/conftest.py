"""Fixtures of the serving tests: a model store with a published version, as a trainer leaves it."""

import pytest

from freshrec.publishing.store import ModelStore, StoreConfig


@pytest.fixture
def popularity_store(tmp_path, live_trainer):
    """``tmp_path / "store"`` holding version 1 of a popularity model, and the trainer (a `TrainingLoop`)
    that publishes to it, which holds the store's writer lock until the test ends."""
    store = ModelStore(StoreConfig(tmp_path / "store"))
    trainer = live_trainer("popularity", store, 4)
    yield store, trainer
    store.close()
