"""`freshrec demo`, the README's main job, as a user runs it: it starts the server and the trainer, feeds
them a stream over HTTP, reports the version served, and leaves no process behind."""

import re
import subprocess
import sys

import pytest

from freshrec.live import free_port

pytestmark = pytest.mark.e2e


def test_the_demo_feeds_a_stream_through_the_live_loop_and_stops_cleanly(tmp_path):
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "freshrec.cli", "demo", "--port", str(port), "--directory", str(tmp_path)]
        + ["--max-events", "3000", "--events-per-second", "1500"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = " ".join((result.stdout + result.stderr).split())  # rich wraps long lines
    assert f"http://127.0.0.1:{port}/recommend" in output
    assert f"dashboard http://127.0.0.1:{port}/ " in output
    served = re.search(r"serving version (\d+), trained on all ([\d,]+) events", output)
    assert served and int(served.group(1)) >= 2 and int(served.group(2).replace(",", "")) == 3000, output
    assert (tmp_path / "store" / "manifest.json").exists() and (tmp_path / "log").is_dir()
    # Both children were stopped: nothing listens on the port any more.
    with pytest.raises(OSError):
        import urllib.request

        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
