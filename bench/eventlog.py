"""Event log figures: append throughput and append -> visible-to-a-tailing-reader latency, per fsync policy.

Usage: `python bench/eventlog.py [--seconds 0.8] [--dir /path/on/the/disk/to/measure] [--no-write]`

Throughput: one writer appends batches of 1, 100 and 10,000 events for `--seconds` per case. The peer, in
the same run, is the I/O floor: the same record bytes written with plain `os.write` (and one fdatasync
per write for ``every-batch``), so the ratio is what encoding, framing and bookkeeping cost on top of the
disk. Latency: a reader in another process tails the log (``follow=True``, 1 ms poll) while the writer
appends a 10-event batch every 5 ms; each batch carries the writer's `time.monotonic()` (system-wide on
Linux) taken just before `append`, and the reader notes when it sees it. In ``interval`` mode the time
until `wait_durable` returns is measured as well. Writes its section of BENCHMARKS.md unless --no-write.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import machine_line, markdown_table, write_section  # noqa: E402
from freshrec.events import EventBatch  # noqa: E402
from freshrec.sources.eventlog import EventLog, EventLogConfig, EventLogReader, encode_payload  # noqa: E402

POLICIES = ("every-batch", "interval")
LATENCY_APPENDS = 300
LATENCY_BATCH = 10
LATENCY_PERIOD = 0.005
POLL_INTERVAL = 0.001


def make_batch(n: int, start: int = 0, string_ids: bool = False, stamp: float = 0.0) -> EventBatch:
    ids = np.arange(start, start + n, dtype=np.int64)
    rng = np.random.default_rng(start)
    users = rng.integers(0, 100_000, n)
    return EventBatch(
        event_id=np.array([f"evt-{i}" for i in ids], dtype=object) if string_ids else ids,
        timestamp=np.full(n, stamp) if stamp else 1.7e9 + ids * 0.01,
        user_id=np.array([f"user-{u}" for u in users], dtype=object) if string_ids else users,
        item_id=rng.integers(0, 50_000, n),
        kind=rng.integers(0, 5, n).astype(np.int8),
        value=np.where(rng.random(n) < 0.5, np.nan, 4.0),
    )


def filesystem_of(path: Path) -> str:
    """The mount point and type holding `path` (fsync costs differ wildly between ext4, tmpfs, overlay)."""
    best = ("", "unknown")
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount, kind, *_ = line.split()
        if str(path.resolve()).startswith(mount.rstrip("/") + "/") and len(mount) > len(best[0]):
            best = (mount, kind)
    return f"{best[1]} ({best[0]})"


def append_rate(directory: Path, fsync: str, batch: EventBatch, seconds: float) -> tuple[float, float]:
    """(events/s, bytes on disk per event) of appending `batch` again and again for `seconds`."""
    shutil.rmtree(directory, ignore_errors=True)
    with EventLog.open(EventLogConfig(directory, fsync=fsync)) as log:
        appends, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds or appends < 3:
            log.append(batch)
            appends += 1
        log.flush()  # interval mode: the figure includes making it all durable
        elapsed = time.perf_counter() - started
        events = log.next_offset
    size = sum(p.stat().st_size for p in directory.glob("*.log"))
    return events / elapsed, size / events


def floor_rate(directory: Path, fsync: str, batch: EventBatch, seconds: float) -> float:
    """Events/s of writing the same record bytes with os.write (+ fdatasync per write, or once at the end)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    record = bytes(24) + encode_payload(batch)
    fd = os.open(directory / "floor.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        writes, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds or writes < 3:
            os.write(fd, record)
            if fsync == "every-batch":
                os.fdatasync(fd)
            writes += 1
        os.fdatasync(fd)
        return writes * len(batch) / (time.perf_counter() - started)
    finally:
        os.close(fd)


def read_rate(directory: Path, max_records: int) -> float:
    """Events/s of reading the whole log from the start (CRC checks and decoding included)."""
    with EventLogReader(directory) as reader:
        started = time.perf_counter()
        events = sum(batch.num_rows for batch in reader.batches(max_records))
        return events / (time.perf_counter() - started)


def tail(directory: str, expected: int) -> None:
    """Reader process: tail the log, print each batch's lag (seconds since its append started) as JSON."""
    lags: list[float] = []
    seen = 0
    reader = EventLogReader(directory)
    stop = threading.Event()
    print("ready", flush=True)
    for batch in reader.batches(10_000, follow=True, poll_interval=POLL_INTERVAL, stop=stop):
        now = time.monotonic()
        lags.extend(now - np.unique(batch.columns["timestamp"]))
        seen += batch.num_rows
        if seen >= expected:
            break
    print(json.dumps(lags), flush=True)


def latency(directory: Path, fsync: str) -> tuple[list[float], list[float]]:
    """Lags append -> visible to a reader in another process, and append -> durable."""
    shutil.rmtree(directory, ignore_errors=True)
    log = EventLog.open(EventLogConfig(directory, fsync=fsync))
    reader = subprocess.Popen(
        [sys.executable, __file__, "--tail", str(directory), str(LATENCY_APPENDS * LATENCY_BATCH)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")},
    )
    assert reader.stdout is not None
    assert reader.stdout.readline().strip() == "ready"
    durable_lags: list[float] = []
    appended: list[tuple[float, int]] = []
    done = threading.Event()

    def watch_durability() -> None:
        index = 0
        while not (done.is_set() and index == len(appended)):
            if index == len(appended):
                time.sleep(0.0005)
                continue
            started, last = appended[index]
            log.wait_durable(last)
            durable_lags.append(time.monotonic() - started)
            index += 1

    watcher = threading.Thread(target=watch_durability)
    watcher.start()
    next_slot = time.monotonic()
    for i in range(LATENCY_APPENDS):
        next_slot += LATENCY_PERIOD
        started = time.monotonic()
        _, last = log.append(make_batch(LATENCY_BATCH, start=i * LATENCY_BATCH, stamp=started))
        appended.append((started, last))
        time.sleep(max(0.0, next_slot - time.monotonic()))
    done.set()
    watcher.join()
    output, _ = reader.communicate(timeout=60)
    log.close()
    return json.loads(output.splitlines()[-1]), durable_lags


def percentile_ms(values: list[float], q: float) -> str:
    return f"{np.percentile(np.asarray(values) * 1e3, q):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=0.8, help="time per throughput case")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: the system temp dir)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--tail", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tail:
        tail(args.tail[0], int(args.tail[1]))
        return

    root = Path(tempfile.mkdtemp(prefix="freshrec-eventlog-bench-", dir=args.dir))
    lines = [
        "## Embedded event log (`bench/eventlog.py`)",
        "",
        machine_line("pyarrow"),
        f"Disk: {filesystem_of(root)}. Command: `python bench/eventlog.py --seconds {args.seconds}`. "
        f"Load average at start: {os.getloadavg()[0]:.1f} (tail latencies move with it).",
        "",
    ]
    try:
        cases = [(1, False), (100, False), (10_000, False), (10_000, True)]
        rows = []
        for fsync in POLICIES:
            for n, string_ids in cases:
                batch = make_batch(n, string_ids=string_ids)
                rate, per_event = append_rate(root / "log", fsync, batch, args.seconds)
                floor = floor_rate(root / "floor", fsync, batch, args.seconds / 2)
                read = read_rate(root / "log", 10_000)
                rows.append(
                    [
                        fsync,
                        f"{n:,}" + (" (string ids)" if string_ids else ""),
                        f"{rate:,.0f}",
                        f"{rate / n:,.0f}",
                        f"{per_event:,.1f}",
                        f"{floor:,.0f}",
                        f"{rate / floor:.2f}",
                        f"{read:,.0f}",
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)
        lines += [
            "Append throughput (one writer thread; read: a fresh reader over the log just written, "
            "max_records=10,000):",
            "",
            markdown_table(
                [
                    "fsync",
                    "events per append",
                    "events/s",
                    "appends/s",
                    "bytes/event on disk",
                    "floor: os.write events/s",
                    "ratio to floor",
                    "read events/s",
                ],
                rows,
            ),
            "",
        ]
        latency_rows = []
        for fsync in POLICIES:
            visible, durable = latency(root / "latency", fsync)
            latency_rows.append(
                [
                    fsync,
                    str(len(visible)),
                    percentile_ms(visible, 50),
                    percentile_ms(visible, 99),
                    f"{max(visible) * 1e3:.2f}",
                    percentile_ms(durable, 50),
                    percentile_ms(durable, 99),
                ]
            )
            print(" | ".join(latency_rows[-1]), flush=True)
        lines += [
            f"Latency from the start of `append` to the event being visible to a reader tailing in another "
            f"process ({LATENCY_BATCH} events per append, one every {LATENCY_PERIOD * 1e3:.0f} ms, reader "
            f"poll {POLL_INTERVAL * 1e3:.0f} ms, default fsync_interval_ms=50) and to `wait_durable` "
            "returning:",
            "",
            markdown_table(
                [
                    "fsync",
                    "appends",
                    "visible p50 ms",
                    "visible p99 ms",
                    "visible max ms",
                    "durable p50 ms",
                    "durable p99 ms",
                ],
                latency_rows,
            ),
        ]
        lines += ["", f"Load average at the end: {os.getloadavg()[0]:.1f}."]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    markdown = "\n".join(lines)
    print(markdown)
    if not args.no_write:
        write_section("eventlog", markdown)


if __name__ == "__main__":
    main()
