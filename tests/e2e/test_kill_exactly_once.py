"""The kill test: events stream in over HTTP while the trainer is SIGKILLed at five random moments and
started again; every event is learned exactly once, and every kept version's figures agree with the log.
The drill itself is bench/kill.py's (which also compares quality with an uninterrupted run)."""

import sys
from pathlib import Path

import pytest

# bench/ is a folder of scripts next to src/, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.kill import run  # noqa: E402

pytestmark = pytest.mark.e2e

EVENTS, KILLS, RATE = 20_000, 5, 1_250


@pytest.mark.parametrize("model", ["popularity", "two-tower"])
def test_a_trainer_killed_five_times_learns_every_event_exactly_once(model):
    result = run(model, EVENTS, KILLS, RATE, checkpoint_seconds=0.5, seed=7, small=True)
    assert result["log_events"] == EVENTS
    assert result["events_trained"] == EVENTS, result
    assert result["inconsistent_versions"] == [], result
    assert result["restored_from_checkpoint"] >= 1, result  # the path under test was taken
    if model == "popularity":  # counts are exact: the served model counted each event once
        assert result["miscounted_items"] == 0, result
