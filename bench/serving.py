"""Serving under training: `/recommend` latency at a fixed rate while the trainer publishes every second.

Usage: `python bench/serving.py [--items 100000] [--rates 300,150] [--seconds 60] [--events-per-second 300]
[--no-write]`

Starts the real processes (`freshrec serve`, `freshrec train --model bpr-mf --publish-ms 1000`) on 127.0.0.1,
posts a synthetic stream through `POST /events` until every one of `--items` items has been seen (so the
served model has `--items` item vectors: dimension 64, the registry's capacity of 100,000 items, answered
from the IVF index), waits until the server serves what the trainer learned, then for `--seconds`:

- an event feeder posts `--events-per-second` events (1% of them on never-seen items, which evict the least
  recently used ones) in chunks every 100 ms, so the trainer publishes a delta every second;
- an open-loop load generator sends `GET /recommend?user_id=...&k=10` at each of `--rates` requests/s in
  turn (one phase each; the lower rate shows the latency of an unsaturated server): request i is
  scheduled at ``start + i / rate`` whatever happened to earlier ones, and its latency runs from that
  scheduled time to the end of the answer, so a stall of the server (or of the generator) is counted for
  every request it delayed instead of being hidden by a closed loop that waits (coordinated omission).

The generator is plain asyncio over keep-alive HTTP/1.1 connections (a prebuilt GET, the answer read by its
Content-Length), in this process, while the feeder is one thread posting ten times a second. A compiled
open-loop tool (wrk2, vegeta) would cost less CPU, but none installs here from PyPI or Debian (Debian has
`wrk`, which is closed-loop); httpx, the async client in the environment, was tried first and cost ~10x more
CPU per request than this loop, enough to make the generator itself the bottleneck on 2 shared cores. Its own
scheduling lag (actual send - scheduled send) is reported apart, so what the generator added on the shared
cores can be told from what the server took.

Figures go to BENCHMARKS.md (section "serving") unless `--no-write`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import machine_line, markdown_table, write_section  # noqa: E402

#: Events per `POST /events` during the warm-up (the server's body limit is 1 MiB, ~90 bytes an event).
WARMUP_CHUNK = 5_000
FEED_EVERY = 0.1


def call(url: str, body: bytes | None = None, timeout: float = 30.0) -> dict:
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SyntheticEvents:
    """Events on integer ids: a warm-up that shows every item once (shuffled) plus popular repeats, then a
    steady flow drawn by a Zipf-like law over the same items, with a share of never-seen items."""

    def __init__(self, n_items: int, n_users: int, seed: int = 11) -> None:
        self.n_items, self.n_users = n_items, n_users
        self.rng = np.random.default_rng(seed)
        self.next_event = 0
        self.next_new_item = n_items
        weights = 1.0 / np.arange(1, n_items + 1) ** 0.8
        self.popularity = weights / weights.sum()

    def records(self, items: np.ndarray) -> list[dict]:
        n = len(items)
        users = self.rng.integers(0, self.n_users, n)
        now = time.time()
        first = self.next_event
        self.next_event += n
        return [
            {"event_id": f"s{first + i}", "timestamp": now, "user_id": int(u), "item_id": int(v)}
            for i, (u, v) in enumerate(zip(users.tolist(), items.tolist(), strict=True))
        ]

    def warm_up(self, repeats: int) -> list[dict]:
        every_item = self.rng.permutation(self.n_items)
        popular = self.rng.choice(self.n_items, size=repeats, p=self.popularity)
        return self.records(np.concatenate([every_item, popular]))

    def steady(self, n: int, new_share: float) -> list[dict]:
        items = self.rng.choice(self.n_items, size=n, p=self.popularity)
        new = self.rng.random(n) < new_share
        items[new] = np.arange(self.next_new_item, self.next_new_item + int(new.sum()))
        self.next_new_item += int(new.sum())
        return self.records(items)


@dataclass
class LoadResult:
    scheduled: int
    latencies_ms: list[float] = field(default_factory=list)  # from the scheduled send to the answer
    send_lag_ms: list[float] = field(default_factory=list)  # generator's own lag: actual - scheduled send
    # The generator's event loop lateness, sampled every 2 ms: a late loop also reads answers late, which
    # the latency then counts against the server (the send lag alone does not show that side).
    loop_lag_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    versions: set[int] = field(default_factory=set)
    short_answers: int = 0
    seconds: float = 0.0


class Connections:
    """Keep-alive HTTP/1.1 connections to one host for GET requests: a free one is reused, a new one is
    opened when all are busy (an open loop never waits for a connection to come back)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.free: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, path: str) -> tuple[int, bytes]:
        """(status, body) of ``GET path``; raises on a broken connection or a malformed answer.

        A kept-alive connection the server closed while it sat idle (uvicorn closes them after 5 s) fails
        before any byte of an answer: the request is then sent again once on a new connection, as HTTP
        clients do for idempotent requests. A fresh connection that fails is an error of the run."""
        request = f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()
        head = b""
        if self.free:
            reader, writer = self.free.pop()
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError) as error:
                if getattr(error, "partial", b""):
                    raise
                writer.close()
        if not head:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await reader.readexactly(length)
        self.free.append((reader, writer))
        return status, body

    def close(self) -> None:
        for _, writer in self.free:
            writer.close()


