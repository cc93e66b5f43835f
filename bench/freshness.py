"""Freshness: from an event's 202 answer to the first /recommend answer from a version that includes it.

Usage: `python bench/freshness.py [--rate 2000] [--seconds 30] [--publish-ms 100] [--no-write]`

Starts the real processes (`freshrec serve`, `freshrec train`) on 127.0.0.1, posts a synthetic stream to
`POST /events` at the given rate in chunks every 50 ms, and polls `/recommend` every 10 ms. A version
includes an event when the trainer had learned past the event's log offset when it published it (the
version's `events_trained` metadata, noted from the store's manifest while the version is kept, against the
offsets the 202 answer returns). Figures go to
BENCHMARKS.md (section "freshness").
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import machine_line, markdown_table, write_section  # noqa: E402
from freshrec.live import LiveLoop, LiveLoopConfig  # noqa: E402
from freshrec.preprocess.validate import EventValidator  # noqa: E402
from freshrec.publishing.store import ModelStore, StoreConfig  # noqa: E402
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000.0, help="events/s posted")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--publish-ms", type=int, default=100)
    parser.add_argument("--model", default="cooccurrence")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    chunk_every = 0.05
    chunk = int(args.rate * chunk_every)
    total = int(args.rate * args.seconds)
    stream = SyntheticStream(SyntheticConfig(n_events=total, n_users=5_000, n_items=5_000, seed=5))
    validator = EventValidator()
    records = []
    for raw in stream.batches(10_000):
        records.extend(event.__dict__ for event in validator.validate(raw).events.to_events())
    bodies = [json.dumps(records[i : i + chunk]).encode() for i in range(0, len(records), chunk)]

    work = Path(tempfile.mkdtemp(prefix="freshrec-freshness-"))
    config = LiveLoopConfig(work, model=args.model, publish_ms=args.publish_ms)
    with LiveLoop(config) as loop:
        loop.wait_until(lambda: loop.get("/readyz")["ready"], 60, "a model loaded")
        acks: list[tuple[float, int]] = []  # (time of the 202, last offset of the chunk)
        seen: list[tuple[float, int]] = []  # (time of a /recommend answer, its model version)
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                answer = loop.get("/recommend?user_id=probe&k=10")
                seen.append((time.monotonic(), answer["model_version"]))
                time.sleep(0.01)

        # Retention drops versions within seconds: note each version's events_trained while it is kept,
        # from the store's manifest (read here, not through the server, which it would load).
        versions: dict[int, int] = {}
        reader = ModelStore.open(work / "store")

        def note_versions() -> None:
            while not done.is_set():
                for info in reader.versions():
                    versions.setdefault(info.version, int(info.metadata.get("events_trained", 0)))
                time.sleep(0.1)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        noter = threading.Thread(target=note_versions, daemon=True)
        noter.start()
        started = time.monotonic()
        for n, body in enumerate(bodies):
            answer = loop.post_events(body)
            acks.append((time.monotonic(), answer["offsets"][1]))
            pause = started + (n + 1) * chunk_every - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        posting_seconds = time.monotonic() - started
        time.sleep(3.0)  # let the last events be published
        done.set()
        poller.join()
        noter.join()
        kept = len(loop.get("/versions")["versions"])

    seen_times = np.array([t for t, _ in seen])
    trained = np.array([versions.get(v, -1) for _, v in seen])
    delays, missing = [], 0
    for acked_at, last_offset in acks:
        ok = np.flatnonzero((seen_times >= acked_at) & (trained > last_offset))
        if len(ok):
            delays.append(seen_times[ok[0]] - acked_at)
        else:
            missing += 1
    delays_ms = np.array(delays) * 1000
    p50, p99 = (
        (np.percentile(delays_ms, 50), np.percentile(delays_ms, 99)) if len(delays_ms) else (np.nan, np.nan)
    )
    rows = [
        [
            f"{len(records) / posting_seconds:,.0f}",
            str(args.publish_ms),
            f"{len(acks):,}",
            f"{p50:,.0f}",
            f"{p99:,.0f}",
            f"{delays_ms.max() if len(delays_ms) else float('nan'):,.0f}",
            str(missing),
            f"{len(versions):,}",
            str(kept),
        ]
    ]
    markdown = "\n".join(
        [
            "## Freshness: event accepted -> first /recommend answer from a version that includes it",
            "",
            f"`python bench/freshness.py` — {machine_line('fastapi', 'uvicorn')}",
            "",
            f"Real `freshrec serve` and `freshrec train` processes on 127.0.0.1, model `{args.model}`; "
            "synthetic "
            f"events posted to `POST /events` in chunks of {chunk} every {chunk_every * 1000:.0f} ms for "
            f"{args.seconds:.0f} s; `/recommend` polled every 10 ms; the store compacts every "
            f"{StoreConfig('.').compaction_interval} versions in the trainer's background (servers follow "
            "deltas and never reload for it); the trainer's only snapshot is its first version. "
            "Target: p50 ≤ 300 ms, p99 ≤ 1 s.",
            "",
            markdown_table(
                [
                    "events/s posted",
                    "publish every ms",
                    "chunks",
                    "p50 ms",
                    "p99 ms",
                    "max ms",
                    "never included",
                    "versions published",
                    "versions kept",
                ],
                rows,
            ),
        ]
    )
    print(markdown)
    if not args.no_write:
        write_section("freshness", markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
