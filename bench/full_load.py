"""Serving while a whole version loads: `recommend` latency in a serving process while its store follower
applies deltas, and while it loads full snapshots (what a trainer restart, a rollback or changes a model
could not track make it do).

Usage: `python bench/full_load.py [--model cooccurrence] [--items 20000] [--seconds 10] [--full-collection]
[--no-write]`

This process holds a `ServingRuntime` over a real store and event log and asks `recommend` 500 times a
second from one thread, as the server's event loop does, each request's latency counted from when it was
due (open loop: a stall counts for every request it delays); a child process writes the store:
`--seconds` of deltas every 100 ms, then `--seconds` of a full snapshot every second (each one a full load
in the server: read, verify, build the model, swap under the lock). The model learned events on `--items`
items first, so that a version is the size such a catalogue makes. `--full-collection` puts back what a full
load did before: a full garbage collection of the whole process after the swap, with the GIL held.

Figures go to BENCHMARKS.md (section "full_load") unless `--no-write` or `--full-collection`.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import machine_line, markdown_table, write_section  # noqa: E402
from freshrec.models.registry import ModelSpec  # noqa: E402
from freshrec.preprocess.validate import EventValidator  # noqa: E402
from freshrec.publishing.store import ModelStore, StoreConfig  # noqa: E402
from freshrec.serving import served  # noqa: E402
from freshrec.serving.runtime import ServingConfig, ServingRuntime  # noqa: E402
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream  # noqa: E402
from freshrec.training.loop import TrainingLoop  # noqa: E402
from freshrec.training.online import OnlineTrainer, TrainerConfig  # noqa: E402

PHASES = ("deltas", "snapshots")
#: Seconds between requests (500 requests/s).
INTERVAL = 0.002


def write_store(directory: str, model: str, items: int, seconds: float, started, phase) -> None:
    """Child process: train on a catalogue of `items`, publish a snapshot, then deltas every 100 ms, then
    a snapshot every second; `phase` says which (0: before, 1: deltas, 2: snapshots, 3: done)."""
    spec = ModelSpec.of(model)
    trained = spec.build()
    loop = TrainingLoop(OnlineTrainer(trained, TrainerConfig(batch_size=1024, evaluate=False)))
    config = SyntheticConfig(n_events=items * 4, n_users=items, n_items=items, seed=1)
    validator = EventValidator()
    batches = [validator.validate(raw).events for raw in SyntheticStream(config).batches(1024)]
    for batch in batches:
        loop.feed_events(batch)
    metadata = {"model": spec.as_dict()}
    with ModelStore(StoreConfig(directory, fsync=False)) as store:
        store.publish_snapshot(trained.state_dict(), metadata)
        trained.drain_changes()
        started.wait()  # the server loaded the first version
        for code, pause in ((1, 0.1), (2, 1.0)):
            phase.value = code
            deadline = time.monotonic() + seconds
            n = 0
            while time.monotonic() < deadline:
                loop.feed_events(batches[n % len(batches)])
                n += 1
                changes = trained.drain_changes()
                if code == 1:
                    base = store.current_version()
                    store.publish_delta(changes.rows, changes.replaced, metadata, base=base)
                else:
                    store.publish_snapshot(trained.state_dict(), metadata)
                time.sleep(pause)
        time.sleep(1.0)  # the last version applied
    phase.value = 3


def old_freeze() -> None:
    """What a full load ended with before: a full collection of everything, then freeze."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cooccurrence")
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--full-collection", action="store_true", help="the full load's former collection")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.full_collection:
        served._freeze_long_lived_objects = old_freeze  # type: ignore[assignment]

    work = Path(tempfile.mkdtemp(prefix="freshrec-full-load-"))
    context = multiprocessing.get_context("spawn")
    started, phase = context.Event(), context.Value("i", 0)
    writer = context.Process(
        target=write_store, args=(str(work / "store"), args.model, args.items, args.seconds, started, phase)
    )
    writer.start()
    while ModelStore.open(work / "store").current_version() == 0:
        time.sleep(0.1)
    runtime = ServingRuntime(ServingConfig(user_capacity=args.items), work / "store", work / "log")
    runtime.start()
    stop = threading.Event()
    latencies: dict[int, list[float]] = {1: [], 2: []}
    versions: dict[int, set[int]] = {1: set(), 2: set()}

    def ask() -> None:
        # Open loop: request n is due at start + n * INTERVAL whatever happened to the ones before, and its
        # latency runs from then, so a stall (the GIL held by the follower) counts for every request it
        # delayed, not just the one in flight.
        start = time.perf_counter()
        n = 0
        while not stop.is_set():
            due = start + n * INTERVAL
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            current = phase.value
            answer = runtime.recommend(str(n % 1000), k=10)
            if current in latencies:
                latencies[current].append(time.perf_counter() - due)
                versions[current].add(answer.model_version)
            n += 1

    asker = threading.Thread(target=ask)
    started.set()
    asker.start()
    writer.join()
    stop.set()
    asker.join()
    runtime.close()

    rows = []
    for code, name in zip((1, 2), PHASES, strict=True):
        ms = np.array(latencies[code]) * 1000
        rows.append(
            [
                name,
                f"{len(versions[code]):,}",
                f"{len(ms):,}",
                f"{np.percentile(ms, 50):.2f}",
                f"{np.percentile(ms, 99):.2f}",
                f"{ms.max():.1f}",
            ]
        )
    collection = "a full collection of everything" if args.full_collection else "young generations only"
    text = "\n".join(
        [
            "## Serving while whole versions load",
            "",
            f"`python bench/full_load.py --model {args.model} --items {args.items} --seconds {args.seconds:g}"
            f"{' --full-collection' if args.full_collection else ''}` — {machine_line('safetensors')}",
            "",
            f"One serving process (`ServingRuntime`, model `{args.model}` trained on {args.items:,} items), "
            "`recommend` asked 500 times a second from one thread, latency from when each request was due "
            "(open loop); a child process publishes a delta every "
            f"100 ms for {args.seconds:g} s, then a full snapshot every second for {args.seconds:g} s (each "
            f"a full load: read, verify, build, swap under the lock); garbage collection after a load: "
            f"{collection}.",
            "",
            markdown_table(
                ["versions applied", "versions seen", "requests", "p50 ms", "p99 ms", "max ms"], rows
            ),
        ]
    )
    print(text)
    if not (args.no_write or args.full_collection):
        write_section("full_load", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
