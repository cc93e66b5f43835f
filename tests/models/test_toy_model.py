"""A model added in one file (`toy_model.py`) and one registry line gets everything every model gets, with no
other change: the contract's checks (replayed, published, served from the store, replicated from deltas,
saved and loaded), a replay, and answers over HTTP from a server that rebuilds it by name."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import test_contract as contract
from fastapi.testclient import TestClient

from freshrec.evaluation.gate import GateConfig
from freshrec.models.registry import ModelEntry, ModelSpec, model_names, register
from freshrec.publishing.publisher import ModelPublisher, PublisherConfig
from freshrec.publishing.store import ModelStore, StoreConfig
from freshrec.serving.app import create_app
from freshrec.serving.config import ServingConfig
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream
from freshrec.training.loop import TrainingLoop
from freshrec.training.online import OnlineTrainer, TrainerConfig
from freshrec.training.replay import replay

# The one registry line.
register(
    ModelEntry("toy-recent", "toy_model:RecentItemsConfig", "toy_model:RecentItems", summary="newest first")
)


def test_the_registry_knows_it_by_name() -> None:
    assert "toy-recent" in model_names()
    assert ModelSpec.from_dict({"name": "toy-recent", "capacity": 50}).build().config.capacity == 50


def test_it_passes_every_contract_check(tmp_path: Path) -> None:
    contract.test_learns_and_a_replica_fed_only_deltas_answers_exactly_alike("toy-recent")
    contract.test_published_through_the_gate_and_served_from_the_store("toy-recent", tmp_path / "published")
    contract.test_saved_and_loaded_it_answers_and_learns_on_exactly_alike("toy-recent", tmp_path / "saved")


def test_it_replays_and_is_served_over_http(tmp_path: Path) -> None:
    stream = SyntheticStream(SyntheticConfig(n_events=2000, n_users=50, n_items=80))
    report = replay(stream, OnlineTrainer(ModelSpec.of("toy-recent").build(), TrainerConfig(k=10)))
    assert report.model == "toy-recent" and report.events_read == 2000 and report.overall.hr > 0

    spec = ModelSpec.of("toy-recent")
    model = spec.build()
    with ModelStore(StoreConfig(tmp_path / "store", fsync=False)) as store:
        publisher = ModelPublisher(
            model,
            store,
            PublisherConfig(interval_ms=0, gate=GateConfig(tolerance=1.0)),
            {"model": spec.as_dict()},
        )
        loop = TrainingLoop(OnlineTrainer(model, TrainerConfig(batch_size=50)), publisher=publisher)
        app = create_app(ServingConfig(user_capacity=100), tmp_path / "store", tmp_path / "log")
        with TestClient(app) as client:
            now = time.time()
            events = [
                {"event_id": f"e{n}", "timestamp": now + n, "user_id": f"u{n % 5}", "item_id": f"i{n % 12}"}
                for n in range(60)
            ]
            assert client.post("/events", json=events).json()["accepted"] == 60
            runtime = client.app.state.runtime
            from freshrec.events import Event, EventBatch

            loop.feed_events(EventBatch.from_events(Event(**e) for e in events))
            deadline = time.monotonic() + 10
            while runtime.version != store.current_version() or runtime.events_applied < 60:
                assert time.monotonic() < deadline, "the server did not follow"
                time.sleep(0.02)
            answer = client.get("/recommend", params={"user_id": "newcomer", "k": 3}).json()
    # The newest items first: the last three posted.
    assert [item["item_id"] for item in answer["items"]] == ["i11", "i10", "i9"]
    assert answer["model_version"] == store.current_version()
    assert np.isfinite([item["score"] for item in answer["items"]]).all()
