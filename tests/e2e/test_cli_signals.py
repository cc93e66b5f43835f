"""Stopping the live loop as an operator does: SIGTERM (kill, systemd, Kubernetes) or SIGINT (Ctrl-C) to
`freshrec demo` stops it and its `serve` and `train` children; a demo killed outright (SIGKILL) takes them
with it; `freshrec train` pointed at a log that does not exist fails at once with the fix."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from freshrec.live import free_port

pytestmark = pytest.mark.e2e


def _children(pid: int) -> set[int]:
    """PIDs whose parent is `pid`, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name, in parentheses, may hold spaces: the fields after it are fixed.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a child reparented to PID 1 is reaped there)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _start_demo(tmp_path: Path) -> tuple[subprocess.Popen, set[int]]:
    """A demo feeding an endless stream slowly, once both children run and the server answers."""
    command = [sys.executable, "-m", "freshrec.cli", "demo", "--port", str(free_port())]
    command += ["--directory", str(tmp_path), "--events-per-second", "200"]
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert demo.stdout is not None
    lines = []
    deadline = time.monotonic() + 120
    for line in demo.stdout:  # the demo prints this once the server answers and the trainer is started
        lines.append(line)
        if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
            break
    children = _children(demo.pid)
    if len(children) != 2:
        demo.kill()
        pytest.fail(f"expected serve and train under the demo, found {children}: {''.join(lines)}")
    return demo, children


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {pid for pid in pids if _alive(pid)}
        if not left:
            return left
        time.sleep(0.1)
    return {pid for pid in pids if _alive(pid)}


def _kill_left(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_demo_stops_it_and_its_children(tmp_path, number):
    demo, children = _start_demo(tmp_path)
    try:
        demo.send_signal(number)
        output, _ = demo.communicate(timeout=30)
        left = _wait_gone(children, 5)
        assert not left, f"children still running after {number.name}: {left}"
        assert demo.returncode == 0, output
        assert f"stopping ({number.name})" in output, output
        assert "Traceback" not in output, output
    finally:
        demo.kill()
        _kill_left(children)


def test_children_die_with_a_demo_killed_outright(tmp_path):
    demo, children = _start_demo(tmp_path)
    try:
        demo.kill()
        demo.wait(timeout=10)
        left = _wait_gone(children, 30)  # they get SIGTERM: the trainer still writes its checkpoint
        assert not left, f"children outlived a SIGKILLed demo: {left}"
    finally:
        _kill_left(children)


def test_train_with_a_missing_log_fails_at_once_with_the_fix(tmp_path):
    missing = tmp_path / "no-such-log"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "freshrec.cli", "train", "--log", str(missing)]
        + ["--store", str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert f"no event log at {missing}" in lines[0]
    assert f"freshrec serve --log {missing}" in lines[0]
    assert took < 30, took  # the interpreter's start only: no waiting for the log to appear
    assert not (tmp_path / "store").exists()
