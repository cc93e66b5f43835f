"""Every model is publishable: a replica fed only `drain_changes` deltas holds exactly the trainer's state and
scores exactly like it, through eviction, expiry, admission and decay rebases; full state round trips; and a
delta is a small fraction of the state."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.config import parse
from freshrec.interactions import Interactions, Query
from freshrec.model_state import public_state
from freshrec.models.base import Model, StateChanges
from freshrec.models.cooccurrence import CooccurrenceConfig, CooccurrenceModel
from freshrec.models.mf import BPRMatrixFactorization, MFConfig
from freshrec.models.popularity import PopularityConfig, PopularityModel

U = np.uint64
HISTORY = 3
UNIVERSE = 40  # keys 1..40 against capacities of 6-8: eviction on nearly every batch
DAY = 86_400.0

FACTORIES: dict[str, Callable[[], Model]] = {
    "popularity": lambda: PopularityModel(PopularityConfig(capacity=8)),
    # a half-life of ~1.4 min against hours between batches: the decay clock rebases (rescales all rows)
    "popularity-decayed": lambda: PopularityModel(PopularityConfig(half_life_days=0.001, capacity=8)),
    "cooccurrence": lambda: CooccurrenceModel(
        CooccurrenceConfig(capacity=8, max_neighbors=3, history_length=HISTORY, half_life_days=0.001)
    ),
    "cooccurrence-lfu": lambda: CooccurrenceModel(
        CooccurrenceConfig(capacity=6, max_neighbors=2, history_length=HISTORY, eviction="lfu")
    ),
    "bpr-mf": lambda: BPRMatrixFactorization(
        parse(MFConfig, dict(dim=4, user_capacity=6, item_capacity=8, seed=1), "flat")
    ),
    "bpr-mf-ttl-admission": lambda: BPRMatrixFactorization(
        parse(
            MFConfig,
            dict(dim=8, user_capacity=6, item_capacity=8, admit_after=2, ttl_seconds=3 * 3600.0, seed=2),
            "flat",
        )
    ),
    "bpr-mf-sgd-lfu": lambda: BPRMatrixFactorization(
        parse(
            MFConfig,
            dict(dim=4, user_capacity=5, item_capacity=7, optimizer="sgd", eviction="lfu", seed=3),
            "flat",
        )
    ),
}


def random_batch(rng: np.random.Generator, now: float, size: int) -> Interactions:
    users = rng.integers(1, UNIVERSE, size).astype(U)
    items = rng.integers(1, UNIVERSE, size).astype(U)
    history = rng.integers(0, UNIVERSE, (size, HISTORY)).astype(U)  # 0: padding
    times = np.sort(now + rng.uniform(0, 3600.0, size))
    query = Query(users, times, history, np.where(history == 0, np.nan, times[:, None] - 1.0))
    negatives = rng.integers(1, UNIVERSE, (size, 2)).astype(U)
    return Interactions(query, items, np.full(size, np.nan), np.zeros(size, np.int8), negatives)


def random_query(rng: np.random.Generator, now: float, size: int = 6) -> Query:
    users = rng.integers(1, UNIVERSE + 5, size).astype(U)
    history = rng.integers(0, UNIVERSE + 5, (size, HISTORY)).astype(U)
    return Query(users, np.full(size, now), history, np.zeros((size, HISTORY)))


def assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Public arrays equal (a replica's private ones, such as its row initialiser's position, are its own)."""
    a, b = public_state(a), public_state(b)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def assert_same_scores(a: Model, b: Model, rng: np.random.Generator, now: float) -> None:
    query = random_query(rng, now)
    candidates = np.arange(1, UNIVERSE + 5, dtype=U)
    np.testing.assert_array_equal(a.score(query, candidates), b.score(query, candidates))  # type: ignore[attr-defined]


def changes_nbytes(changes: StateChanges) -> int:
    rows = sum(r.nbytes + v.nbytes for r, v in changes.rows.values())
    return int(rows + sum(a.nbytes for a in changes.replaced.values()))


