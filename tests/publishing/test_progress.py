"""The trainer's progress in the store's status document: one point per gate decision, bounded, with the
model's table sizes, continued by a restarted trainer."""

import pytest

from freshrec.evaluation.gate import GateConfig
from freshrec.evaluation.prequential import RankingMetrics
from freshrec.models.registry import create_model
from freshrec.publishing.progress import TrainerProgress, series_rows
from freshrec.publishing.publisher import ModelPublisher, PublisherConfig
from freshrec.publishing.store import ModelStore, StoreConfig
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream
from freshrec.training.loop import TrainingLoop
from freshrec.training.online import OnlineTrainer, TrainerConfig


def run_trainer(store_dir, name: str, n_events: int) -> dict:
    model = create_model(name)
    with ModelStore(StoreConfig(store_dir)) as store:
        config = PublisherConfig(interval_ms=0, gate=GateConfig(tolerance=1.0))
        publisher = ModelPublisher(model, store, config, metadata={"model": name})
        loop = TrainingLoop(OnlineTrainer(model, TrainerConfig(batch_size=128)), publisher=publisher)
        loop.run(SyntheticStream(SyntheticConfig(n_events=n_events, n_users=200, n_items=300, seed=1)))
        return store.read_status()


def test_every_gate_decision_adds_a_point_with_the_running_prequential_figures(tmp_path):
    status = run_trainer(tmp_path / "store", "bpr-mf", 3000)
    trainer, gate = status["trainer"], status["gate"]
    series = series_rows(trainer["series"])
    assert len(series) == gate["published"] + gate["held"] > 5
    times = [point["event_time"] for point in series]
    assert times == sorted(times) and len(set(times)) > 5  # over event time
    assert [p["events_trained"] for p in series] == sorted(p["events_trained"] for p in series)
    assert series[-1]["events_trained"] == trainer["events_trained"] == 3000
    assert 0.0 < trainer["hr"] < 1.0 and series[-1]["hr"] == trainer["hr"]
    assert all(p["events_per_second"] is None or p["events_per_second"] >= 0 for p in series)
    assert trainer["learning_events_per_second"] > 0
    # bpr-mf keeps two embedding tables: their counters, consistent with each other.
    tables = trainer["tables"]
    assert set(tables) == {"users", "items"}
    for sizes in tables.values():
        assert sizes["admitted"] - sizes["evicted"] - sizes["expired"] == sizes["live_rows"] > 0
    assert series[-1]["admitted"] == sum(t["admitted"] for t in tables.values())


def test_a_count_model_reports_its_index_sizes_without_lifecycle_counters(tmp_path):
    trainer = run_trainer(tmp_path / "store", "cooccurrence", 1000)["trainer"]
    assert set(trainer["tables"]["items"]) == {"live_rows", "capacity"}
    assert trainer["series"]["admitted"][-1] is None


def test_a_restarted_trainer_continues_the_series(tmp_path):
    first = series_rows(run_trainer(tmp_path / "store", "popularity", 1000)["trainer"]["series"])
    # The restart adopts the served version and learns the stream past the position it had learned.
    second = series_rows(run_trainer(tmp_path / "store", "popularity", 2000)["trainer"]["series"])
    assert second[: len(first)] == first and len(second) > len(first)


def test_the_series_is_bounded_and_drops_its_oldest_points():
    ticks = iter(range(100))
    progress = TrainerProgress(points=3, clock=lambda: float(next(ticks)))
    for n in range(5):
        progress.observe(1000.0 + n, RankingMetrics(events=n + 1, hr=0.1, ndcg=0.05), events_trained=10 * n)
        progress.record(window_hr=None, tables={})
    series = progress.figures()["series"]
    assert series["event_time"] == [1002.0, 1003.0, 1004.0]
    assert series["events_per_second"][-1] == pytest.approx(10.0)


def test_no_point_before_a_step_was_observed():
    progress = TrainerProgress()
    progress.record(window_hr=None, tables={"items": {"live_rows": 0, "capacity": 8}})
    figures = progress.figures()
    assert figures["series"]["event_time"] == [] and figures["hr"] is None
    assert figures["tables"]["items"]["capacity"] == 8