async def open_loop(base: str, rate: float, seconds: float, users: np.ndarray, k: int) -> LoadResult:
    """Send GET /recommend at fixed scheduled times; every request runs as its own task, on a free
    keep-alive connection or a new one, so nothing but the server (and this process's own lag, reported)
    delays a request."""
    total = int(rate * seconds)
    result = LoadResult(scheduled=total)
    host, port = base.removeprefix("http://").split(":")
    connections = Connections(host, int(port))
    paths = [f"/recommend?user_id={user}&k={k}" for user in users[:total].tolist()]
    # Open some connections first, so the first scheduled requests do not pay the handshakes.
    warm = await asyncio.gather(*(asyncio.open_connection(host, int(port)) for _ in range(32)))
    connections.free.extend(warm)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2

    async def one(i: int) -> None:
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        result.send_lag_ms.append((loop.time() - due) * 1000)
        try:
            status, body = await asyncio.wait_for(connections.get(paths[i]), timeout=5.0)
            latency = (loop.time() - due) * 1000
            if status != 200:
                result.errors.append(f"HTTP {status}: {body[:200]!r}")
                return
            answer = json.loads(body)
            result.versions.add(int(answer["model_version"]))
            result.short_answers += len(answer["items"]) < k
            result.latencies_ms.append(latency)
        except Exception as error:  # noqa: BLE001 - every failure is an error of the run
            result.errors.append(f"{type(error).__name__}: {error}")

    async def watch_loop() -> None:
        while True:
            due = loop.time() + 0.002
            await asyncio.sleep(0.002)
            result.loop_lag_ms.append(max(0.0, loop.time() - due) * 1000)

    watcher = asyncio.create_task(watch_loop())
    tasks = []
    for i in range(total):  # create each task shortly before it is due: a bounded set of sleepers
        ahead = start + i / rate - loop.time() - 0.05
        if ahead > 0:
            await asyncio.sleep(ahead)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    watcher.cancel()
    result.seconds = loop.time() - start
    connections.close()
    return result


def feed(
    base: str,
    events: SyntheticEvents,
    per_second: float,
    stop: threading.Event,
    posted: list[int],
    failed: list[int],
) -> None:
    """Post `per_second` events in chunks every FEED_EVERY seconds until `stop`; count posts that failed."""
    chunk = max(1, int(per_second * FEED_EVERY))
    started = time.monotonic()
    n = 0
    while not stop.is_set():
        body = json.dumps(events.steady(chunk, new_share=0.01)).encode()
        try:
            call(base + "/events", body)
            posted[0] += chunk
        except OSError:  # a slow ingest answer must not end the run's event flow; counted
            failed[0] += 1
        n += 1
        pause = started + n * FEED_EVERY - time.monotonic()
        if pause > 0:
            stop.wait(pause)


