"""The `freshrec replay` command as a user runs it: a real process, a real file, a real dead-letter file."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def write_messy_csv(path: Path, rows: int = 2000, bad_fraction: float = 0.05, seed: int = 3) -> int:
    """A clicks file where about 5% of lines are broken in the ways real exports break; returns bad count."""
    rng = random.Random(seed)
    breakers = [
        lambda u, i, t: f"{u},{i}",  # a field short
        lambda u, i, t: f"{u},{i},{t},view,extra",  # a field too many
        lambda u, i, t: f"{u},{i},yesterday,view",  # unparseable time
        lambda u, i, t: f",{i},{t},view",  # missing user
        lambda u, i, t: f"{u},{i},{t},buy",  # unknown kind
        lambda u, i, t: f"{u},{i},99999999999999,view",  # time out of range (milliseconds?)
        lambda u, i, t: f"{'x' * 400},{i},{t},view",  # oversized id
    ]
    lines, bad = ["user,item,ts,action"], 0
    for n in range(rows):
        user, item, ts = f"u{rng.randrange(50)}", rng.randrange(200), 1_700_000_000 + n * 7
        if rng.random() < bad_fraction:
            lines.append(rng.choice(breakers)(user, item, ts))
            bad += 1
        else:
            stamp = ts if n % 2 else f"2023-11-14T22:{(n // 60) % 60:02d}:{n % 60:02d}Z"
            lines.append(f"{user},{item},{stamp},{rng.choice(['view', 'click', 'purchase'])}")
    path.write_text("\n".join(lines) + "\n")
    return bad


def test_messy_file_replays_to_the_end_and_counts_reconcile(tmp_path):
    events = tmp_path / "clicks.csv"
    bad = write_messy_csv(events)
    metrics, dead = tmp_path / "metrics.json", tmp_path / "dead.jsonl"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "freshrec.cli",
            "replay",
            "--events",
            str(events),
            "--columns",
            "user=user,item=item,time=ts,kind=action",
            "--model",
            "cooccurrence",
            "--metrics-json",
            str(metrics),
            "--dead-letter",
            str(dead),
            "--batch-size",
            "64",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(metrics.read_text())
    for key in (
        "hr@10",
        "ndcg@10",
        "events_read",
        "events_accepted",
        "events_rejected",
        "events_per_second",
        "model",
        "config",
    ):
        assert key in report
    assert report["events_read"] == 2000
    assert report["events_rejected"] == bad > 50
    assert report["events_accepted"] + report["events_rejected"] == report["events_read"]
    dead_letters = [json.loads(line) for line in dead.read_text().splitlines()]
    assert len(dead_letters) == bad
    assert all(d["field"] and d["reason"] and d["position"] >= 2 for d in dead_letters)
    assert {d["field"] for d in dead_letters} >= {"timestamp", "user_id", "kind"}
    assert 0.0 < report["hr@10"] <= 1.0


def test_unknown_model_is_a_clear_error(tmp_path):
    events = tmp_path / "clicks.csv"
    write_messy_csv(events, rows=20, bad_fraction=0.0)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "freshrec.cli",
            "replay",
            "--events",
            str(events),
            "--columns",
            "user=user,item=item,time=ts",
            "--model",
            "nope",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "--model" in result.stderr and "cooccurrence" in result.stderr


def test_movielens_replay_meets_the_quality_bar(tmp_path, wheel):
    """The co-occurrence model on MovieLens-100K through the CLI, B = 256, HR@10 >= 0.19 (the default model,
    the blend, is slower by 20x and has its figure from bench/quality.py)."""
    metrics = tmp_path / "metrics.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "freshrec.cli",
            "replay",
            "--source",
            "movielens-100k",
            "--movielens-path",
            str(wheel),
            "--metrics-json",
            str(metrics),
            "--model",
            "cooccurrence",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(metrics.read_text())
    assert report["model"] == "cooccurrence" and report["config"]["trainer"]["batch_size"] == 256
    assert report["events_read"] == report["events_accepted"] == 100_000
    assert report["hr@10"] >= 0.19 and report["ndcg@10"] >= 0.095
