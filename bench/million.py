"""A replay of a million events, as a user's first replay of their own data: how long does it take?

Usage: `python bench/million.py [--model blend] [--events 1000000] [--users 6000] [--items 4000]
[--evaluate-fraction F] [--no-write]`

The stream is `freshrec.sources.synthetic.SyntheticStream` with a fixed catalogue (`--items`, no new items)
and a fixed audience (`--users`, no new users), replayed by `freshrec.training.replay` exactly as
`freshrec replay --source synthetic` would: the ingest pipeline, every event evaluated against every item
seen so far before it is learned (`--evaluate-fraction F` ranks only that share, as `freshrec replay --set
trainer.evaluate_fraction=F` does: what a user with a large file can choose). The wall time counts
everything from the first event read to the report; the section "million" of BENCHMARKS.md gets the
figures (a run with F < 1 its own section, "million-evaluate-F").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import machine_line, markdown_table, write_section  # noqa: E402
from freshrec.models.registry import BEST_MODEL, create_model  # noqa: E402
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream  # noqa: E402
from freshrec.training.online import OnlineTrainer, TrainerConfig  # noqa: E402
from freshrec.training.replay import replay  # noqa: E402

#: The issue's bar: a million events replayed end to end in under 25 minutes.
TARGET_SECONDS = 25 * 60


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=BEST_MODEL)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=6_000)
    parser.add_argument("--items", type=int, default=4_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--evaluate-fraction", type=float, default=1.0, help="share of the events ranked (default: all)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    stream = SyntheticStream(
        SyntheticConfig(
            n_events=args.events,
            n_users=args.users,
            n_items=args.items,
            new_user_fraction=0.0,
            new_item_rate=0.0,
        )
    )
    config = TrainerConfig(batch_size=args.batch_size, k=10, evaluate_fraction=args.evaluate_fraction)
    trainer = OnlineTrainer(create_model(args.model), config)
    last_print = [time.perf_counter()]

    def progress(p) -> None:
        if time.perf_counter() - last_print[0] >= 30:
            last_print[0] = time.perf_counter()
            speed = f"{p.events_per_second:,.0f} events/s"
            print(f"  {p.events_read:,} events, {speed}, HR@10 {p.running.hr:.4f}", flush=True)

    started, cpu_started = time.perf_counter(), time.process_time()
    report = replay(stream, trainer, on_progress=progress)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    verdict = "met" if seconds < TARGET_SECONDS and args.events >= 1_000_000 else "not met"
    rows = [
        [
            f"`{args.model}`",
            f"{report.events_accepted:,}",
            f"{seconds / 60:.1f} min",
            f"{cpu_seconds / 60:.1f} min",
            f"{report.events_per_second:,.0f}",
            f"{report.learning_events_per_second:,.0f}",
            f"{report.overall.hr:.4f}",
            f"{report.overall.ndcg:.4f}",
        ]
    ]
    sampled = args.evaluate_fraction < 1.0
    option = f" --evaluate-fraction {args.evaluate_fraction:g}" if sampled else ""
    evaluated = (
        f"a random {args.evaluate_fraction:.0%} of the events evaluated (HR@10 and NDCG@10 are theirs)"
        if sampled
        else "every event evaluated"
    )
    body = (
        "## A million events: the first replay of one's own data"
        + (f", {args.evaluate_fraction:.0%} of the events ranked" if sampled else "")
        + "\n\n"
        f"`python bench/million.py --model {args.model} --events {args.events}{option}` — "
        f"{machine_line()}\n\n"
        f"`SyntheticStream`, {args.users:,} users and {args.items:,} items (fixed), {evaluated} "
        f"against every item seen so far, micro-batches of {args.batch_size}; wall time from the first "
        "event read to the report; CPU time is this process's (above the wall time where torch used a "
        "second thread, below it where other work on the machine took the cores).\n\n"
        + markdown_table(
            ["model", "events", "wall time", "CPU time", "events/s", "learning events/s", "HR@10", "NDCG@10"],
            rows,
        )
        + f"\n\n- Under {TARGET_SECONDS // 60} minutes for 1,000,000 events: {verdict}.\n"
    )
    print(body)
    if not args.no_write:
        write_section(f"million-evaluate-{args.evaluate_fraction:g}" if sampled else "million", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
