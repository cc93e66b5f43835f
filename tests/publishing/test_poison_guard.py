"""Bursts of poisoned events mid-stream, co-occurrence model: the gate holds them back, what users get on the
clean events after the burst stays within the gate's tolerance of the run without the burst, and publishing
resumes within `RESUME_EVENTS` clean events; under natural drift the same gate keeps publishing. Each burst
also runs with the gate's poison checks off and the guardrail off (the control: the damage the guard
prevents, so that these tests can fail). The attacks are `freshrec.publishing.poisoning`'s."""

import pytest

from freshrec.evaluation.gate import GateConfig
from freshrec.models.cooccurrence import CooccurrenceConfig, CooccurrenceModel
from freshrec.publishing import poisoning
from freshrec.publishing.guardrail import GuardrailConfig
from freshrec.publishing.publisher import PublisherConfig
from freshrec.publishing.store import ModelStore
from freshrec.sources.synthetic import SyntheticConfig

CLEAN, BURST, RECOVERY = 10_000, 4_000, 6_000
TOLERANCE = GateConfig().tolerance
#: Clean events after a burst before a version is published again: the window straddling the burst's end,
#: one that restarts the quarantined candidate, one that publishes it, and one for histories still full
#: of the burst (windows of one micro-batch of 256 here).
RESUME_EVENTS = 4 * 256
UNGUARDED = PublisherConfig(
    interval_ms=0,
    gate=GateConfig(collapse_ratio=0.0, concentration_ratio=0.0, rare_ratio=0.0),
    guardrail=GuardrailConfig(enabled=False),
)


def model() -> CooccurrenceModel:
    return CooccurrenceModel(CooccurrenceConfig(capacity=4096, max_neighbors=32))


@pytest.fixture(scope="module")
def clean():
    config = SyntheticConfig(n_events=CLEAN + BURST + RECOVERY, n_users=800, n_items=600, seed=5)
    return poisoning.synthetic_events(config)


@pytest.fixture(scope="module")
def promotion(clean):
    return poisoning.promotion_by_new_accounts(clean, CLEAN, CLEAN + BURST, share=0.5)


@pytest.fixture(scope="module")
def without_burst(clean, promotion, tmp_path_factory):
    unpoisoned = poisoning.Burst.none(clean, CLEAN, CLEAN + BURST, target=promotion.target)
    return poisoning.drill(unpoisoned, model, tmp_path_factory.mktemp("clean"))


def test_a_random_item_burst_is_held_and_publishing_resumes(clean, without_burst, tmp_path):
    burst = poisoning.random_items(clean, CLEAN, CLEAN + BURST)
    guarded = poisoning.drill(burst, model, tmp_path / "guarded")
    assert len(guarded.burst) >= 15 and guarded.published_in_burst == 0
    assert all(decision.suspect for decision in guarded.burst[1:])  # the first may straddle the start
    assert guarded.parameters_hr >= without_burst.parameters_hr - TOLERANCE
    assert guarded.first_publish is not None and guarded.first_publish <= RESUME_EVENTS
    assert guarded.publisher.gate.rebases >= 1  # what the candidate learned from noise never shipped
    # Control: without the checks nearly every version learned from noise ships. (Uniform noise costs
    # this co-occurrence model little on clean events; a model learned from noise must not ship anyway.)
    unguarded = poisoning.drill(burst, model, tmp_path / "unguarded", UNGUARDED)
    assert unguarded.published_in_burst >= len(unguarded.burst) - 1


def test_a_burst_on_the_least_popular_items_is_held_and_publishing_resumes(clean, without_burst, tmp_path):
    # Flipped choices: the burst's events go to the items users choose least, spread over many of them.
    burst = poisoning.least_popular_items(clean, CLEAN, CLEAN + BURST)
    guarded = poisoning.drill(burst, model, tmp_path / "guarded")
    assert len(guarded.burst) >= 15 and guarded.published_in_burst == 0
    assert sum("rare items" in decision.reason for decision in guarded.burst) >= len(guarded.burst) - 1
    assert guarded.parameters_hr >= without_burst.parameters_hr - TOLERANCE
    assert guarded.first_publish is not None and guarded.first_publish <= RESUME_EVENTS
    # Control: without the checks every version that learned the flipped choices ships.
    unguarded = poisoning.drill(burst, model, tmp_path / "unguarded", UNGUARDED)
    assert unguarded.published_in_burst >= len(unguarded.burst) - 1


def test_a_promotion_by_new_accounts_is_held_and_the_item_is_not_pushed_to_users(
    promotion, without_burst, tmp_path
):
    guarded = poisoning.drill(promotion, model, tmp_path / "guarded")
    assert len(guarded.burst) >= 30 and guarded.published_in_burst == 0
    assert sum("concentrated" in decision.reason for decision in guarded.burst) >= len(guarded.burst) - 1
    assert guarded.served_hr >= without_burst.served_hr - TOLERANCE
    assert guarded.exposure <= without_burst.exposure + 0.01
    assert guarded.first_publish is not None and guarded.first_publish <= RESUME_EVENTS
    # Control: unguarded, the promotion is learned and shipped: the target is shown to most real users.
    unguarded = poisoning.drill(promotion, model, tmp_path / "unguarded", UNGUARDED)
    assert unguarded.published_in_burst == len(unguarded.burst)
    assert unguarded.exposure > 0.3 > 30 * without_burst.exposure


def test_under_natural_drift_the_same_gate_keeps_publishing(tmp_path):
    n = 40_000
    stream = poisoning.synthetic_events(SyntheticConfig.drifting(n, days=10.0))
    outcome = poisoning.drill(poisoning.Burst.none(stream, n // 4, n // 4), model, tmp_path)
    per_quarter = outcome.published_per_part(3)
    decisions_per_quarter = len(outcome.recovery) // 3
    assert decisions_per_quarter >= 35 and min(per_quarter) >= decisions_per_quarter - 2
    gate, guardrail = outcome.publisher.gate, outcome.publisher.guardrail
    assert gate.rebases == 0 and guardrail is not None and guardrail.rollbacks == 0 and not outcome.history

    # The figures /metrics shows are in the store's status document, as plain JSON numbers.
    status = ModelStore.open(tmp_path).read_status()["gate"]
    assert status["published"] == gate.published and status["rollbacks"] == 0 and status["rebases"] == 0
    assert status["event_rate"] > 0 and status["event_rate_mean"] > 0
    shares = (
        "unknown_user_share",
        "unknown_user_share_mean",
        "unknown_item_share",
        "unknown_item_share_mean",
    )
    for name in (*shares, "top_item_share", "top_item_share_level"):
        assert 0 <= status[name] < 0.2, name
    assert status["trusted_version"] <= status["version"] and status["loss_spikes"] == 0
