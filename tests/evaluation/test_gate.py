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


def concentrated_gate(share: float = 0.04) -> PublishGate:
    """A gate that has published ten windows whose top item took `share` of the events."""
    gate = PublishGate(GateConfig(tolerance=0.01, min_window_events=64))
    for _ in range(10):
        assert gate.decide(0.30, 0.30, 500, loss=0.3, top_item_share=share).published
    assert gate.concentration_level == pytest.approx(share)
    return gate


def test_a_concentrated_window_is_held_whatever_the_candidate_gained():
    gate = concentrated_gate()
    # A promotion is learnable: the candidate that learned it wins on the window, and is held all the same.
    held = gate.decide(candidate_hr=0.60, serving_hr=0.20, window_events=500, loss=0.3, top_item_share=0.30)
    assert not held.published and held.suspect and "concentrated" in held.reason
    assert gate.quarantined == 1 and gate.concentration_level == pytest.approx(0.04)
    # A top item at twice its usual share is natural variation (the threshold is 3x and 3 standard errors).
    assert gate.decide(0.30, 0.30, 500, loss=0.3, top_item_share=0.08).rebase


def test_a_quarantined_candidate_restarts_on_the_first_normal_window_then_publishes():
    gate = concentrated_gate()
    for _ in range(3):
        assert gate.decide(0.50, 0.25, 500, loss=0.3, top_item_share=0.40).suspect
    assert gate.quarantined == 3
    # Too small a window proves nothing about the input: the candidate stays quarantined, not published.
    small = gate.decide(0.30, 0.30, 20, loss=0.3, top_item_share=0.05)
    assert not small.published and not small.rebase and gate.quarantined == 3
    # Normal input again: what the candidate learned from the burst must not ship, however good it looks.
    rebase = gate.decide(0.35, 0.30, 500, loss=0.3, top_item_share=0.05)
    assert not rebase.published and rebase.rebase and "restarts from the serving version" in rebase.reason
    assert (gate.quarantined, gate.rebases) == (0, 1)
    assert gate.decide(0.30, 0.30, 500, loss=0.3, top_item_share=0.05).published


def test_a_collapsed_window_quarantines_and_a_clear_gain_clears_it():
    gate = warmed_gate(0.30)
    assert gate.decide(candidate_hr=0.02, serving_hr=0.01, window_events=500, loss=0.3).suspect
    # A real shift: the candidate learned the new regime, the serving version still collapses. Published.
    assert gate.decide(candidate_hr=0.18, serving_hr=0.05, window_events=500, loss=0.3).published
    assert gate.quarantined == 0 and gate.rebases == 0


def test_a_pause_holds_candidates_for_its_events():
    gate = warmed_gate(0.30)
    gate.pause(1000, "cool-down after rollback to version 3")
    reasons = [gate.decide(0.30, 0.30, 400, loss=0.3).reason for _ in range(3)]
    assert all("cool-down after rollback to version 3" in reason for reason in reasons)
    assert "paused for 1000 more events" in reasons[0] and "paused for 200 more events" in reasons[2]
    assert gate.decide(0.30, 0.30, 400, loss=0.3).published


def test_decisions_report_their_top_item_share_and_flags_as_json():
    gate = concentrated_gate()
    figures = gate.decide(0.5, 0.2, 500, loss=0.3, top_item_share=0.3).as_dict()
    assert figures["top_item_share"] == 0.3 and figures["suspect"] is True and figures["rebase"] is False
    assert gate.decide(0.3, 0.3, 500).as_dict()["top_item_share"] is None  # not measured: None, not NaN


def test_a_window_on_rare_items_is_held_and_natural_variation_is_not():
    gate = PublishGate(GateConfig(tolerance=0.01, min_window_events=64))
    for _ in range(10):
        assert gate.decide(0.30, 0.30, 500, loss=0.3, rare_item_share=0.10).published
    assert gate.rare_level == pytest.approx(0.10)
    held = gate.decide(0.35, 0.30, 500, loss=0.3, rare_item_share=0.60)
    assert not held.published and held.suspect and "rare items" in held.reason
    assert held.as_dict()["rare_item_share"] == 0.60
    # Twice the usual share of rare items (a few new items at once) is not a burst: the candidate that
    # learned from the held window restarts, and the next one publishes.
    assert gate.decide(0.30, 0.30, 500, loss=0.3, rare_item_share=0.20).rebase
    assert gate.decide(0.30, 0.30, 500, loss=0.3, rare_item_share=0.20).published
