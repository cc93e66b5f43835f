"""`freshrec study cadence` as a user runs it: the four cadences' table, and the files it promises."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_the_cadence_study_writes_its_table_figures_and_plot(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "freshrec.cli", "study", "cadence", "--source", "synthetic"]
        + ["--synthetic-events", "4000", "--synthetic-days", "3", "--model", "popularity"]
        + ["--max-events", "3000", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads((tmp_path / "cadence.json").read_text())
    assert figures["events"] == 3000  # the first 3,000 of the 4,000 generated
    assert (tmp_path / "cadence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "cadence.md").read_text()
    for cadence in ("every micro-batch", "every hour", "every day", "frozen"):
        assert cadence in table


def test_an_unknown_model_is_named_before_anything_is_read(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "freshrec.cli", "study", "cadence", "--model", "nope", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "unknown model 'nope'" in result.stdout + result.stderr
