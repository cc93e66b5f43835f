"""Time at the server: events dated too far past its wall clock are refused at the door, with the reason,
and requests are ranked at the newest event time of the log it follows, so that a historical stream
replayed through the live loop is ranked as the same stream arriving live."""

import time

import pytest
from fastapi.testclient import TestClient

from freshrec.live import records_of
from freshrec.preprocess.validate import EventValidator
from freshrec.publishing.store import ModelStore, StoreConfig
from freshrec.serving.app import create_app
from freshrec.serving.config import ServingConfig
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream
from tests.serving.test_app import wait_for

DAY = 86_400.0


def _event(n: int, timestamp: float) -> dict:
    return {"event_id": f"e{n}", "timestamp": timestamp, "user_id": f"u{n}", "item_id": f"i{n}"}


def test_an_event_dated_past_the_tolerance_is_refused_with_the_reason(tmp_path, popularity_store):
    now = time.time()
    with TestClient(create_app(ServingConfig(), tmp_path / "store", tmp_path / "log")) as client:
        records = [
            _event(0, now - 3600),
            _event(1, now + 2 * DAY),  # two days ahead: refused
            _event(2, now + 3600),  # an hour ahead (a client's clock, a time zone slip): within a day
            _event(3, "2999-01-01T00:00:00Z"),
        ]
        answer = client.post("/events", json=records)
        assert answer.status_code == 202
        body = answer.json()
        assert body["accepted"] == 2
        refused = {r["index"]: r for r in body["rejected"]}
        assert sorted(refused) == [1, 3] and all(r["field"] == "timestamp" for r in refused.values())
        assert refused[1]["reason"].startswith("2 days in the future (tolerance 1 day")
        assert "serving.future_tolerance_s" in refused[1]["reason"]
        runtime = client.app.state.runtime
        assert wait_for(lambda: runtime.events_applied == 2)
        assert runtime.ranking_time == pytest.approx(now + 3600)  # the newest accepted event, not the clock


def test_the_tolerance_is_configurable(tmp_path, popularity_store):
    now = time.time()
    config = ServingConfig(future_tolerance_s=60.0)
    with TestClient(create_app(config, tmp_path / "store", tmp_path / "log")) as client:
        body = client.post("/events", json=[_event(0, now + 10), _event(1, now + 3600)]).json()
        assert body["accepted"] == 1
        assert body["rejected"][0]["index"] == 1
        assert body["rejected"][0]["reason"].startswith("1 hour in the future (tolerance 1 minute")


def _ranking(tmp_path, live_trainer, records: list[dict], users: list[str]) -> list[list[object]]:
    """Post `records` to a server, let a trainer learn them and publish, and rank for each of `users`."""
    tmp_path.mkdir()
    with ModelStore(StoreConfig(tmp_path / "store", fsync=False)) as store:
        trainer = live_trainer("cooccurrence", store, 256)  # decays in event time (30-day half-life)
        app = create_app(ServingConfig(user_capacity=1000), tmp_path / "store", tmp_path / "log")
        with TestClient(app) as client:
            for start in range(0, len(records), 1000):
                answer = client.post("/events", json=records[start : start + 1000]).json()
                assert answer["accepted"] == len(records[start : start + 1000]), answer["rejected"][:3]
            trainer.feed_events(EventValidator().validate_records(records).events)
            runtime = client.app.state.runtime
            assert wait_for(
                lambda: runtime.events_applied == len(records) and runtime.version == store.current_version(),
                timeout=60,
            )
            return [
                [
                    item["item_id"]
                    for item in client.get("/recommend", params={"user_id": u, "k": 10}).json()["items"]
                ]
                for u in users
            ]


def test_a_replayed_historical_stream_ranks_as_its_live_copy(tmp_path, live_trainer):
    # Sixty days of a 2023 stream: long enough for a 30-day decay to matter, and two years before today.
    config = SyntheticConfig(n_events=4000, n_users=200, n_items=300, events_per_second=4000 / (60 * DAY))
    historical = [record for raw in SyntheticStream(config).batches(4000) for record in records_of(raw)]
    newest = max(record["timestamp"] for record in historical)
    shift = time.time() - 60 - newest  # the same stream, as if it had just happened
    live = [{**record, "timestamp": record["timestamp"] + shift} for record in historical]
    users = sorted({str(record["user_id"]) for record in historical})[:40]

    replayed = _ranking(tmp_path / "historical", live_trainer, historical, users)
    arriving = _ranking(tmp_path / "live", live_trainer, live, users)
    assert all(replayed), "every user has recommendations"
    assert replayed == arriving


def test_a_rating_off_the_served_models_scale_is_refused_at_the_door(tmp_path, live_trainer):
    with ModelStore(StoreConfig(tmp_path / "store", fsync=False)) as store:
        live_trainer("rating-mf", store, 4)  # publishes version 1: the server learns the scale from it
        with TestClient(create_app(ServingConfig(), tmp_path / "store", tmp_path / "log")) as client:
            now = time.time()
            rated = [{**_event(n, now), "value": value} for n, value in enumerate([4.0, 113.9, 5.0])]
            body = client.post("/events", json=[*rated, _event(3, now)]).json()
            assert body["accepted"] == 3
            reason = "113.9 is outside the rating scale [1, 5] of the served rating-mf"
            assert body["rejected"] == [{"index": 1, "field": "value", "reason": reason}]
