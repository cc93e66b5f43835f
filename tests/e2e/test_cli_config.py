"""Configuration as a user meets it, through real processes: `--config` and `--set` on replay, train and
serve, `config show`, `--version`, and the server rebuilding the trainer's non-default model from the
version it serves."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from freshrec.live import LiveLoop, LiveLoopConfig

pytestmark = pytest.mark.e2e


def freshrec(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "freshrec.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_version_and_config_show_read_back(tmp_path: Path) -> None:
    version = freshrec("--version")
    assert version.returncode == 0 and version.stdout.startswith("freshrec ")
    shown = freshrec("config", "show", "--command", "replay", "--set", "trainer.batch_size=64")
    assert shown.returncode == 0, shown.stderr
    assert 'name = "blend"' in shown.stdout and "batch_size = 64" in shown.stdout
    saved = tmp_path / "freshrec.toml"
    saved.write_text(shown.stdout)
    again = freshrec("config", "show", "--command", "replay", "--config", str(saved))
    assert again.stdout == shown.stdout


def test_replay_reads_the_file_and_a_wrong_key_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "freshrec.toml"
    config.write_text(
        '[source]\nname = "synthetic"\nsynthetic_events = 3000\n'
        '[model]\nname = "cooccurrence"\nmax_neighbors = 9\n'
        "[trainer]\nbatch_size = 100\n"
    )
    out = tmp_path / "metrics.json"
    result = freshrec("replay", "--config", str(config), "--metrics-json", str(out), "--set", "trainer.k=5")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(out.read_text())
    assert metrics["events_read"] == 3000 and "hr@5" in metrics
    assert (
        metrics["config"]["model"]["max_neighbors"] == 9 and metrics["config"]["trainer"]["batch_size"] == 100
    )

    config.write_text("[trainer]\nbatch_sz = 100\n")
    wrong = freshrec("replay", "--config", str(config), "--source", "synthetic")
    assert wrong.returncode == 2
    lines = wrong.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in wrong.stderr, wrong.stderr
    assert str(config) in lines[0] and "trainer.batch_sz" in lines[0] and "batch_size" in lines[0]

    bad_value = freshrec("replay", "--source", "synthetic", "--set", "model.max_neighbors=many")
    assert bad_value.returncode == 2 and "model.max_neighbors" in bad_value.stderr
    assert len(bad_value.stderr.strip().splitlines()) == 1


def test_the_server_rebuilds_the_trainers_non_default_model_from_the_version(tmp_path: Path) -> None:
    """The trainer runs a two-tower model of dimension 32 (the server's own settings are the defaults, 64):
    the server answers only if it rebuilt the model from the version's stored spec."""
    trainer_settings = tmp_path / "trainer.toml"
    trainer_settings.write_text(
        '[model]\nname = "two-tower"\ndim = 32\nhidden = 32\n'
        "[model.users]\ncapacity = 5000\n[model.items]\ncapacity = 2000\n"
    )
    config = LiveLoopConfig(
        tmp_path / "live",
        model=None,
        publish_ms=200,
        train_args=("--config", str(trainer_settings)),
    )
    with LiveLoop(config) as loop:
        now = time.time()
        events = [
            {"event_id": n, "timestamp": now + n, "user_id": f"u{n % 40}", "item_id": f"i{(n * 7) % 90}"}
            for n in range(3000)
        ]
        for start in range(0, len(events), 500):
            assert loop.post_events(events[start : start + 500])["accepted"] == 500
        loop.wait_until(lambda: loop.served_events_trained() >= 3000, 120, "a version trained on every event")
        versions = loop.get("/versions")
        served = next(v for v in versions["versions"] if v["version"] == versions["serving"])
        assert served["metadata"]["model"]["dim"] == 32
        assert served["metadata"]["config"]["model"]["items"]["capacity"] == 2000
        answer = loop.get("/recommend?user_id=u3&k=5")
        assert answer["model_version"] == versions["serving"] and len(answer["items"]) == 5
