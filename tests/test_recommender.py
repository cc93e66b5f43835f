"""The library API as a user meets it: a CSV of one's own learned through every input form, recommendations
in raw ids, and save / load that keeps the same answers and the same further learning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest

import freshrec
from freshrec.errors import ConfigError
from freshrec.events import Event, EventBatch


def clicks_csv(path: Path, rows: int = 1200, seed: int = 0) -> Path:
    """A shop's clicks: string user ids, string item ids in 6 groups, ISO times and epoch times mixed."""
    rng = np.random.default_rng(seed)
    lines = ["customer,product,when,action"]
    start = 1_714_550_400  # 2024-05-01T08:00:00Z
    for n in range(rows):
        user = int(rng.integers(60))
        group = user % 6
        item = (
            f"sku-{group}-{int(rng.integers(8))}" if rng.random() < 0.85 else f"sku-{int(rng.integers(6))}-0"
        )
        when = start + 37 * n
        stamp = str(when) if n % 2 else np.datetime_as_string(np.datetime64(when, "s")) + "Z"
        lines.append(f"c{user},{item},{stamp},{['view', 'click', 'purchase'][n % 3]}")
    path.write_text("\n".join(lines) + "\n")
    return path


MAPPING = "user=customer,item=product,time=when,kind=action"


def test_a_csv_of_ones_own_learned_recommended_saved_and_loaded(tmp_path: Path) -> None:
    table = pcsv.read_csv(clicks_csv(tmp_path / "clicks.csv"))
    rec = freshrec.Recommender("cooccurrence", batch_size=128)
    report = rec.learn(table.slice(0, 800), columns=MAPPING)
    assert (report.accepted, report.rejected, report.learned) == (800, 0, 800)
    answer = rec.recommend("c7", k=5)
    assert len(answer) == 5 and all(isinstance(item, str) and item.startswith("sku-") for item, _ in answer)
    assert [score for _, score in answer] == sorted((score for _, score in answer), reverse=True)
    # c7 is in group 1: its own group's items rank first.
    assert sum(item.startswith("sku-1-") for item, _ in answer) >= 3

    rec.save(tmp_path / "saved")
    loaded = freshrec.Recommender.load(tmp_path / "saved")
    users = [f"c{n}" for n in range(60)] + ["never-seen"]
    assert [loaded.recommend(u, k=8) for u in users] == [rec.recommend(u, k=8) for u in users]
    # The same further learning: both learn the rest of the file and still answer alike.
    for each in (rec, loaded):
        each.learn(table.slice(800), columns=MAPPING)
    assert [loaded.recommend(u, k=8) for u in users] == [rec.recommend(u, k=8) for u in users]


def test_every_input_form_learns_the_same(tmp_path: Path) -> None:
    table = pcsv.read_csv(clicks_csv(tmp_path / "clicks.csv", rows=400))
    renamed = table.rename_columns(["user_id", "item_id", "timestamp", "kind"])
    records = renamed.to_pylist()
    forms = {
        "records": records,
        "arrow": renamed,
        "pandas": renamed.to_pandas(),
        "mapped arrow": table,
    }
    answers = {}
    for name, data in forms.items():
        rec = freshrec.Recommender("cooccurrence")
        report = rec.learn(data, columns=MAPPING if name == "mapped arrow" else None)
        assert report.learned == 400, name
        answers[name] = [rec.recommend(f"c{n}", k=5) for n in range(10)]
    assert all(answer == answers["records"] for answer in answers.values())
    # One at a time (micro-batches of one) learns the same counts, so popularity answers alike.
    one_by_one, whole = freshrec.Recommender("popularity"), freshrec.Recommender("popularity")
    for record in records[:50]:
        one_by_one.learn_one(record)
    whole.learn(records[:50])
    assert one_by_one.recommend("anyone", k=10) == whole.recommend("anyone", k=10)
    batch = EventBatch.from_events(
        Event(f"e{n}", 1.7e9 + n, f"u{n % 4}", f"i{n % 9}", "click") for n in range(30)
    )
    assert freshrec.Recommender("popularity").learn(batch).learned == 30


def test_bad_records_are_reported_and_repeats_dropped() -> None:
    rec = freshrec.Recommender("popularity")
    report = rec.learn(
        [
            {"event_id": 1, "user_id": "a", "item_id": "x", "timestamp": "2024-05-01T08:00:00+02:00"},
            {"event_id": 1, "user_id": "a", "item_id": "x", "timestamp": "2024-05-01T08:00:00+02:00"},
            {"user_id": "b", "item_id": "y", "timestamp": 1.7e12},  # milliseconds
            {"user_id": "b", "timestamp": 1.7e9},
            "not a record",
        ]
    )
    assert (report.accepted, report.rejected, report.duplicates, report.learned) == (2, 3, 1, 1)
    reasons = {r.field: r.reason for r in report.rejections}
    assert "milliseconds?" in reasons["timestamp"] and reasons["item_id"] == "missing field"
    assert reasons["_record"].startswith("expected a JSON object")
    assert rec.recommend("b") == [("x", 1.0)]
    with pytest.raises(ConfigError, match="list of dicts"):
        rec.learn(42)
    with pytest.raises(ConfigError, match="k must be at least 1"):
        rec.recommend("b", k=0)


def test_overrides_reach_the_model_and_the_trainer_and_bad_ones_name_the_key(tmp_path: Path) -> None:
    rec = freshrec.Recommender("bpr-mf", dim=16, items={"capacity": 500}, batch_size=32, negatives=2)
    assert rec.model.config.dim == 16 and rec.model.items.config.capacity == 500
    assert rec.trainer.config.batch_size == 32 and rec.trainer.config.negatives == 2
    assert rec.model.config.users.init_std == 0.0  # the section keeps the model's own defaults
    with pytest.raises(ConfigError, match=r"model.dimension: unknown key"):
        freshrec.Recommender("bpr-mf", dimension=16)
    with pytest.raises(ConfigError, match=r"model.name: unknown model 'nope'"):
        freshrec.Recommender("nope")
    settings = tmp_path / "freshrec.toml"
    settings.write_text('[model]\nname = "two-tower"\ndim = 16\nhidden = 16\n[trainer]\nnegatives = 3\n')
    from_file = freshrec.Recommender(settings=settings)
    assert from_file.model.name == "two-tower" and from_file.model.config.dim == 16
    assert from_file.trainer.config.negatives == 3


def test_evaluation_on_request_reports_prequential_figures() -> None:
    events = [
        {"user_id": f"u{n % 20}", "item_id": f"i{(n % 20) // 4}-{n % 3}", "timestamp": 1.7e9 + n}
        for n in range(600)
    ]
    rec = freshrec.Recommender("cooccurrence", evaluate=True, k=5)
    rec.learn(events)
    assert rec.metrics["events"] == 600 and 0 < rec.metrics["hr@5"] <= 1


def test_loading_something_else_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a saved freshrec recommender"):
        freshrec.Recommender.load(tmp_path)
    assert pd is not None and pa is not None
