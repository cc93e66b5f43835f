"""Kill drill: events stream in over HTTP while the trainer is SIGKILLed at random moments and restarted;
every event must be learned exactly once.

Usage: `python bench/kill.py [--events 20000] [--kills 5] [--rate 1250] [--models popularity,two-tower]
[--no-write]`

Starts the real processes (`freshrec serve`, `freshrec train`) on 127.0.0.1 with checkpoints every
`--checkpoint-seconds`, posts a synthetic stream (unique event ids) to `POST /events` at `--rate`, and
SIGKILLs the trainer `--kills` times, each at a random moment up to 3 s after its first checkpoint,
starting it again at once.
Then it checks the served version: `events_trained` equals the log's events, every kept version's count
equals its log offset, and (popularity) each item's count equals the log's. For each model the same
stream also runs once without kills, and the figures of the two runs' served versions (prequential HR@10
and NDCG@10 over every event, carried through checkpoints) are compared. Figures go to BENCHMARKS.md
(section "kill"). tests/e2e/test_kill_exactly_once.py runs the same drill, smaller.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import machine_line, markdown_table, write_section  # noqa: E402
from freshrec.events import KindWeights  # noqa: E402
from freshrec.live import LiveLoop, LiveLoopConfig, records_of  # noqa: E402
from freshrec.models.registry import ModelSpec  # noqa: E402
from freshrec.preprocess.encode import encode_ids  # noqa: E402
from freshrec.publishing.store import ModelStore  # noqa: E402
from freshrec.sources.eventlog import EventLogReader  # noqa: E402
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream  # noqa: E402
from freshrec.training.checkpoint import CheckpointStore  # noqa: E402


def drill_stream(events: int, seed: int) -> SyntheticStream:
    return SyntheticStream(SyntheticConfig(n_events=events, n_users=400, n_items=300, seed=seed))


def stream_with_kills(
    loop: LiveLoop, stream: SyntheticStream, rate: float, kills: int, seed: int
) -> list[float]:
    """Post `stream` at about `rate` events/s from a thread while this thread SIGKILLs the trainer `kills`
    times, each at a random moment up to 3 s after its first checkpoint (a start-up takes seconds on a
    busy machine, and a trainer killed before it learns anything tests nothing), starting it again at
    once. Returns the kill times, in seconds since posting began."""
    failures: list[BaseException] = []

    def post() -> None:
        started, posted = time.monotonic(), 0
        try:
            for raw in stream.batches(250):
                answer = loop.post_events(records_of(raw))
                if answer["accepted"] != raw.num_rows:
                    raise AssertionError(f"{raw.num_rows} posted, {answer['accepted']} accepted: {answer}")
                posted += raw.num_rows
                time.sleep(max(0.0, started + posted / rate - time.monotonic()))
        except BaseException as error:  # reported by the calling thread
            failures.append(error)

    poster = threading.Thread(target=post)
    started = time.monotonic()
    poster.start()
    rng = np.random.default_rng(seed)
    moments = []
    checkpoints = CheckpointStore(loop.directory / "store" / "checkpoints")
    for kill in range(kills):
        written = newest_checkpoint(checkpoints)
        loop.wait_until(lambda n=kill: trainer_starts(loop) > n, 120, f"trainer start {kill + 1}")
        # While events stream in, each trainer killed has checkpointed at least once: the drill tests
        # restarts from checkpoints (tests/e2e/test_live_loop.py kills one that has not, which re-reads the
        # log instead). Once the stream has ended a caught-up trainer has nothing new to checkpoint.
        loop.wait_until(
            lambda w=written: newest_checkpoint(checkpoints) > w or not poster.is_alive(),
            120,
            f"checkpoint {kill + 1}",
        )
        time.sleep(rng.uniform(0.0, 3.0))
        loop.kill_trainer()  # SIGKILL: no checkpoint on the way out
        moments.append(time.monotonic() - started)
        loop.start_trainer()
    poster.join()
    if failures:
        raise failures[0]
    return moments


def newest_checkpoint(checkpoints: CheckpointStore) -> int:
    """The sequence number of the newest checkpoint file (0: none yet)."""
    paths = checkpoints.paths()
    return int(paths[-1].name.split("-")[1].split(".")[0]) if paths else 0


def trainer_starts(loop: LiveLoop) -> int:
    """Trainers that got as far as learning (each prints its start line first)."""
    return loop.output_tail(100_000).count("freshrec train ")


def log_item_counts(log_dir: Path) -> tuple[int, Counter]:
    """The log's end offset and each item's count as the trainer's popularity counts it: its events, each
    at the default weight of its kind (`KindWeights`; a view counts 1, a purchase 6), so an event learned
    twice or lost still shows."""
    end, counts = 0, Counter()
    weights = KindWeights().table()
    for raw in EventLogReader(log_dir, start_offset="earliest").batches(50_000):
        kinds = weights[np.asarray(raw.columns["kind"], dtype=np.intp)]
        for item, weight in zip(np.asarray(raw.columns["item_id"]).tolist(), kinds.tolist(), strict=True):
            counts[item] += weight
        end = raw.end_offset
    return end, counts


def settled_version(loop: LiveLoop, end: int, timeout: float = 300) -> dict[str, Any]:
    """The served version's `/versions` entry once it has learned the log up to `end`."""
    entry: dict[str, Any] = {}

    def caught_up() -> bool:
        versions = loop.get("/versions")
        by_number = {v["version"]: v for v in versions["versions"]}
        entry.clear()
        entry.update(by_number.get(versions["serving"], {}))
        return entry.get("metadata", {}).get("log_offset") == end

    loop.wait_until(caught_up, timeout, f"a served version that learned the log's {end:,} events")
    return entry


