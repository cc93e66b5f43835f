import numpy as np
import pytest

from freshrec.evaluation.gate import GateConfig, PublishGate, hit_rate
from freshrec.features.catalogue import CandidateSet
from freshrec.interactions import Interactions, Query
from freshrec.models.popularity import PopularityModel


def keys(*values):
    return np.array(values, dtype=np.uint64)


def test_holds_a_worse_candidate_and_records_both_figures():
    gate = PublishGate(GateConfig(tolerance=0.02, min_window_events=10, history=3))
    assert gate.decide(0.19, 0.20, 100, loss=0.4).published
    held = gate.decide(0.15, 0.20, 100, loss=0.4, window_start=1.0, window_end=2.0)
    assert not held.published and held.candidate_hr == 0.15 and held.serving_hr == 0.20
    assert held.as_dict()["window_end"] == 2.0
    assert (gate.published, gate.held) == (1, 1)
    for _ in range(5):
        gate.decide(0.2, 0.2, 100)
    assert len(gate.decisions) == 3  # bounded history


@pytest.mark.parametrize("loss", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_loss_is_never_published(loss):
    decision = PublishGate().decide(0.9, 0.1, 1000, loss=loss)
    assert not decision.published and "non-finite" in decision.reason


def test_small_windows_pass_on_a_finite_loss():
    assert PublishGate(GateConfig(min_window_events=50)).decide(0.0, 0.5, 10, loss=0.1).published


def test_hit_rate_ranks_held_back_events_among_candidates():
    model = PopularityModel()
    query = Query.without_history(keys(1, 2, 3), np.zeros(3))
    model.learn(
        Interactions(
            query, keys(10, 10, 11), np.full(3, np.nan), np.zeros(3, np.int8), keys(0, 0, 0)[:, None]
        )
    )
    window = Query.without_history(keys(4, 5, 6), np.ones(3))
    candidates = keys(11, 10, 12)
    # Item 10 is the most popular (rank 0), 11 second, 99 is unknown (a miss).
    ranked = CandidateSet.for_keys(candidates, keys(10, 11, 99))
    assert hit_rate(model, window, keys(10, 11, 99), ranked, k=1) == pytest.approx(1 / 3)
    assert hit_rate(model, window, keys(10, 11, 99), ranked, k=2) == pytest.approx(2 / 3)


def warmed_gate(level: float, windows: int = 10) -> PublishGate:
    gate = PublishGate(GateConfig(tolerance=0.01, min_window_events=64))
    for _ in range(windows):
        assert gate.decide(level, level, 500, loss=0.3).published
    assert gate.level == pytest.approx(level)
    return gate


def test_a_collapsed_window_holds_a_candidate_that_learned_nothing():
    gate = warmed_gate(0.30)
    held = gate.decide(candidate_hr=0.02, serving_hr=0.01, window_events=500, loss=0.3)
    assert not held.published and "collapsed" in held.reason
    assert gate.level == pytest.approx(0.30)  # held windows do not drag the level down


def test_a_learnable_shift_passes_on_a_clear_gain():
    gate = warmed_gate(0.30)
    # Behaviour changed for real: the serving version collapses, the candidate has learned the new regime.
    assert gate.decide(candidate_hr=0.18, serving_hr=0.05, window_events=500, loss=0.3).published


def test_gradual_drift_and_small_windows_do_not_trip_the_check():
    gate = warmed_gate(0.30)
    for level in np.linspace(0.30, 0.10, 40):  # the level follows a slow decline
        assert gate.decide(level, level, 500, loss=0.3).published
    assert gate.level > 0.15  # it lags the decline by about `level_windows` windows
    # Under half the level, but on 80 events that is not significant: no alarm on a small, unlucky window.
    assert gate.decide(0.08, 0.08, 80, loss=0.3).published