@pytest.mark.parametrize("name", sorted(FACTORIES))
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), drain_every=st.integers(1, 4), batches=st.integers(4, 14))
def test_replica_fed_only_deltas_equals_the_trainer(
    name: str, seed: int, drain_every: int, batches: int
) -> None:
    rng = np.random.default_rng(seed)
    trainer, replica = FACTORIES[name](), FACTORIES[name]()
    assert isinstance(trainer, Model)
    replica.apply_changes(trainer.drain_changes())  # construction-time changes (e.g. the cold rows)
    now = 0.0
    for step in range(batches):
        now += float(rng.choice([60.0, 3600.0, 5 * 3600.0]))  # sometimes past the TTL, sometimes not
        trainer.learn(random_batch(rng, now, int(rng.integers(1, 6))))  # type: ignore[attr-defined]
        if (step + 1) % drain_every == 0 or step == batches - 1:
            changes = trainer.drain_changes()
            assert changes.complete
            assert not set(changes.rows) & set(changes.replaced)  # the store takes a name once
            replica.apply_changes(changes)
            state = trainer.state_dict()
            assert_same_state(state, replica.state_dict())
            assert all(np.isfinite(a).all() for a in state.values() if a.dtype.kind == "f")
            assert_same_scores(trainer, replica, rng, now + 60.0)
    # Nothing changed since the last drain: an empty delta that keeps the replica equal.
    changes = trainer.drain_changes()
    assert changes.changed_rows == 0
    replica.apply_changes(changes)
    assert_same_state(trainer.state_dict(), replica.state_dict())


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_load_state_dict_and_safetensors_round_trip_score_identically(name: str, tmp_path) -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(7)
    trainer = FACTORIES[name]()
    now = 0.0
    for _ in range(10):
        now += 3600.0
        trainer.learn(random_batch(rng, now, 5))  # type: ignore[attr-defined]
    for through_file in (False, True):
        state = trainer.state_dict()
        if through_file:
            path = tmp_path / "state.safetensors"
            safetensors_numpy.save_file(state, str(path))
            state = safetensors_numpy.load_file(str(path))
        copy = FACTORIES[name]()
        copy.load_state_dict(state)
        assert_same_state(trainer.state_dict(), copy.state_dict())
        assert_same_scores(trainer, copy, rng, now)
        assert copy.drain_changes().changed_rows == 0  # loading is not a change to publish
        # The loaded copy keeps receiving deltas exactly.
        trainer.drain_changes()
        trainer.learn(random_batch(rng, now + 60.0, 5))  # type: ignore[attr-defined]
        copy.apply_changes(trainer.drain_changes())
        assert_same_state(trainer.state_dict(), copy.state_dict())
        assert_same_scores(trainer, copy, rng, now + 120.0)


def test_replica_may_lag_and_receive_rows_that_changed_owner_several_times() -> None:
    """Many evictions between two drains: a slot changes owner repeatedly and a key moves between slots."""
    rng = np.random.default_rng(3)
    trainer, replica = FACTORIES["cooccurrence"](), FACTORIES["cooccurrence"]()
    for step in range(40):
        trainer.learn(random_batch(rng, 60.0 * step, 5))  # type: ignore[attr-defined]
    replica.apply_changes(trainer.drain_changes())
    assert_same_state(trainer.state_dict(), replica.state_dict())
    assert_same_scores(trainer, replica, rng, 2400.0)


def test_mf_delta_is_a_small_fraction_of_the_state(capsys: pytest.CaptureFixture[str]) -> None:
    """100k-row tables, 64 wide; after 20 batches of 1,024 events a drain of one batch is tiny."""
    config = parse(MFConfig, dict(dim=64, user_capacity=100_000, item_capacity=100_000), "flat")
    model = BPRMatrixFactorization(config)
    rng = np.random.default_rng(0)
    n = 1024

    def batch(t: float) -> Interactions:
        users = rng.integers(1, 200_000, n).astype(U)
        items = (rng.zipf(1.3, n) % 150_000 + 1).astype(U)
        query = Query.without_history(users, np.full(n, t))
        negatives = (rng.zipf(1.3, (n, 4)) % 150_000 + 1).astype(U)
        return Interactions(query, items, np.full(n, np.nan), np.zeros(n, np.int8), negatives)

    for step in range(20):
        model.learn(batch(float(step)))
    model.drain_changes()
    model.learn(batch(20.0))
    changes = model.drain_changes()
    state_bytes = sum(a.nbytes for a in model.state_dict().values())
    delta_bytes = changes_nbytes(changes)
    with capsys.disabled():
        print(
            f"\nMF 100k users x 100k items x dim 64: state {state_bytes / 1e6:.1f} MB, delta of one batch of "
            f"{n} events {delta_bytes / 1e3:.1f} kB ({changes.changed_rows} rows max per tensor, "
            f"{state_bytes / delta_bytes:.0f}x smaller)"
        )
    # a batch touches at most 1,024 user rows and 5 x 1,024 item rows, plus the cold rows
    assert changes.changed_rows <= 5 * n + 1
    assert delta_bytes * 20 < state_bytes
