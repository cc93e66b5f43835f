import numpy as np
import pytest

from freshrec.config import parse
from freshrec.errors import ConfigError
from freshrec.events import KindWeights
from freshrec.interactions import Interactions
from freshrec.model_state import public_state
from freshrec.models.base import LearnStats
from freshrec.models.cooccurrence import CooccurrenceConfig, CooccurrenceModel
from freshrec.models.mf import BPRMatrixFactorization, MFConfig
from freshrec.models.popularity import PopularityConfig, PopularityModel
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream
from freshrec.training.cadence import (
    CADENCES,
    CadenceConfig,
    CadenceStudy,
    EncodedEvents,
    new_user_day_share,
    run_cadence_study,
)
from freshrec.training.online import TrainerConfig

HOUR, DAY = 3_600.0, 86_400.0
START = 20_000 * DAY  # a UTC midnight: day and hour boundaries fall where the test expects them


def small_popularity() -> PopularityModel:
    return PopularityModel(PopularityConfig(capacity=4_096))


def tiny_stream(n_events: int = 4_000, seed: int = 3) -> EncodedEvents:
    """About 4.6 days of a drifting synthetic stream, ~36 events per hour."""
    config = SyntheticConfig(
        n_events=n_events, n_users=150, n_items=300, n_clusters=6, events_per_second=0.01, seed=seed
    )
    return EncodedEvents.from_source(SyntheticStream(config))


def config(batch_size: int = 16, **overrides) -> CadenceConfig:
    # Every kind at 1: `learned_events` reads a popularity model's counts as numbers of events.
    trainer = TrainerConfig(batch_size=batch_size, k=10, kind_weights=KindWeights.uniform())
    return CadenceConfig(trainer=trainer, window_events=500, **overrides)


def learned_events(model: PopularityModel) -> int:
    """How many events a never-decaying popularity model has counted: the sum of its counts."""
    return round(float(model.state_dict()["counts"].sum()))


def first_index_of_bucket(times: np.ndarray, period: float) -> np.ndarray:
    """For each event, the index of the first event in its period (hour, day)."""
    bucket = np.floor(times / period)
    starts = np.r_[True, bucket[1:] != bucket[:-1]]
    return np.maximum.accumulate(np.where(starts, np.arange(len(times)), 0))


def test_the_four_cadences_run_and_report_every_event():
    events = tiny_stream()
    report = CadenceStudy(small_popularity, config()).run(events, source="tiny")
    assert [r.cadence for r in report.results] == list(CADENCES)
    assert report.events == len(events) == 4_000
    assert report.counting_model and report.retrain_epochs == 1
    for result in report.results:
        assert result.overall.events == len(events)
        assert 0.0 < result.overall.hr <= 1.0
        assert result.last.events == pytest.approx(0.2 * len(events), abs=100)
    assert report.window_sizes.sum() == len(events) and len(report.window_days) == 8
    assert np.all(np.diff(report.window_days) > 0)
    days = int(np.floor(events.timestamps[-1] / DAY) - np.floor(events.timestamps[0] / DAY))
    assert report.result("daily").refreshes == days
    assert report.result("frozen").refreshes == 1
    # Popularity loses little by being refreshed hourly, and never beats the fresh model by much.
    assert report.result("hourly").overall.hr == pytest.approx(
        report.result("per-batch").overall.hr, abs=0.03
    )
    table = report.markdown()
    assert table.count("\n| (") == 4 and "(c) retrained from scratch every day" in table
    assert "one pass in time order" in table


def learning_start(index: int, batch_size: int = 16, frozen_at: int | None = None) -> int:
    """First event of the learner's micro-batch holding event `index`: B-event batches from 0, and again
    from the freeze point: the events the learner has learned while that batch is scored."""
    origin = 0 if frozen_at is None or index < frozen_at else frozen_at
    return origin + (index - origin) // batch_size * batch_size


def test_scoring_never_straddles_a_refresh_boundary_and_learning_goes_in_batches_of_b():
    events = tiny_stream(2_000)
    seen: list[tuple[int, int]] = []

    def observe(start, stop, served):
        seen.append((start, stop))
        # The learner learns whole micro-batches of B events (the protocol's), whatever the hours do.
        assert learned_events(served["per-batch"]) == learning_start(start, 16, 1_000)

    CadenceStudy(small_popularity, config(batch_size=16)).run(events, on_batch=observe)
    assert [a for a, _ in seen] == [0] + [b for _, b in seen[:-1]] and seen[-1][1] == 2_000
    hours = np.floor(events.timestamps / HOUR)
    for start, stop in seen:
        assert 0 < stop - start <= 16
        assert hours[start] == hours[stop - 1]
        assert learning_start(start, 16, 1_000) == learning_start(stop - 1, 16, 1_000)  # one batch
    assert 1_000 in [a for a, _ in seen]  # the freeze point is a cut too
    assert len(seen) > 2_000 / 16 + 20  # hour boundaries cut many batches into scoring segments


