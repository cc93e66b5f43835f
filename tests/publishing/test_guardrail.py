"""The guardrail's verdicts on hand-made watches, and the stream figures beside it.

A popularity model that learned item 10 ranks it first: as the trusted copy it hits every event on item 10
at K = 1, so a serving version given as missing them is worse, significantly once the watch is full."""

import numpy as np
import pytest

from freshrec.evaluation.gate import GateConfig, ScoredBatch
from freshrec.features.catalogue import CandidateSet
from freshrec.interactions import Interactions, Query
from freshrec.models.popularity import PopularityModel
from freshrec.publishing.guardrail import Guardrail, GuardrailConfig
from freshrec.publishing.monitor import MonitorConfig, StreamMonitor

EVENTS = 64
HIT, MISS = np.zeros(EVENTS, np.int64), np.full(EVENTS, 5)  # ranks: 0 is a hit at K = 1, 5 a miss


def keys(*values):
    return np.array(values, dtype=np.uint64)


def batch(n: int = EVENTS, item: int = 10) -> ScoredBatch:
    query = Query.without_history(np.arange(1, n + 1, dtype=np.uint64), np.arange(n, dtype=np.float64))
    return ScoredBatch(CandidateSet.for_keys(keys(10, 11), np.full(n, item, np.uint64)), HIT[:n], query)


def trusting_item_10() -> PopularityModel:
    model = PopularityModel()
    query = Query.without_history(keys(1, 2), np.zeros(2))
    model.learn(
        Interactions(query, keys(10, 10), np.full(2, np.nan), np.zeros(2, np.int8), keys(0, 0)[:, None])
    )
    return model


def guardrail(watch_events: int = 4 * EVENTS) -> Guardrail:
    config = GuardrailConfig(watch_events=watch_events)
    return Guardrail(trusting_item_10(), version=3, config=config, gate=GateConfig(k=1))


def test_a_serving_version_worse_than_the_trusted_one_is_rolled_back_with_its_figures():
    watch = guardrail()
    verdicts = [watch.watch(batch(), MISS, serving_version=7) for _ in range(4)]
    assert verdicts[:3] == [None, None, None]  # nothing is judged before the watch is full
    verdict = verdicts[3]
    assert verdict is not None and verdict.action == "rollback"
    assert (verdict.serving_hr, verdict.trusted_hr, verdict.events) == (0.0, 1.0, 4 * EVENTS)
    assert verdict.reason.startswith("guardrail: version 7") and "trusted version 3" in verdict.reason
    watch.rolled_back(8)
    assert watch.rollbacks == 1 and watch.trusted_version == 8
    assert watch.status()["guardrail"][-1]["action"] == "rollback"


def test_an_equal_serving_version_earns_trust_and_becomes_the_trusted_copy():
    watch = guardrail(watch_events=EVENTS)
    verdict = watch.watch(batch(), HIT, serving_version=7)
    assert verdict is not None and verdict.action == "trust"
    serving = PopularityModel()
    watch.trust(serving, 7)
    assert watch.trusted_version == 7 and watch.trusted.state_dict().keys() == serving.state_dict().keys()
    # The same version serving: nothing to rank twice, and nothing to roll back to.
    assert watch.watch(batch(), MISS, serving_version=7).action == "trust"


def test_a_drop_within_the_tolerance_is_no_rollback():
    watch = guardrail(watch_events=2 * EVENTS)
    # One miss in 128 events: a drop of 0.008, under the gate's tolerance of 0.01, however significant.
    one_miss = HIT.copy()
    one_miss[0] = 5
    watch.watch(batch(), one_miss, serving_version=7)
    assert watch.watch(batch(), HIT, serving_version=7).action == "trust"


def test_a_watch_with_suspect_input_keeps_the_trusted_version():
    watch = guardrail(watch_events=EVENTS)
    watch.saw_suspect_window()
    verdict = watch.watch(batch(), HIT, serving_version=7)
    assert verdict.action == "keep" and "suspect" in verdict.reason
    assert watch.watch(batch(), HIT, serving_version=7).action == "trust"  # the next watch is judged afresh


def test_a_watch_far_below_the_level_keeps_the_trusted_version_until_the_level_starts_afresh():
    watch = Guardrail(
        trusting_item_10(), 3, GuardrailConfig(watch_events=EVENTS, max_untrusted_watches=3), GateConfig(k=1)
    )
    for _ in range(3):  # the level: HR 1.0 on trusted watches
        assert watch.watch(batch(), HIT, serving_version=3).action == "trust"
    # The input got harder for both versions (the same one serves): not the version's fault, no rollback,
    # but no trust either, until the third watch in a row starts the level afresh.
    actions = [watch.watch(batch(item=11), MISS, serving_version=3).action for _ in range(4)]
    assert actions == ["keep", "keep", "keep", "trust"]


def scored(n: int, history: np.ndarray, targets: np.ndarray, times: np.ndarray) -> ScoredBatch:
    query = Query(np.arange(1, n + 1, dtype=np.uint64), times, history, np.zeros(history.shape))
    candidates = CandidateSet(keys(10, 11), targets, np.zeros(0, np.int64), np.zeros(0, np.int64))
    return ScoredBatch(candidates, np.zeros(n, np.int64), query)


def test_the_monitor_reports_input_shares_and_the_event_rate_per_window():
    monitor = StreamMonitor(MonitorConfig(warmup=1))
    history = np.array([[0, 0], [0, 10], [0, 0], [10, 11]], dtype=np.uint64)  # two users without history
    monitor.observe(scored(4, history, np.array([0, 1, -1, 0]), np.array([0.0, 1.0, 2.0, 3.0])), None, 4)
    monitor.observe(scored(4, history, np.array([0, 1, 1, 0]), np.array([4.0, 5.0, 6.0, 7.0])), None, 4)
    monitor.close_window()
    figures = monitor.figures()
    assert figures["unknown_user_share"] == 0.5 and figures["unknown_item_share"] == 1 / 8
    assert figures["event_rate"] == pytest.approx(1.0)  # 8 events over 7 s of event time: 1 per second
    assert figures["unknown_user_share_mean"] == 0.5
    assert figures["loss_last"] is None and figures["loss_mean"] is None and figures["loss_spikes"] == 0
    # A model without history (popularity): unknown users cannot be told, so their share is not reported.
    bare = StreamMonitor()
    bare.observe(scored(2, np.zeros((2, 0), np.uint64), np.array([0, 1]), np.zeros(2)), None, 2)
    bare.close_window()
    assert bare.figures()["unknown_user_share"] is None and bare.figures()["event_rate"] is None


def test_a_loss_far_above_its_running_mean_counts_as_a_spike():
    monitor = StreamMonitor(MonitorConfig(windows=20, warmup=5, spike_z=4.0))
    rng = np.random.default_rng(0)
    empty = scored(0, np.zeros((0, 2), np.uint64), np.zeros(0, np.int64), np.zeros(0))
    for loss in 0.5 + 0.01 * rng.standard_normal(50):
        monitor.observe(empty, float(loss), 0)
    assert monitor.loss_spikes == 0
    monitor.observe(empty, 0.9, 0)
    monitor.observe(empty, float("nan"), 0)  # the gate refuses a non-finite loss; it is no spike
    figures = monitor.figures()
    assert figures["loss_spikes"] == 1 and figures["loss_last"] == 0.9
    assert figures["loss_mean"] == pytest.approx(0.52, abs=0.01)
