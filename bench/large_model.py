"""Large-model figures: a SASRec with a million item rows and a few million dense parameters, learned per
micro-batch on one CPU thread. Prints parameter counts, memory, the median cost of one `learn()` at
B = 256 and 1,024 and the events/s it implies, and the size of one batch's delta; writes the BENCHMARKS.md
section "large-model" (not with --no-write).

Usage: `python bench/large_model.py [--items 1000000] [--dim 128] [--ffn-dim 12288] [--repeats 9]
[--threads 1] [--no-write]`

The item rows are filled by direct admission (every id 1..items is given its row, as a stream that had
seen them would), then batches draw histories, positives and negatives from a Zipf law over those ids,
so the lookups and updates spread over the whole table as a real catalogue's would. The wide FFN of the
query position carries most of the dense parameters: its cost grows with parameters, not with the
sequence length (see `freshrec.models.sasrec`). The run takes about a minute.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench/embeddings.py; before torch is imported

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import machine_line, markdown_table, write_section  # noqa: E402
from freshrec.interactions import Interactions, Query  # noqa: E402
from freshrec.models.sasrec import SASRecConfig, SASRecModel  # noqa: E402


def make_batch(rng: np.random.Generator, size: int, items: int, history: int, now: float) -> Interactions:
    """A batch with full histories, Zipf-distributed item ids over the whole table, 4 negatives per event."""

    def draw(shape: tuple[int, ...]) -> np.ndarray:
        return ((rng.zipf(1.1, shape) - 1) % items + 1).astype(np.uint64)

    history_keys = draw((size, history))
    times = now - rng.uniform(1.0, 30 * 86_400.0, (size, history))
    query = Query(rng.integers(1, 10**9, size).astype(np.uint64), np.full(size, now), history_keys, times)
    return Interactions(query, draw((size,)), np.full(size, np.nan), np.zeros(size, np.int8), draw((size, 4)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ffn-dim", type=int, default=12_288)
    parser.add_argument("--history", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=9, help="timed learn() calls per batch size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = SASRecConfig(
        dim=args.dim,
        heads=args.heads,
        ffn_dim=args.ffn_dim,
        history_length=args.history,
        items=dataclasses.replace(SASRecConfig().items, capacity=args.items),
    )
    started = time.perf_counter()
    model = SASRecModel(config)
    now = 1.7e9
    for start in range(1, args.items + 1, 1 << 18):  # direct admission, in chunks
        keys = np.arange(start, min(start + (1 << 18), args.items + 1), dtype=np.uint64)
        model.items.rows_for_training(keys, now)
    fill_seconds = time.perf_counter() - started
    rng = np.random.default_rng(0)

    rows = []
    for size in (256, 1024):
        for _ in range(2):  # warm-up: allocator, Adam state
            model.learn(make_batch(rng, size, args.items, args.history, now))
        batches = [make_batch(rng, size, args.items, args.history, now + i) for i in range(args.repeats)]
        model.drain_changes()
        times = []
        for batch in batches:
            tick = time.perf_counter()
            model.learn(batch)
            times.append(time.perf_counter() - tick)
        median = statistics.median(times)
        model.learn(make_batch(rng, size, args.items, args.history, now + 99))
        model.drain_changes()
        model.learn(make_batch(rng, size, args.items, args.history, now + 100))
        delta = model.drain_changes()
        delta_bytes = sum(r.nbytes + v.nbytes for r, v in delta.rows.values())
        dense_bytes = sum(a.nbytes for a in delta.replaced.values())
        rows.append(
            [
                f"{size:,}",
                f"{median * 1e3:.1f}",
                f"{min(times) * 1e3:.1f} / {max(times) * 1e3:.1f}",
                f"{size / median:,.0f}",
                f"{delta.changed_rows:,} rows, {delta_bytes / 1e6:.2f} MB + dense {dense_bytes / 1e6:.1f} MB",
            ]
        )
        print(f"B={size}: median learn {median * 1e3:.1f} ms, {size / median:,.0f} events/s", flush=True)

    table_stats = model.items.stats()
    dense_bytes = model.dense_parameters * 4
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sizes = [
        ["item rows (live / capacity)", f"{table_stats.live_rows:,} / {table_stats.capacity:,}"],
        [
            "embedding parameters",
            f"{model.embedding_parameters:,} ({model.items.dim} per row: dim + bias + pad)",
        ],
        ["dense parameters", f"{model.dense_parameters:,}"],
        ["item table memory (weights, Adagrad, index)", f"{table_stats.memory_bytes / 1e6:,.0f} MB"],
        ["dense weights + Adam moments", f"{3 * dense_bytes / 1e6:,.1f} MB"],
        ["process peak RSS", f"{peak_rss / 1e6:,.0f} MB"],
        ["admission of all rows", f"{fill_seconds:.1f} s"],
    ]
    markdown = "\n".join(
        [
            "## Large model: SASRec with a million item rows",
            "",
            f"`python bench/large_model.py` — {machine_line('fbgemm-gpu-cpu')}; torch threads {args.threads}",
            "",
            f"SASRec dim {args.dim}, {config.layers} block, {args.heads} heads, FFN {args.ffn_dim}, history "
            f"{args.history}, sampled softmax over the batch's positives and 4 negatives per event; item ids "
            "Zipf(1.1) over the whole table. `learn()` is one full step: id lookups, forward, backward "
            "(fbgemm's fused row-wise Adagrad on the item rows) and Adam on the dense weights. Median of "
            f"{args.repeats} calls.",
            "",
            markdown_table(["quantity", "value"], sizes),
            "",
            markdown_table(
                ["B", "ms per learn() (median)", "min / max ms", "events/s", "delta of one batch"], rows
            ),
        ]
    )
    print()
    print(markdown)
    if not args.no_write:
        write_section("large-model", markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