def wait_until_served(base: str, events_trained: int, timeout: float) -> dict:
    """Wait until the trainer published a version that learned `events_trained` events and the server
    serves it; returns that version's entry."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = call(base + "/versions")
        entries = {v["version"]: v for v in answer["versions"]}
        current = entries.get(answer["current"])
        trained = current["metadata"].get("events_trained", 0) if current else 0
        if trained >= events_trained and answer["serving"] == answer["current"]:
            return current
        time.sleep(0.5)
    raise TimeoutError(f"the server did not serve a version with {events_trained} events within {timeout} s")


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {name: float("nan") for name in ("p50", "p90", "p99", "p999", "max")}
    array = np.array(values)
    p50, p90, p99, p999 = np.percentile(array, [50, 90, 99, 99.9])
    return {"p50": p50, "p90": p90, "p99": p99, "p999": p999, "max": array.max()}


@dataclass
class Phase:
    """One measured rate: the load result and what happened around it."""

    rate: float
    result: LoadResult
    versions_applied: int
    events_posted: int
    posts_failed: int
    load_before: float
    load_after: float


def measure(base: str, events: SyntheticEvents, rate: float, args: argparse.Namespace, seed: int) -> Phase:
    """One phase: the event feeder and the open-loop generator at `rate` for `args.seconds`."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, args.users, int(rate * args.seconds) + 1).astype(object)
    unknown = rng.random(len(users)) < 0.05  # some users the server never saw: the cold-start answer
    users[unknown] = [f"newcomer-{i}" for i in np.flatnonzero(unknown)]
    stop, posted, failed = threading.Event(), [0], [0]
    feeder = threading.Thread(target=feed, args=(base, events, args.events_per_second, stop, posted, failed))
    version_before = call(base + "/versions")["serving"]
    load_before = os.getloadavg()[0]
    feeder.start()
    try:
        result = asyncio.run(open_loop(base, rate, args.seconds, users, args.k))
    finally:
        stop.set()
        feeder.join()
    load_after = os.getloadavg()[0]
    applied = call(base + "/versions")["serving"] - version_before
    return Phase(rate, result, applied, posted[0], failed[0], load_before, load_after)


def served_recall(store_dir: Path, n_users: int, k: int, seed: int = 3) -> dict[str, float]:
    """Recall@k of the server's kind of item index (default `RetrievalConfig`) against exact search, on the
    item and user vectors of the store's current version (read after the measured phases), for up to
    `n_users` users the model knows. Also counts the distinct items among all exact top-k lists: how much
    the answers differ from user to user (a popularity-dominated model makes recall easy)."""
    from freshrec.interactions import Query
    from freshrec.models.registry import ModelSpec
    from freshrec.publishing.store import ModelStore
    from freshrec.serving.retrieval import ItemIndex, RetrievalConfig

    store = ModelStore.open(store_dir)
    try:
        state, loaded = store.load()
    finally:
        store.close()
    model = ModelSpec.from_metadata(loaded.metadata).build()
    model.load_state_dict(state)
    keys = model.vector_items()
    vectors = model.item_vectors(keys)
    index = ItemIndex(vectors.shape[1], RetrievalConfig())
    index.upsert(keys, vectors)
    known = model.users.index.keys_of(model.users.index.live_slots())
    users = np.random.default_rng(seed).choice(known, size=min(n_users, len(known)), replace=False)
    queries = model.user_vectors(Query.without_history(users, np.zeros(len(users))))
    exact = keys[np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]]
    found, _ = index.search(queries, k)
    hits = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact, strict=True)]
    return {
        "recall": float(np.sum(hits) / (k * len(users))),
        "users": float(len(users)),
        "items": float(len(keys)),
        "distinct_exact_items": float(len(np.unique(exact))),
        "ann": float(index.uses_ann),
    }


