"""The mistakes a new user makes with a file of their own, replayed through the `freshrec replay` command:
each ends with the clear line (what went wrong and the fix to type) and its exit code, and the fixed
invocation accepts every row."""

import datetime
import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from freshrec.cli import app

pytestmark = pytest.mark.e2e

ROWS = 3000


def _events(seed: int = 1) -> list[tuple[str, str, int]]:
    rng = random.Random(seed)
    return [(f"u{rng.randrange(60)}", f"i{rng.randrange(120)}", 1_700_000_000 + n * 30) for n in range(ROWS)]


def _write_csv(path: Path, header: str, lines: list[str]) -> Path:
    path.write_text(header + "\n" + "\n".join(lines) + "\n")
    return path


def _us_date(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%m/%d/%Y %H:%M")


def replay(tmp_path: Path, *args: str) -> tuple[int, str, dict]:
    """Run the command in-process (the typer app the console script runs); exit code, stderr, metrics."""
    metrics = tmp_path / "out" / f"metrics-{len(list(tmp_path.glob('out/*')))}.json"
    result = CliRunner().invoke(
        app,
        [
            "replay",
            *args,
            "--model",
            "popularity",
            "--metrics-json",
            str(metrics),
            "--dead-letter",
            str(tmp_path / "dead" / "rejected.jsonl"),
        ],
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    figures = json.loads(metrics.read_text()) if metrics.exists() else {}
    return result.exit_code, result.stderr, figures


def test_epoch_milliseconds_fail_with_the_fix_and_the_fix_accepts_all(tmp_path: Path) -> None:
    events = _write_csv(
        tmp_path / "clicks.csv", "user_id,item_id,timestamp", [f"{u},{i},{t * 1000}" for u, i, t in _events()]
    )
    code, stderr, figures = replay(tmp_path, "--events", str(events))
    assert code == 3
    assert "nothing was accepted: 3,000 of 3,000 records rejected (100.0%)" in stderr
    assert "timestamps look like epoch milliseconds: pass --time-unit ms" in stderr
    assert figures["rejections_by_reason"] == {
        "timestamp: timestamp out of range: after 2200-01-01 (milliseconds?)": ROWS
    }
    assert figures["rejected_share"] == 1.0 and figures["failure"].startswith("nothing was accepted")
    assert "Traceback" not in stderr

    code, stderr, figures = replay(tmp_path, "--events", str(events), "--time-unit", "ms")
    assert code == 0, stderr
    assert figures["events_accepted"] == ROWS and figures["rejections_by_reason"] == {}
    assert figures["warnings"] == [] and figures["config"]["source"]["time_unit"] == "ms"


def test_us_dates_fail_with_the_format_to_pass_and_it_accepts_all(tmp_path: Path) -> None:
    events = _write_csv(
        tmp_path / "clicks.csv",
        "user_id,item_id,timestamp",
        [f"{u},{i},{_us_date(t)}" for u, i, t in _events()],
    )
    code, stderr, figures = replay(tmp_path, "--events", str(events))
    assert code == 3
    assert "timestamps look like US dates (month/day/year" in stderr
    assert "pass --time-format '%m/%d/%Y %H:%M'" in stderr
    assert list(figures["rejections_by_reason"].values()) == [ROWS]

    code, stderr, figures = replay(tmp_path, "--events", str(events), "--time-format", "%m/%d/%Y %H:%M")
    assert code == 0, stderr
    assert figures["events_accepted"] == ROWS and figures["events_rejected"] == 0


def test_a_json_array_file_is_read(tmp_path: Path) -> None:
    events = tmp_path / "clicks.json"
    events.write_text(json.dumps([{"user_id": u, "item_id": i, "timestamp": t} for u, i, t in _events()]))
    code, stderr, figures = replay(tmp_path, "--events", str(events))
    assert code == 0, stderr
    assert figures["events_accepted"] == ROWS and 0.0 < figures["hr@10"] <= 1.0


def test_a_non_unique_event_id_column_warns_that_event_id_must_identify_one_event(tmp_path: Path) -> None:
    lines = [f"{u},{i},{t},s{n // 20}" for n, (u, i, t) in enumerate(_events())]
    events = _write_csv(tmp_path / "clicks.csv", "user,item,ts,session", lines)
    mapping = "user=user,item=item,time=ts"
    code, stderr, figures = replay(tmp_path, "--events", str(events), "--columns", f"{mapping},id=session")
    assert code == 0
    assert "2,850 of 3,000 accepted events (95.0%) dropped as repeats" in stderr
    assert "event_id must identify one event, and column 'session' repeats" in stderr
    assert figures["duplicate_share"] == pytest.approx(0.95) and len(figures["warnings"]) == 1

    code, stderr, figures = replay(tmp_path, "--events", str(events), "--columns", mapping)
    assert code == 0 and "warning" not in stderr
    assert figures["events_duplicate"] == 0 and figures["events_accepted"] == ROWS


def test_missing_output_folders_are_created_before_the_replay(tmp_path: Path) -> None:
    events = _write_csv(
        tmp_path / "clicks.csv", "user_id,item_id,timestamp", [f"{u},{i},{t}" for u, i, t in _events()[:200]]
    )
    metrics = tmp_path / "new" / "deeper" / "x.json"
    dead = tmp_path / "elsewhere" / "y.jsonl"
    result = CliRunner().invoke(
        app,
        ["replay", "--events", str(events), "--model", "popularity", "--metrics-json", str(metrics)]
        + ["--dead-letter", str(dead)],
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(metrics.read_text())["events_accepted"] == 200 and dead.parent.is_dir()


def test_an_output_that_cannot_be_written_fails_before_the_replay(tmp_path: Path) -> None:
    events = _write_csv(tmp_path / "clicks.csv", "user_id,item_id,timestamp", ["u1,i1,1700000000"])
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for option, path in (("--metrics-json", blocker / "x.json"), ("--metrics-json", tmp_path)):
        result = CliRunner().invoke(app, ["replay", "--events", str(events), option, str(path)])
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
        assert f"{option} {path}:" in result.stderr and "freshrec replay" not in result.stderr


def test_rejections_past_the_largest_share_exit_3_and_past_the_warning_share_warn(tmp_path: Path) -> None:
    lines = [f"{u},{i},{t}" if n % 10 else f"{u},{i},soon" for n, (u, i, t) in enumerate(_events())]
    events = _write_csv(tmp_path / "clicks.csv", "user_id,item_id,timestamp", lines)
    code, stderr, figures = replay(tmp_path, "--events", str(events))
    assert code == 0
    assert (
        "warning: 300 of 3,000 records rejected (10.0%), more than --warn-share 5.0% (pipeline.warn_share)"
        in stderr
    )
    assert "neither epoch numbers nor ISO 8601 (e.g. 'soon')" in stderr

    code, stderr, _ = replay(tmp_path, "--events", str(events), "--warn-share", "0.2")
    assert code == 0 and "warning" not in stderr

    code, stderr, figures = replay(
        tmp_path, "--events", str(events), "--set", "pipeline.max_rejected_share=0.05"
    )
    assert code == 3 and "more than --max-rejected-share 5.0%" in stderr
    assert figures["events_accepted"] == 2700  # the figures are still written


def test_semicolons_without_a_header_are_read_by_position(tmp_path: Path) -> None:
    events = tmp_path / "export.csv"
    events.write_text("".join(f"{u};{i};{t}\n" for u, i, t in _events()))
    code, stderr, _ = replay(tmp_path, "--events", str(events), "--no-header")
    assert code == 2 and "columns are named by position, e.g. --columns user=0,item=1,time=2" in stderr
    code, stderr, figures = replay(
        tmp_path, "--events", str(events), "--no-header", "--columns", "user=0,item=1,time=2"
    )
    assert code == 0, stderr
    assert figures["events_accepted"] == ROWS and figures["config"]["source"]["header"] is False


def test_a_kind_of_ones_own_fails_naming_the_key_to_add_and_the_kind_map_accepts_it(tmp_path: Path) -> None:
    kinds = ["view", "add_to_cart", "purchase"]
    lines = [f"{u},{i},{t},{kinds[n % 3]}" for n, (u, i, t) in enumerate(_events())]
    events = _write_csv(tmp_path / "shop.csv", "user_id,item_id,timestamp,kind", lines)
    code, stderr, figures = replay(tmp_path, "--events", str(events))
    assert code == 0, stderr  # two thirds were accepted: a warning, not a failure
    assert "warning: 1,000 of 3,000 records rejected (33.3%)" in stderr
    [(reason, count)] = figures["rejections_by_reason"].items()
    assert count == 1000 and reason.startswith("kind: ") and "[pipeline.kinds] add_to_cart = " in reason

    config = tmp_path / "freshrec.toml"
    config.write_text('[pipeline.kinds]\nadd_to_cart = "click"\n')
    code, stderr, figures = replay(tmp_path, "--config", str(config), "--events", str(events))
    assert code == 0, stderr
    assert figures["events_accepted"] == ROWS and figures["rejections_by_reason"] == {}
    assert figures["warnings"] == []
