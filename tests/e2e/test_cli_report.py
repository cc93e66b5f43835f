"""`freshrec report` as a user runs it: replays and a study in one folder become one HTML page that carries
its plots inline and points at nothing outside itself."""

import json
import re
import subprocess
import sys
from itertools import pairwise

import pytest

pytestmark = pytest.mark.e2e


def freshrec(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "freshrec.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_a_report_of_replays_and_a_study_is_one_self_contained_page(tmp_path):
    for model in ("cooccurrence", "popularity"):
        replayed = freshrec(
            "replay", "--source", "synthetic", "--synthetic-events", "4000", "--model", model,
            "--set", "pipeline.read_size=1000", "--metrics-json", str(tmp_path / f"{model}.json"),
            "--dead-letter", str(tmp_path / "rejected.jsonl"),
        )  # fmt: skip
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    metrics = json.loads((tmp_path / "cooccurrence.json").read_text())
    series = metrics["series"]  # quality over event time: one point per 1,000 records read
    assert len(series) == 4 and series[-1]["events"] == sum(w["events"] for w in metrics["windows"])
    assert all(a["time"] < b["time"] and a["events"] < b["events"] for a, b in pairwise(series))
    assert all(0.0 <= p["hr@10"] <= 1.0 for p in series)
    studied = freshrec(
        "study", "cadence", "--source", "synthetic", "--synthetic-events", "3000", "--synthetic-days", "2",
        "--model", "popularity", "--out", str(tmp_path / "cadence"),
    )  # fmt: skip
    assert studied.returncode == 0, studied.stdout + studied.stderr

    reported = freshrec("report", str(tmp_path))
    assert reported.returncode == 0, reported.stdout + reported.stderr
    page = (tmp_path / "report.html").read_text()
    # HR and NDCG over event time, the two models side by side, the cadences
    assert page.count('<img alt="plot" src="data:image/png;base64,') == 4
    assert not re.search(r"https?://", page)
    assert not re.search(r"<(script|link|iframe)\b", page) and "url(" not in page
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', page))
    for text in ("cooccurrence", "popularity", "Cadence study"):
        assert text in page


def test_a_folder_without_metrics_is_one_clear_error(tmp_path):
    (tmp_path / "other.json").write_text("[1, 2]")
    result = freshrec("report", str(tmp_path), "--out", str(tmp_path / "r.html"), timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no metrics found" in result.stderr and "--metrics-json" in result.stderr
    missing = freshrec("report", str(tmp_path / "nope"), timeout=120)
    assert missing.returncode == 2 and "no such folder" in missing.stderr