def recall_line(recall: dict[str, float], k: int) -> str:
    return (
        f"- ANN recall@{k} of the server's index (IVF, default settings) against exact search on the final "
        f"version's vectors ({recall['items']:,.0f} items, {recall['users']:,.0f} users the model knows): "
        f"{recall['recall']:.3f}. These synthetic users' exact top-{k} lists hold only "
        f"{recall['distinct_exact_items']:,.0f} distinct items (popularity dominates BPR-MF's scores here), "
        "which makes recall easy; `python bench/retrieval.py` measures the same index settings on clustered "
        'vectors (section "retrieval").'
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000, help="items in the catalogue before measuring")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument(
        "--rates", default="300,150", help="/recommend requests per second, one measured phase per rate"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each measured phase")
    parser.add_argument(
        "--events-per-second", type=float, default=300.0, help="events posted while measuring"
    )
    parser.add_argument("--publish-ms", type=int, default=1000)
    parser.add_argument(
        "--evaluate-fraction",
        type=float,
        default=0.25,
        help="share of events the trainer ranks for its metrics and gate (`freshrec train "
        "--evaluate-fraction`): each costs a pass over the 100,000 items, so ranking all 300/s would take "
        "most of a core",
    )
    parser.add_argument("--keep", action="store_true", help="keep the store, log and process logs")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="give the server core 0 and the trainer and this process (load generator, feeder) core 1; the "
        "trainer runs at nice +5 there, so that the load generator is never the one kept waiting",
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rates = [float(rate) for rate in args.rates.split(",")]

    events = SyntheticEvents(args.items, args.users)
    warmup = events.warm_up(repeats=args.items // 5)
    bodies = [json.dumps(warmup[i : i + WARMUP_CHUNK]).encode() for i in range(0, len(warmup), WARMUP_CHUNK)]

    work = Path(tempfile.mkdtemp(prefix="freshrec-serving-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    dirs = ["--store", str(work / "store"), "--log", str(work / "log")]
    cli = [sys.executable, "-m", "freshrec.cli"]
    train = [
        *cli,
        "train",
        *dirs,
        "--model",
        "bpr-mf",
        "--publish-ms",
        str(args.publish_ms),
        "--evaluate-fraction",
        str(args.evaluate_fraction),
    ]
    server_cpus, trainer_cpus = [], []
    if args.pin:
        # On the shared core the trainer must not stall the generator: a late generator reads answers late,
        # and the latency counts that against the server (measured: loop lag up to 278 ms without this).
        server_cpus, trainer_cpus = ["taskset", "-c", "0"], ["taskset", "-c", "1", "nice", "-n", "5"]
        os.sched_setaffinity(0, {1})
    with open(work / "processes.log", "w") as logs:
        children = [
            subprocess.Popen(
                [*server_cpus, *cli, "serve", *dirs, "--port", str(port)], stdout=logs, stderr=logs
            ),
            subprocess.Popen([*trainer_cpus, *train], stdout=logs, stderr=logs),
        ]
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    call(base + "/healthz")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            started = time.monotonic()
            for body in bodies:
                call(base + "/events", body)
            print(f"warm-up: {len(warmup):,} events posted in {time.monotonic() - started:.1f} s", flush=True)
            served = wait_until_served(base, len(warmup), timeout=900)
            warm_seconds = time.monotonic() - started
            print(f"warm-up: served version {served['version']} after {warm_seconds:.1f} s", flush=True)
            time.sleep(2.0)  # let the last rebuild of the index finish
            phases = []
            for n, rate in enumerate(rates):
                phases.append(measure(base, events, rate, args, seed=5 + n))
                print(f"measured {rate:g} requests/s", flush=True)
            catalogue = [
                line
                for line in urllib.request.urlopen(base + "/metrics").read().decode().splitlines()
                if line.startswith("freshrec_catalogue_items ")
            ]
            recall = served_recall(work / "store", 1000, args.k)  # a reader: the processes may still run
        finally:
            for child in children:
                child.send_signal(signal.SIGTERM)
            for child in children:
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:  # a trainer deep in a backlog stops between batches
                    child.kill()
                    child.wait()
            if args.keep:
                print(f"kept {work}", flush=True)
            else:
                shutil.rmtree(work, ignore_errors=True)

    rows, verdicts = [], []
    for phase in phases:
        result = phase.result
        latency = percentiles(result.latencies_ms)
        lag = percentiles(result.send_lag_ms)
        loop_lag = percentiles(result.loop_lag_ms)
        achieved = len(result.latencies_ms) / result.seconds if result.seconds else float("nan")
        met = latency["p99"] <= 20.0 and not result.errors
        rows.append(
            [
                f"{args.items:,}",
                f"{phase.rate:,.0f}",
                f"{achieved:,.1f}",
                f"{len(result.latencies_ms):,}",
                str(len(result.errors)),
                f"{latency['p50']:.2f}",
                f"{latency['p90']:.2f}",
                f"{latency['p99']:.2f}",
                f"{latency['p999']:.2f}",
                f"{latency['max']:.1f}",
                f"{lag['p99']:.2f}",
                f"{loop_lag['p99']:.1f} / {loop_lag['max']:.0f}",
                str(phase.versions_applied),
                f"{phase.events_posted:,} ({phase.posts_failed} failed)",
                f"{phase.load_before:.1f} / {phase.load_after:.1f}",
            ]
        )
        verdict = (
            f"- {phase.rate:g} requests/s: target {'met' if met else 'missed'}: p99 {latency['p99']:.2f} ms"
            f"{'' if met else ' against 20 ms'}, {len(result.errors)} errors; {result.short_answers} answers "
            f"had fewer than {args.k} items."
        )
        if result.errors:
            verdict += " First errors: " + "; ".join(sorted(set(result.errors))[:3])
        verdicts.append(verdict)
    catalogue_size = catalogue[0].split()[-1] if catalogue else "?"
    machine = machine_line("fastapi", "uvicorn", "uvloop", "httptools", "faiss-cpu")
    setup = (
        f"Real `freshrec serve` and `freshrec train --model bpr-mf --publish-ms {args.publish_ms}` processes "
        f"on 127.0.0.1 (dimension 64, registry capacity 100,000 items; the trainer ranks "
        f"{args.evaluate_fraction:.0%} of the events for its metrics and publish gate). Warm-up: "
        f"{len(warmup):,} events posted so that all {args.items:,} items were seen ({warm_seconds:.0f} s "
        "until served). Then one "
        f"phase of {args.seconds:g} s per rate: an open-loop generator (asyncio, keep-alive connections, in "
        f"the benchmark process) sends `GET /recommend?k={args.k}` to {args.users:,} known users "
        "(5% unknown: cold start), latency from each request's *scheduled* send time; meanwhile "
        f"{args.events_per_second:g} events/s are posted (1% on new items, which evict the least recently "
        f"used) and the trainer publishes deltas. Server catalogue at the end: {catalogue_size} items. "
        + (
            "Placement: the server pinned to core 0, the trainer (at nice +5, so that it never delays the "
            "load generator) and the benchmark process (load generator, feeder) to core 1 (`taskset`, "
            "`--pin`), as separate machines or a cpuset would place them."
            if args.pin
            else "Placement: every process may run on either core (no `--pin`)."
        )
    )
    caveat = (
        "The machine's 2 cores are shared by the server, the trainer, the load generator and other work "
        "(load average before / after each phase in the last column), so absolute figures move with the load."
    )
    header = [
        "items",
        "requests/s asked",
        "requests/s answered",
        "answers",
        "errors",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "generator lag p99 ms",
        "generator loop lag p99 / max ms",
        "versions applied",
        "events posted",
        "load avg",
    ]
    markdown = "\n".join(
        [
            "## Serving: /recommend latency while the trainer publishes every second",
            "",
            f"`python bench/serving.py --rates {args.rates} --seconds {args.seconds:g}"
            f"{' --pin' if args.pin else ''}` — {machine}",
            "",
            f"{setup} {caveat} Target: p99 ≤ 20 ms, 0 errors, at 300 requests/s.",
            "",
            markdown_table(header, rows),
            "",
            *verdicts,
            recall_line(recall, args.k),
        ]
    )
    print(markdown)
    if not args.no_write:
        write_section("serving", markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
