"""The live loop's processes on one machine: `freshrec serve` and `freshrec train` as child processes
sharing an event log and a model store, for `freshrec demo`, the end-to-end tests and the benchmarks.

It starts real processes (never threads standing in for them), talks to the server over HTTP only, and
stops by PID everything it started, also when the caller fails half-way.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from freshrec.errors import FreshrecError
from freshrec.events import EVENT_KINDS
from freshrec.sources.base import RawBatch


class LiveLoopError(FreshrecError):
    """A process of the live loop did not start or died."""


@dataclass
class LiveLoopConfig:
    """What to start.

    Parameters
    ----------
    directory
        Holds ``log/``, ``store/`` and ``processes.log`` (the children's output).
    port
        The server's port on 127.0.0.1 (None: a free one).
    model
        Registry name of the model the trainer learns (None: the configuration's).
    publish_ms
        The trainer publishes at most this often (None: the configuration's).
    batch_size
        The trainer's micro-batch (None: the configuration's).
    config_file
        A configuration file both processes read (``--config``); options above override it.
    train_args, serve_args
        Extra command-line options of `freshrec train` / `freshrec serve`.
    startup_timeout
        Seconds to wait for the server's ``/healthz``.
    """

    directory: Path
    port: int | None = None
    model: str | None = "cooccurrence"
    publish_ms: int | None = 1000
    batch_size: int | None = 256
    config_file: Path | None = None
    train_args: tuple[str, ...] = ()
    serve_args: tuple[str, ...] = ()
    startup_timeout: float = 60.0


class LiveLoop:
    """Start, query, kill and restart the server and the trainer.

    Use as a context manager: ``with LiveLoop(LiveLoopConfig(path)) as loop: loop.get("/versions")``.
    """

    def __init__(self, config: LiveLoopConfig) -> None:
        self.config = config
        self.directory = Path(config.directory)
        self.port = config.port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.server: subprocess.Popen | None = None
        self.trainer: subprocess.Popen | None = None
        self._output: IO[str] | None = None

    @property
    def process_log(self) -> Path:
        return self.directory / "processes.log"

    def _command(self, name: str, *options: str) -> list[str]:
        dirs = ["--store", str(self.directory / "store"), "--log", str(self.directory / "log")]
        config = [] if self.config.config_file is None else ["--config", str(self.config.config_file)]
        return [sys.executable, "-m", "freshrec.cli", name, *config, *dirs, *options]

    def _spawn(self, command: list[str]) -> subprocess.Popen:
        assert self._output is not None
        # Unbuffered: the output of a child killed without warning (SIGKILL) must reach the log.
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        start = functools.partial(
            subprocess.Popen,
            command,
            stdout=self._output,
            stderr=self._output,
            env=environment,
            preexec_fn=_die_with_parent(os.getpid()) if sys.platform == "linux" else None,
        )
        # The kernel sends the death signal when the *thread* that started the child ends, not the process:
        # a loop started from a short-lived thread (a pool's) would see its children SIGTERMed as that
        # thread exits. One launcher thread that lives as long as the process starts them all.
        return _launcher().submit(start).result()

    def start(self, trainer: bool = True) -> LiveLoop:
        """Start the server, wait until it answers, then start the trainer (unless `trainer` is False:
        `start_trainer` starts it later)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._output = open(self.process_log, "a")  # noqa: SIM115 (closed in stop())
        try:
            self.start_server()
            if trainer:
                self.start_trainer()
        except BaseException:
            self.stop()
            raise
        return self

    def start_trainer(self) -> None:
        """Start `freshrec train` (again, after `kill_trainer`: it resumes from the served version)."""
        given = {"--model": self.config.model, "--publish-ms": self.config.publish_ms}
        given["--batch-size"] = self.config.batch_size
        options = [
            part for option, value in given.items() if value is not None for part in (option, str(value))
        ]
        options += self.config.train_args
        self.trainer = self._spawn(self._command("train", *options))

    def kill_trainer(self, how: signal.Signals = signal.SIGKILL) -> None:
        """Stop the trainer abruptly, as a crash would."""
        _kill(self.trainer, how)
        self.trainer = None

    def start_server(self) -> None:
        """Start `freshrec serve` (again, after `kill_server`) and wait for its ``/healthz``."""
        self.server = self._spawn(self._command("serve", "--port", str(self.port), *self.config.serve_args))
        self.wait_until(
            lambda: self.get("/healthz")["status"] == "ok", self.config.startup_timeout, "/healthz"
        )

    def kill_server(self, how: signal.Signals = signal.SIGKILL) -> None:
        """Stop the server abruptly (SIGKILL: no clean-up runs), as a crash would."""
        _kill(self.server, how)
        self.server = None

    def stop(self) -> None:
        """SIGTERM both processes (each stops cleanly), SIGKILL what is still alive after 20 s."""
        children = [p for p in (self.trainer, self.server) if p is not None and p.poll() is None]
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.server = self.trainer = None
        if self._output is not None:
            self._output.close()
            self._output = None

    def __enter__(self) -> LiveLoop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ HTTP
    def request(
        self, path: str, body: object | bytes | None = None, timeout: float = 10.0
    ) -> tuple[int, Any]:
        """(status, decoded JSON) of a GET (no body) or POST; HTTP errors are returned, not raised."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path, data=data, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def get(self, path: str) -> Any:
        status, answer = self.request(path)
        if status != 200:
            raise LiveLoopError(f"GET {path} answered {status}: {answer}")
        return answer

    def post_events(self, events: list[dict[str, Any]] | bytes) -> dict[str, Any]:
        """POST /events; returns the 202 answer (raises on any other status)."""
        status, answer = self.request("/events", events)
        if status != 202:
            raise LiveLoopError(f"POST /events answered {status}: {answer}")
        return answer

    def served_events_trained(self) -> int:
        """Events the served version was trained on (its lineage's ``events_trained``)."""
        versions = self.get("/versions")
        trained = {v["version"]: v["metadata"].get("events_trained", 0) for v in versions["versions"]}
        return int(trained.get(versions["serving"], 0))

    def wait_until(self, condition: Any, timeout: float, what: str) -> None:
        """Poll `condition()` until true; connection errors count as not yet. Raises `LiveLoopError`
        naming `what` and the tail of the process output if it does not happen in time or a child died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, child in (("serve", self.server), ("train", self.trainer)):
                if child is not None and child.poll() is not None:
                    raise LiveLoopError(
                        f"freshrec {name} exited with {child.returncode}:\n{self.output_tail()}"
                    )
            try:
                if condition():
                    return
            except (OSError, LiveLoopError, KeyError):
                pass
            time.sleep(0.05)
        raise LiveLoopError(f"{what} did not happen within {timeout:g} s:\n{self.output_tail()}")

    def output_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.process_log.read_text().splitlines()[-lines:])
        except FileNotFoundError:
            return ""


@functools.cache
def _launcher() -> ThreadPoolExecutor:
    """The one thread that starts every child of this process's loops (see `LiveLoop._spawn`)."""
    return ThreadPoolExecutor(1, thread_name_prefix="freshrec-live-launcher")


def _die_with_parent(parent: int) -> Any:
    """A `preexec_fn` that makes the child receive SIGTERM when the process that started it dies, however it
    dies (SIGKILL included): without it, a killed `freshrec demo` left `serve` and `train` running under PID
    1. SIGTERM, not SIGKILL, so that the trainer still writes its last checkpoint."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above took effect
            os._exit(1)

    return arm


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _kill(process: subprocess.Popen | None, how: signal.Signals) -> None:
    if process is not None:
        process.send_signal(how)
        process.wait(timeout=20)


def records_of(raw: RawBatch) -> list[dict[str, Any]]:
    """The rows of a source's raw batch as JSON-able records, as a client would post them: numbers as
    numbers, kinds by name (a typed column carries codes), absent values (None, NaN) left out, so that the
    server's door is what judges them."""
    names = list(raw.columns)
    columns = []
    for name in names:
        column = raw.columns[name]
        if name == "kind" and column.dtype.kind in "iu":
            codes = np.asarray(column, dtype=np.int64)
            named = np.array(EVENT_KINDS, dtype=object)[np.clip(codes, 0, len(EVENT_KINDS) - 1)]
            column = np.where((codes >= 0) & (codes < len(EVENT_KINDS)), named, codes.astype(object))
        columns.append(column.tolist())
    records = []
    for row in zip(*columns, strict=True):
        records.append(
            {
                name: value
                for name, value in zip(names, row, strict=True)
                if value is not None and not (isinstance(value, float) and value != value)
            }
        )
    return records


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
