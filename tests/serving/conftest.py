"""Fixtures of the serving tests: a model store with a published version, as a trainer leaves it."""

import pytest

from freshrec.evaluation.gate import GateConfig
from freshrec.models.registry import create_model
from freshrec.publishing.publisher import ModelPublisher, PublisherConfig
from freshrec.publishing.store import ModelStore, StoreConfig
from freshrec.training.loop import TrainingLoop
from freshrec.training.online import OnlineTrainer, TrainerConfig


@pytest.fixture
def popularity_store(tmp_path):
    """``tmp_path / "store"`` holding version 1 of a popularity model, and the trainer (a `TrainingLoop`)
    that publishes to it, which holds the store's writer lock until the test ends."""
    model = create_model("popularity")  # the server builds the published model by its registry name
    store = ModelStore(StoreConfig(tmp_path / "store"))
    publisher = ModelPublisher(
        model,
        store,
        PublisherConfig(interval_ms=0, gate=GateConfig(tolerance=1.0)),
        metadata={"model": "popularity"},
    )
    trainer = TrainingLoop(OnlineTrainer(model, TrainerConfig(batch_size=4)), publisher=publisher)
    yield store, trainer
    store.close()