def test_hourly_copy_is_refreshed_exactly_at_hour_boundaries_with_the_learners_state():
    events = tiny_stream(3_000)
    hour_start = first_index_of_bucket(events.timestamps, HOUR)
    checked = []

    def observe(start, stop, served):
        # The served copy holds what the learner held when the current hour began: every micro-batch
        # learned before the hour's first event.
        checked.append(learned_events(served["hourly"]) == learning_start(hour_start[start], 16, 1_500))
        assert learned_events(served["per-batch"]) == learning_start(start, 16, 1_500)

    study = CadenceStudy(small_popularity, config())
    study.run(events, on_batch=observe)
    assert all(checked) and len(checked) > 100
    refreshed_at = [r.event_index for r in study.refreshes if r.cadence == "hourly"]
    hour_starts = np.flatnonzero(np.diff(np.floor(events.timestamps / HOUR))) + 1
    assert refreshed_at == hour_starts.tolist()


@pytest.mark.parametrize("counting_retrain", ["snapshot", "replay"])
def test_daily_retrain_happens_at_day_boundaries_and_counts_only_earlier_days_once(counting_retrain):
    events = tiny_stream(3_000)
    expected = first_index_of_bucket(events.timestamps, DAY)
    checked = []
    # "replay" counts every event before the day in a fresh model; "snapshot" takes the learner's state at
    # the boundary: every micro-batch learned before the day's first event, never one event of the day.
    known = expected if counting_retrain == "replay" else [learning_start(i, 16, 1_500) for i in expected]
    study = CadenceStudy(small_popularity, config(retrain_epochs=3, counting_retrain=counting_retrain))
    study.run(
        events,
        on_batch=lambda start, _, served: checked.append(learned_events(served["daily"]) == known[start]),
    )
    assert all(checked)
    daily = [r for r in study.refreshes if r.cadence == "daily"]
    assert [r.event_index for r in daily] == (
        np.flatnonzero(np.diff(np.floor(events.timestamps / DAY))) + 1
    ).tolist()
    assert all(r.epochs == 1 and r.trained_events == known[r.event_index] for r in daily)  # one pass


class PopularityWithLoss(PopularityModel):
    """A popularity model that reports a loss, as a gradient model does: the study must then retrain it for
    `retrain_epochs` passes (its counts show how many events it was fed, and their latest time)."""

    def __init__(self) -> None:
        super().__init__(PopularityConfig(capacity=4_096))
        self.latest_learned = -np.inf

    def learn(self, batch: Interactions) -> LearnStats:
        super().learn(batch)
        self.latest_learned = max(self.latest_learned, float(np.max(batch.timestamps)))
        return LearnStats(loss=0.5)


def test_a_gradient_model_is_retrained_for_several_epochs_on_earlier_days_only():
    events = tiny_stream(2_500)
    day_start = first_index_of_bucket(events.timestamps, DAY)
    checked = []

    def observe(start, stop, served):
        daily = served["daily"]
        checked.append(learned_events(daily) == 3 * day_start[start])
        if day_start[start] > 0:  # the first day is served by an untrained model
            assert daily.latest_learned < np.floor(events.timestamps[start] / DAY) * DAY

    study = CadenceStudy(PopularityWithLoss, config(retrain_epochs=3, retrain_order="shuffled"))
    report = study.run(events, on_batch=observe)
    assert all(checked)
    assert not report.counting_model and report.retrain_epochs == 3
    assert "3 epochs, shuffled order" in report.markdown()


def leak_revealing_stream(days: int = 4, pair_users: int = 30, fillers: int = 15) -> EncodedEvents:
    """Each day brings new items A_d and B_d, and many new users who act on A_d and then on B_d, after the
    day's popular filler items. A model that learned today's events knows B_d follows A_d (a hit); a model
    trained only on earlier days has never seen A_d nor B_d, and ranks B_d below every older item."""
    users, items, times = [], [], []
    for d in range(days):
        t = START + d * DAY
        for j in range(fillers):
            for r in range(3):
                users.append(f"filler-{d}-{j}-{r}")
                items.append(f"F-{d}-{j}")
                times.append(t + 60.0 + j * 3 + r)
        for u in range(pair_users):
            users += [f"pair-{d}-{u}", f"pair-{d}-{u}"]
            items += [f"A-{d}", f"B-{d}"]
            times += [t + 7_200.0 + 10.0 * u, t + 7_200.0 + 10.0 * u + 5.0]
    return EncodedEvents.from_columns(np.array(users, dtype=object), np.array(items, dtype=object), times)


def small_cooccurrence() -> CooccurrenceModel:
    return CooccurrenceModel(CooccurrenceConfig(capacity=1_024, max_neighbors=16, history_length=4))


@pytest.mark.parametrize("counting_retrain", ["snapshot", "replay"])
def test_the_daily_model_never_learns_from_the_day_it_serves(counting_retrain):
    events = leak_revealing_stream()
    study = CadenceStudy(small_cooccurrence, config(batch_size=8, counting_retrain=counting_retrain))
    study.run(events)
    keys = {
        name: EncodedEvents.from_columns([0], [name], [0.0]).item_keys[0] for name in ("B-1", "B-2", "B-3")
    }
    second_of_pair = np.isin(events.item_keys, list(keys.values()))
    hit = {c: (r >= 0) & (r < 10) for c, r in study.ranks.items()}
    # Learning today's events makes B_d a hit for nearly every later user of the day ...
    assert hit["per-batch"][second_of_pair].mean() > 0.8
    # ... while the daily model, trained on earlier days only, never ranks it in the top 10.
    assert not hit["daily"][second_of_pair].any()


