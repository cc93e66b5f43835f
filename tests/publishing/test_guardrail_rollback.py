"""A poisoned version that gets out is rolled back by the guardrail (co-occurrence model).

A short promotion through existing accounts: 3,000 events in which known users act on one rare item,
among 1,000 clean ones. With the gate's poison checks off, every version learned from it ships; the
guardrail sees the served versions fall below its trusted copy on the following events and rolls back to
it, through the store (recorded in the manifest history) or, when that version is no longer kept, by
publishing its state again. Publishing resumes after the cool-down. Without the guardrail (the control)
users get the poisoned versions."""

import dataclasses

import pytest

from freshrec.evaluation.gate import GateConfig
from freshrec.publishing import poisoning
from freshrec.publishing.guardrail import GuardrailConfig
from freshrec.publishing.publisher import PublisherConfig
from freshrec.publishing.store import ModelStore
from freshrec.sources.synthetic import SyntheticConfig
from tests.publishing.test_poison_guard import BURST, CLEAN, RECOVERY, UNGUARDED, model

CHECKS_OFF = GateConfig(collapse_ratio=0.0, concentration_ratio=0.0, rare_ratio=0.0)
GUARDRAIL_ONLY = PublisherConfig(interval_ms=0, gate=CHECKS_OFF)
#: Decisions after an automatic rollback before a version is published again: the cool-down (1,024
#: evaluated events, 4 windows of 256), then up to 4 windows in which the restarted candidate, which learns
#: from histories still holding the promoted item, is held by the gate until it matches the trusted one.
RESUME_DECISIONS = GuardrailConfig().cooldown_events // 256 + 4


@pytest.fixture(scope="module")
def burst():
    config = SyntheticConfig(n_events=CLEAN + BURST + RECOVERY, n_users=800, n_items=600, seed=5)
    clean = poisoning.synthetic_events(config)
    return poisoning.promotion_by_existing_accounts(clean, CLEAN, CLEAN + 1_000, share=0.75)


@pytest.fixture(scope="module")
def unguarded(burst, tmp_path_factory):
    return poisoning.drill(burst, model, tmp_path_factory.mktemp("unguarded"), UNGUARDED)


def decisions_to_publish_after_rollbacks(outcome: poisoning.DrillOutcome) -> list[int | None]:
    """For each rollback after the burst (the start of a cool-down), the decisions until a publication."""
    decisions = outcome.recovery
    cooling = ["cool-down" in decision.reason for decision in decisions]
    starts = [i for i, cool in enumerate(cooling) if cool and (i == 0 or not cooling[i - 1])]
    return [next((j - i for j in range(i, len(decisions)) if decisions[j].published), None) for i in starts]


def test_the_guardrail_rolls_a_poisoned_version_back_through_the_store(burst, unguarded, tmp_path):
    guarded = poisoning.drill(burst, model, tmp_path, GUARDRAIL_ONLY)
    guardrail = guarded.publisher.guardrail
    assert guarded.published_in_burst == len(guarded.burst)  # the gate let every poisoned version out
    assert guardrail is not None and guardrail.rollbacks >= 1
    rollbacks = [event for event in guarded.history if event["action"] == "rollback"]
    assert len(rollbacks) == guardrail.rollbacks
    assert all(event["reason"].startswith("guardrail: version") for event in rollbacks)
    # To a version still kept, or to the trusted state published again as a new version.
    assert all(event.get("state_of", event["to"]) < event["from"] for event in rollbacks)
    # Users got better versions than without the guardrail, and publishing resumed after each cool-down.
    assert guarded.served_hr >= unguarded.served_hr + 0.015
    waits = decisions_to_publish_after_rollbacks(guarded)
    assert waits and all(wait is not None and wait <= RESUME_DECISIONS for wait in waits)
    status = ModelStore.open(tmp_path).read_status()["gate"]
    assert status["rollbacks"] == guardrail.rollbacks
    assert [v["action"] for v in status["guardrail"]].count("rollback") == guardrail.rollbacks
    # Control: without the guardrail nothing rolls back.
    assert unguarded.publisher.guardrail is None and not unguarded.history


def test_a_trusted_version_no_longer_kept_is_published_again(burst, unguarded, tmp_path):
    # Every version a snapshot, two kept: the trusted version is gone from the store by the time it is
    # needed, and its state is published again.
    snapshots = dataclasses.replace(GUARDRAIL_ONLY, snapshot_every=0)
    guarded = poisoning.drill(burst, model, tmp_path, snapshots, keep_versions=2)
    rollbacks = guarded.publisher.guardrail.rollbacks
    republished = [event for event in guarded.history if "state_of" in event]
    assert rollbacks >= 1 and len(republished) == rollbacks == len(guarded.history)
    for event in republished:  # the new version is the trusted state, published after the poisoned one
        assert (
            event["reason"].startswith("guardrail: version")
            and event["state_of"] < event["from"] < event["to"]
        )
    newest = ModelStore.open(tmp_path).versions()[-1]
    if newest.version == republished[-1]["to"]:  # still kept: a snapshot that says what it restores
        assert (
            newest.kind == "snapshot"
            and newest.metadata["rollback"]["state_of"] == republished[-1]["state_of"]
        )
    assert guarded.served_hr >= unguarded.served_hr + 0.015
