"""`freshrec replay --model rating-mf` of a file whose `value` is a price, not a rating: exit 2 with one
line naming the field and the scale, where it used to report an RMSE of 113.9 and exit 0."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_a_price_mapped_to_value_stops_a_rating_replay_with_the_reason(tmp_path):
    rows = ["user,item,ts,price,stars"]
    rows += [f"u{n % 30},i{n % 40},{1_700_000_000 + n},{20 + n % 200}.5,{1 + n % 5}" for n in range(600)]
    events = tmp_path / "orders.csv"
    events.write_text("\n".join(rows) + "\n")
    command = [sys.executable, "-m", "freshrec.cli", "replay", "--events", str(events)]
    command += ["--model", "rating-mf", "--dead-letter", str(tmp_path / "dead.jsonl")]

    def replay(value_column: str) -> subprocess.CompletedProcess:
        columns = f"user=user,item=item,time=ts,value={value_column}"
        return subprocess.run([*command, "--columns", columns], capture_output=True, text=True, timeout=300)

    wrong = replay("price")
    assert wrong.returncode == 2, wrong.stdout + wrong.stderr
    error = " ".join(wrong.stderr.split())
    assert "error: value:" in error and "outside the rating scale [1, 5] of rating-mf" in error, error
    assert "Traceback" not in wrong.stderr
    right = replay("stars")
    assert right.returncode == 0, right.stdout + right.stderr
    assert "RMSE" in right.stderr + right.stdout
