"""Synchronous training over 2 ranks vs 1, side by side: does a second rank make learning faster here?

Usage: `python bench/distributed.py [--events 60000] [--models bpr-mf two-tower] [--repeats 2] [--no-write]`

For each model, one plain process learns global batches of 512 events and 2 ranks under torchrun (gloo)
learn the same global batches as 256 events each (`bench/distributed_rank.py`: the synthetic stream split
into 2 partitions by user, read and encoded before the clock starts, so no broker competes for the cores;
evaluation off: learning alone). Runs alternate (plain, ranks, plain, ranks, ...) and the best of each is
kept. Reported: learning events/s, the ratio, the share of a rank's step spent inside collectives (waiting
for the other rank included), the collectives and bytes a rank sends per step. The section "distributed"
of BENCHMARKS.md gets the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import machine_line, markdown_table, write_section  # noqa: E402
from freshrec.live import free_port  # noqa: E402

RANK = Path(__file__).with_name("distributed_rank.py")
#: The issue's bar: 2 ranks at least 1.5x one rank's learning events/s.
TARGET_RATIO = 1.5


def run(out: Path, model: str, events: int, ranks: int | None) -> dict:
    common = ["--model", model, "--events", str(events), "--no-evaluate", "--out", str(out)]
    if ranks is None:
        command = [sys.executable, str(RANK), "--plain", "--batch", "256", *common]
    else:
        launcher = ["-m", "torch.distributed.run", "--nproc-per-node", str(ranks)]
        command = [sys.executable, *launcher, "--master-port", str(free_port()), str(RANK), *common]
    subprocess.run(command, check=True, capture_output=True, timeout=1800)
    return json.loads((out / "rank-0.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--models", nargs="+", default=["bpr-mf", "two-tower"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for model in args.models:
            plain, ranks = [], []
            for repeat in range(args.repeats):
                plain.append(run(Path(scratch) / f"{model}-plain-{repeat}", model, args.events, None))
                ranks.append(run(Path(scratch) / f"{model}-ranks-{repeat}", model, args.events, 2))
            one = min(plain, key=lambda r: r["seconds"])
            two = min(ranks, key=lambda r: r["seconds"])
            one_rate, two_rate = one["events"] / one["seconds"], two["events"] / two["seconds"]
            ratio = two_rate / one_rate
            share = two["communication_seconds"] / two["seconds"]
            steps = two["steps"]
            print(f"{model}: 1 rank {one_rate:,.0f} events/s, 2 ranks {two_rate:,.0f} ({ratio:.2f}x)")
            rows.append(
                [
                    f"`{model}`",
                    f"{one_rate:,.0f}",
                    f"{two_rate:,.0f}",
                    f"{ratio:.2f}x",
                    f"{1e3 * one['seconds'] / one['steps']:.1f}",
                    f"{1e3 * two['seconds'] / steps:.1f}",
                    f"{share:.0%}",
                    f"{two['collectives'] / steps:.0f}",
                    f"{two['bytes_sent'] / steps / 1024:,.0f}",
                ]
            )
            verdict = "met" if ratio >= TARGET_RATIO else f"not met ({ratio:.2f}x)"
            notes.append(f"- `{model}`: 2 ranks >= {TARGET_RATIO}x one rank: {verdict}.")
    header = [
        "model",
        "1 rank, B = 512: events/s",
        "2 ranks, 256 each: events/s",
        "2 ranks / 1",
        "ms per step, 1 rank",
        "ms per step, 2 ranks",
        "in collectives",
        "collectives per step",
        "KiB sent per rank per step",
    ]
    markdown = "\n".join(
        [
            "## Distributed training: 2 ranks vs 1 at the same global batch",
            "",
            f"`python bench/distributed.py --events {args.events}` — {machine_line()}",
            "",
            f"Synthetic stream, {args.events:,} events, split by user into 2 partitions and read before the "
            "clock starts; learning alone (no evaluation), one torch thread per process; best of "
            f"{args.repeats} alternating runs. Both ranks and the plain process share the machine's cores; "
            "'in collectives' is rank 0's time inside torch.distributed calls, waiting for the other rank "
            "included.",
            "",
            markdown_table(header, rows),
            "",
            *notes,
        ]
    )
    print(markdown)
    if not args.no_write:
        write_section("distributed", markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