def test_frozen_cadence_follows_the_learner_then_never_changes():
    events = tiny_stream(2_000)
    frozen_at = 1_000
    states = []

    def observe(start, stop, served):
        if start < frozen_at:
            assert served["frozen"] is served["per-batch"]
        else:
            assert served["frozen"] is not served["per-batch"]
            states.append(served["frozen"].state_dict())

    study = CadenceStudy(small_popularity, config(frozen_fraction=0.5))
    report = study.run(events, on_batch=observe)
    assert len(states) > 10
    for state in states[1:]:
        assert state.keys() == states[0].keys()
        assert all(np.array_equal(state[name], states[0][name]) for name in state)
    assert round(float(states[0]["counts"].sum())) == frozen_at
    ranks = study.ranks
    assert np.array_equal(ranks["frozen"][:frozen_at], ranks["per-batch"][:frozen_at])
    assert not np.array_equal(ranks["frozen"][frozen_at:], ranks["per-batch"][frozen_at:])
    assert report.frozen_at_event == frozen_at


def test_bpr_mf_runs_every_cadence_with_epochs_and_exact_hourly_copies():
    events = tiny_stream(1_500)

    def factory():
        return BPRMatrixFactorization(
            parse(MFConfig, dict(dim=8, user_capacity=512, item_capacity=512), "flat")
        )  # noqa: E731

    hour_of = np.floor(events.timestamps / HOUR)
    compared = []

    def observe(start, stop, served):
        # Right after a refresh, the served copy's state is the learner's, value for value (private arrays,
        # such as the row initialiser's position, stay the learner's own).
        if start > 0 and hour_of[start] != hour_of[start - 1] and len(compared) < 3:
            learner = public_state(served["per-batch"].state_dict())
            copy = served["hourly"].state_dict()
            compared.append(all(np.array_equal(learner[name], copy[name]) for name in learner))

    report = CadenceStudy(factory, config(retrain_epochs=2)).run(events, on_batch=observe)
    assert compared == [True, True, True]
    assert not report.counting_model and report.retrain_epochs == 2
    assert all(0.0 <= r.overall.hr <= 1.0 for r in report.results)


def test_run_cadence_study_reads_a_source_with_duplicates_and_writes_a_png(tmp_path):
    stream = SyntheticStream(
        SyntheticConfig(
            n_events=2_000,
            n_users=100,
            n_items=200,
            n_clusters=5,
            events_per_second=0.01,
            duplicate_fraction=0.05,
        )
    )
    report = run_cadence_study(stream, small_popularity, config())
    assert report.duplicates > 0 and report.events == report.read - report.duplicates - report.rejected
    written = report.save(tmp_path / "out")
    png = written["plot"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000
    assert written["json"].read_text().count('"per-batch"') >= 2
    assert report.write_plot(tmp_path / "again.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_max_events_studies_only_the_start_of_the_stream():
    settings = dict(n_events=2_000, n_users=100, n_items=200, n_clusters=5, events_per_second=0.01)
    everything = EncodedEvents.from_source(SyntheticStream(SyntheticConfig(**settings)))
    report = run_cadence_study(
        SyntheticStream(SyntheticConfig(**settings)), small_popularity, config(), max_events=1_200
    )
    assert report.events == 1_200 and report.read == 2_000
    assert report.end_time == everything.timestamps[1_199]
    assert len(everything.head(5_000)) == 2_000
    with pytest.raises(ConfigError, match="max_events"):
        everything.head(0)


def test_new_user_day_share_and_bad_configs():
    users = np.array([1, 2, 1, 3, 2], dtype=np.uint64)
    times = np.array([0.0, 1.0, DAY, DAY + 1, DAY + 2])
    assert new_user_day_share(users, times) == pytest.approx(3 / 5)
    with pytest.raises(ConfigError, match="frozen_fraction"):
        CadenceConfig(frozen_fraction=1.0)
    with pytest.raises(ConfigError, match="retrain_order"):
        CadenceConfig(retrain_order="random")  # type: ignore[arg-type]


def test_a_counting_models_daily_snapshot_is_the_learners_state_at_the_boundary():
    events = tiny_stream(2_500)
    day_of = np.floor(events.timestamps / DAY)
    compared = []

    def observe(start, stop, served):
        if start > 0 and day_of[start] != day_of[start - 1]:
            learner, daily = served["per-batch"].state_dict(), served["daily"].state_dict()
            compared.append(all(np.array_equal(learner[name], daily[name]) for name in learner))
        elif start > 0:
            assert served["daily"] is not served["per-batch"]

    CadenceStudy(small_cooccurrence, config()).run(events, on_batch=observe)
    assert compared == [True] * int(np.count_nonzero(np.diff(day_of))) and len(compared) >= 2
