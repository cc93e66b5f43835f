"""Synchronous training over 2 ranks (torchrun, gloo) learns what one process learns at the same global
batch: every id's row within 1e-5, the same HR@10, each rank holding half the rows; the merged state of
the ranks is one model that a single process loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from freshrec.embeddings.sharded import RowSharding, even_shares, merge_shard_states
from freshrec.errors import ConfigError
from freshrec.interactions import Query
from freshrec.live import free_port
from freshrec.models.registry import create_model

WORKER = Path(__file__).parents[2] / "bench" / "distributed_rank.py"
#: Items table larger than one rank may hold: 2,109 items live in the stream, 1,200 rows per rank.
MF_CONFIG = {"items": {"capacity": 2200, "rank_capacity": 1200}}


def run(out: Path, *options: str, ranks: int | None = None) -> None:
    """The worker as one plain process (ranks None) or as `ranks` ranks under torchrun."""
    if ranks is None:
        command = [sys.executable, str(WORKER), "--plain"]
    else:
        launcher = ["-m", "torch.distributed.run", "--nproc-per-node", str(ranks)]
        command = [sys.executable, *launcher, "--master-port", str(free_port()), str(WORKER)]
    done = subprocess.run(
        [*command, "--out", str(out), *options], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def rows_by_id(directory: Path, ranks: int, table: str) -> tuple[np.ndarray, np.ndarray]:
    """(sorted keys, their rows) of a table over every rank's file."""
    files = [np.load(directory / f"rank-{r}.npz") for r in range(ranks)]
    keys = np.concatenate([f[f"{table}.keys"] for f in files])
    weights = np.concatenate([f[f"{table}.weights"] for f in files])
    order = np.argsort(keys)
    return keys[order], weights[order]


def result(directory: Path, rank: int = 0) -> dict:
    return json.loads((directory / f"rank-{rank}.json").read_text())


def equivalent_runs(tmp_path: Path, model: str, config: dict) -> tuple[Path, Path]:
    options = ("--model", model, "--events", "6000", "--batch", "256", "--config", json.dumps(config))
    run(tmp_path / "one", *options)
    run(tmp_path / "two", *options, ranks=2)
    return tmp_path / "one", tmp_path / "two"


def assert_rows_match(one: Path, two: Path, tables: tuple[str, ...]) -> None:
    for table in tables:
        keys, weights = rows_by_id(one, 1, table)
        sharded_keys, sharded_weights = rows_by_id(two, 2, table)
        np.testing.assert_array_equal(sharded_keys, keys, err_msg=f"{table}: other ids have rows")
        np.testing.assert_allclose(sharded_weights, weights, rtol=0, atol=1e-5, err_msg=table)


def merged_model(two: Path, name: str, config: dict) -> torch.nn.Module:
    states = [dict(np.load(two / f"state-{rank}.npz")) for rank in range(2)]
    model = create_model(name, config)
    model.load_state_dict(merge_shard_states(states))
    return model


def test_bpr_mf_over_two_ranks_learns_every_row_as_one_process(tmp_path: Path) -> None:
    one, two = equivalent_runs(tmp_path, "bpr-mf", MF_CONFIG)
    assert_rows_match(one, two, ("users", "items"))
    single, ranks = result(one), [result(two, r) for r in range(2)]
    assert single["events"] == ranks[0]["events"] == ranks[1]["events"] == 6000
    assert abs(ranks[0]["hr"] - single["hr"]) <= 0.002 and ranks[0]["hr"] == ranks[1]["hr"]
    # The items table does not fit one rank (rank_capacity 1,200 < 2,109 live items): each holds half.
    held = [len(np.load(two / f"rank-{r}.npz")["items.keys"]) for r in range(2)]
    assert single["items.live_rows"] > 1200
    assert all(0.4 <= h / sum(held) <= 0.6 for h in held), held
    # The ranks' states merge into the one model a server loads: it scores as the plain process's.
    merged = merged_model(two, "bpr-mf", MF_CONFIG)
    reference = create_model("bpr-mf", MF_CONFIG)
    reference.load_state_dict(dict(np.load(one / "state-0.npz")))
    items = merged.vector_items()
    users = merged.users.index.keys_of(merged.users.index.live_slots())
    query = Query.without_history(users, np.zeros(len(users)))
    np.testing.assert_allclose(merged.score(query, items), reference.score(query, items), atol=1e-4)


def test_two_tower_over_two_ranks_learns_every_row_as_one_process(tmp_path: Path) -> None:
    one, two = equivalent_runs(tmp_path, "two-tower", {})
    assert_rows_match(one, two, ("users", "items"))
    single, ranks = result(one), [result(two, r) for r in range(2)]
    assert abs(ranks[0]["hr"] - single["hr"]) <= 0.002 and ranks[0]["hr"] == ranks[1]["hr"]
    plain = np.load(one / "rank-0.npz")
    dense = [np.load(two / f"rank-{r}.npz") for r in range(2)]
    for key in (k for k in dense[0].files if k.startswith("dense.")):
        # The towers' weights are the same on every rank after each step, bit for bit...
        np.testing.assert_array_equal(dense[0][key], dense[1][key], err_msg=key)
        # ...and the plain process's within Adam's rounding, except in the one direction the loss does
        # not see: a vector added to every item vector shifts each row's logits alike (softmax ignores it),
        # so the output bias's gradient is rounding noise, which Adam's normalised step turns into +-lr.
        if key != "dense.item_tower.out.bias":
            np.testing.assert_allclose(dense[0][key], plain[key], rtol=0, atol=1e-4, err_msg=key)


def test_a_table_larger_than_one_rank_is_refused_with_the_ranks_it_needs() -> None:
    model = create_model("bpr-mf", MF_CONFIG)
    with pytest.raises(ConfigError, match="rank_capacity 1,200: train with at least 2 ranks"):
        model.shard(RowSharding(0, 1), lambda parameters: None)


def test_a_model_that_cannot_learn_in_shares_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="'cooccurrence' does not learn over several ranks"):
        create_model("cooccurrence").shard(RowSharding(0, 2), lambda parameters: None)


@pytest.mark.parametrize("n", [0, 1, 2, 5, 256, 513])
def test_even_shares_cover_a_batch_once(n: int) -> None:
    shares = even_shares(n, 2)
    covered = np.concatenate([np.arange(n)[s] for s in shares])
    np.testing.assert_array_equal(covered, np.arange(n))
    assert max(s.stop - s.start for s in shares) - min(s.stop - s.start for s in shares) <= 1