def inconsistent_versions(loop: LiveLoop) -> list[int]:
    """Kept versions whose `events_trained` differs from their log offset (every event is valid and its
    id unique, so a version that learned each event before its offset once has them equal)."""
    return [
        version["version"]
        for version in loop.get("/versions")["versions"]
        if "log_offset" in version["metadata"]
        and version["metadata"]["events_trained"] != version["metadata"]["log_offset"]
    ]


def miscounted_items(store_dir: Path, item_counts: Counter) -> int:
    """Items whose count in the served popularity model differs from the log's."""
    state, loaded = ModelStore.open(store_dir).load()
    served = ModelSpec.from_metadata(loaded.metadata).build()
    served.load_state_dict(state)
    items = sorted(item_counts)
    counted = served.counts(encode_ids(np.array(items)), float("inf"))  # type: ignore[attr-defined]
    expected = np.array([item_counts[item] for item in items], dtype=np.float64)
    return int(np.count_nonzero(counted != expected))


def train_args(model: str, checkpoint_seconds: float, small: bool) -> tuple[str, ...]:
    args: tuple[str, ...] = ("--set", f"checkpoints.interval_seconds={checkpoint_seconds}")
    if small and model == "two-tower":  # the test's model: counting, not quality
        args += ("--set", "model.dim=16", "--set", "model.items.capacity=2048")
        args += ("--set", "model.users.capacity=2048")
    return args


def run(
    model: str, events: int, kills: int, rate: float, checkpoint_seconds: float, seed: int, small: bool
) -> dict[str, Any]:
    """One drill (`kills` > 0) or its uninterrupted twin (0): the served version's figures."""
    directory = Path(tempfile.mkdtemp(prefix=f"freshrec-kill-{model}-"))
    config = LiveLoopConfig(
        directory, model=model, publish_ms=200, train_args=train_args(model, checkpoint_seconds, small)
    )
    with LiveLoop(config) as loop:
        started = time.monotonic()
        stream = drill_stream(events, seed)
        moments = stream_with_kills(loop, stream, rate, kills, seed)
        end, item_counts = log_item_counts(directory / "log")
        entry = settled_version(loop, end)
        seconds = time.monotonic() - started
        output = loop.output_tail(100_000)
        result = {
            "model": model,
            "kills": kills,
            "kill_moments": moments,
            "log_events": end,
            "events_trained": entry["metadata"]["events_trained"],
            "prequential": entry["metadata"].get("prequential", {}),
            "inconsistent_versions": inconsistent_versions(loop),
            "restored_from_checkpoint": output.count("resuming from checkpoint"),
            "seconds": seconds,
        }
        if model == "popularity":
            result["miscounted_items"] = miscounted_items(directory / "store", item_counts)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--rate", type=float, default=400.0, help="events/s posted")
    parser.add_argument("--checkpoint-seconds", type=float, default=1.0)
    parser.add_argument("--models", default="popularity,two-tower")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    rows = []
    for model in args.models.split(","):
        drill = run(model, args.events, args.kills, args.rate, args.checkpoint_seconds, args.seed, False)
        calm = run(model, args.events, 0, args.rate, args.checkpoint_seconds, args.seed, False)
        # A second calm run: how much two uninterrupted live runs differ (micro-batches follow arrivals).
        twin = run(model, args.events, 0, args.rate, args.checkpoint_seconds, args.seed, False)
        for result in (calm, twin, drill):
            print(result, flush=True)
            figures = result["prequential"]
            rows.append(
                [
                    f"`{model}`",
                    str(result["kills"]),
                    str(result["restored_from_checkpoint"]),
                    f"{result['log_events']:,}",
                    f"{result['events_trained']:,}",
                    str(len(result["inconsistent_versions"])),
                    str(result.get("miscounted_items", "")),
                    f"{figures.get('events', 0):,}",
                    f"{figures.get('hr', float('nan')):.4f}",
                    f"{figures.get('ndcg', float('nan')):.4f}",
                ]
            )
        calm_hr, twin_hr, drill_hr = (r["prequential"].get("hr", np.nan) for r in (calm, twin, drill))
        rows.append([f"`{model}` drill - calm", "", "", "", "", "", "", "", f"{drill_hr - calm_hr:+.4f}", ""])
        rows.append([f"`{model}` calm - calm", "", "", "", "", "", "", "", f"{twin_hr - calm_hr:+.4f}", ""])

    markdown = "\n".join(
        [
            "## Kill drill: the trainer SIGKILLed mid-stream learns every event exactly once",
            "",
            f"`python bench/kill.py` — {machine_line('fastapi', 'uvicorn')}",
            "",
            f"Real `freshrec serve` and `freshrec train` on 127.0.0.1; {args.events:,} synthetic "
            f"events (unique ids) posted at {args.rate:,.0f}/s; the trainer SIGKILLed {args.kills} times, "
            f"each 0-3 s after its first checkpoint, and restarted at once; checkpoints every "
            f"{args.checkpoint_seconds:g} s. Each model also runs the same stream twice without kills (the "
            "calm rows: their difference is what live micro-batching alone moves). HR@10 / NDCG@10: the "
            "served version's prequential figures over every event (test-then-train, carried through "
            "checkpoints; fewer events ranked than the log holds: a restart without a checkpoint started "
            "the figures afresh). Target: events trained = log events, 0 inconsistent versions, "
            "0 miscounted items, HR@10 within 0.002.",
            "",
            markdown_table(
                [
                    "model",
                    "kills",
                    "restored from checkpoint",
                    "log events",
                    "events trained",
                    "inconsistent versions",
                    "miscounted items",
                    "events ranked",
                    "HR@10",
                    "NDCG@10",
                ],
                rows,
            ),
        ]
    )
    print(markdown)
    if not args.no_write:
        write_section("kill", markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
