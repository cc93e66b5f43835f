"""Model store figures: publishing a full snapshot vs a row delta of an MF-sized state, their bytes, the
reader's costs (full load, load through a delta, and a serving process applying only the delta), and a
compaction (the whole state of a delta version written by the store from its files).

Usage: `python bench/store.py [--rows 100000] [--touched 5000] [--repeats 5] [--no-fsync] [--no-write]`

The state mirrors `BPRMatrixFactorization.state_dict()`: two tables (users, items) of `--rows` x 64 float32
weights, a row-wise Adagrad accumulator, the id index (slot keys, last seen, counts) and counters. A delta
touches `--touched` rows of each table. Snapshot and delta run one after the other in the same process and
directory, and the table gives their ratio: absolute times drift on a shared machine. Medians over
`--repeats` runs; files are fsynced as in production unless `--no-fsync`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import machine_line, markdown_table, write_section  # noqa: E402
from freshrec.publishing.store import ModelStore, StoreConfig, apply_delta  # noqa: E402

DIM = 64


def mf_like_state(rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    state: dict[str, np.ndarray] = {}
    for table in ("users", "items"):
        state[f"{table}.weights"] = rng.normal(0, 0.1, size=(rows + 1, DIM)).astype(np.float32)
        state[f"{table}.momentum"] = rng.random(rows + 1, dtype=np.float32)
        state[f"{table}.index.slot_keys"] = rng.integers(1, 2**63, size=rows, dtype=np.uint64)
        state[f"{table}.index.last_seen"] = rng.random(rows) * 1e9
        state[f"{table}.index.counts"] = rng.integers(1, 100, size=rows, dtype=np.int64)
        state[f"{table}.counters"] = np.array([rows, 0, 0], dtype=np.int64)
        state[f"{table}.clock"] = np.array([1e9, 1e9 + 60], dtype=np.float64)
    return state


def delta_of(
    state: dict[str, np.ndarray], touched: int, rng: np.random.Generator
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, np.ndarray]]:
    """Rows changed by training on `touched` ids per table (weights, accumulator, their index slots)."""
    rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    replaced: dict[str, np.ndarray] = {}
    for table in ("users", "items"):
        weights = state[f"{table}.weights"]
        picked = np.sort(rng.choice(np.arange(1, len(weights)), size=touched, replace=False))
        slots = picked - 1  # row r belongs to index slot r - 1 (row 0: the shared cold row)
        rows[f"{table}.weights"] = (picked, weights[picked] + np.float32(0.01))
        rows[f"{table}.momentum"] = (picked, state[f"{table}.momentum"][picked] + np.float32(0.1))
        rows[f"{table}.index.last_seen"] = (slots, state[f"{table}.index.last_seen"][slots] + 60.0)
        rows[f"{table}.index.counts"] = (slots, state[f"{table}.index.counts"][slots] + 1)
        replaced[f"{table}.counters"] = state[f"{table}.counters"] + 1
        replaced[f"{table}.clock"] = state[f"{table}.clock"] + 60.0
    return rows, replaced


def timed(action: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def ms(seconds: list[float]) -> str:
    return f"{statistics.median(seconds) * 1000:,.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows per table")
    parser.add_argument("--touched", type=int, default=5_000, help="rows changed per table in a delta")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-fsync", action="store_true", help="skip fsync (never written to BENCHMARKS.md)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    state = mf_like_state(args.rows, rng)
    times: dict[str, list[float]] = {
        k: [] for k in ("snapshot", "delta", "load_snapshot", "load_delta", "read_apply", "compact")
    }
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="freshrec-store-bench-") as folder:
        store = ModelStore(StoreConfig(folder, keep_versions=4, fsync=not args.no_fsync))
        reader = ModelStore.open(folder)
        for _ in range(args.repeats):
            rows, replaced = delta_of(state, args.touched, rng)
            seconds, snapshot = timed(lambda: store.publish_snapshot(state, {"model": "bpr-mf"}))
            times["snapshot"].append(seconds)
            seconds, delta = timed(lambda: store.publish_delta(rows, replaced, {}, base=snapshot))  # noqa: B023
            times["delta"].append(seconds)
            held, _ = reader.load(snapshot)
            times["load_snapshot"].append(timed(lambda: reader.load(snapshot))[0])  # noqa: B023
            times["load_delta"].append(timed(lambda: reader.load(delta))[0])  # noqa: B023
            # A server holding the snapshot reads and applies only the delta.
            times["read_apply"].append(timed(lambda: apply_delta(held, reader.read_delta(delta)))[0])  # noqa: B023
            # What the writer does in the background every compact_every versions, here in the foreground.
            times["compact"].append(timed(lambda: store.compact(delta))[0])  # noqa: B023
            info = {i.version: i for i in reader.versions()}
            assert info[delta].compacted is not None
            sizes = {"snapshot": info[snapshot].size, "delta": info[delta].size}
            sizes["compacted"] = info[delta].compacted.size
        store.close()

    tensor_bytes = sum(a.nbytes for a in state.values())
    lines = [
        "## Model store: snapshot vs delta",
        "",
        f"`python bench/store.py --rows {args.rows} --touched {args.touched} --repeats {args.repeats}` — "
        + machine_line("safetensors"),
        "",
        f"MF-like state: 2 tables of {args.rows:,} x {DIM} float32 + row-wise Adagrad accumulator + id index "
        f"({tensor_bytes / 2**20:,.1f} MiB of tensors); delta = {args.touched:,} touched rows per table "
        f"(weights, accumulator, index slots) + counters; fsync {'off' if args.no_fsync else 'on'}; "
        f"median of {args.repeats} runs, directory under {tempfile.gettempdir()}.",
        "",
    ]
    snap, delta_ms = statistics.median(times["snapshot"]), statistics.median(times["delta"])
    table = [
        ["publish snapshot", ms(times["snapshot"]), f"{sizes['snapshot']:,}", "1"],
        ["publish delta", ms(times["delta"]), f"{sizes['delta']:,}", f"{snap / delta_ms:.1f}x faster"],
        ["load snapshot (verify + parse)", ms(times["load_snapshot"]), f"{sizes['snapshot']:,}", ""],
        ["load snapshot + delta", ms(times["load_delta"]), f"{sizes['snapshot'] + sizes['delta']:,}", ""],
        ["server: read_delta + apply_delta", ms(times["read_apply"]), f"{sizes['delta']:,}", ""],
        [
            "compaction (writer's background thread): read snapshot + delta, write the full state",
            ms(times["compact"]),
            f"{sizes['snapshot'] + sizes['delta'] + sizes['compacted']:,}",
            "",
        ],
    ]
    lines.append(markdown_table(["operation", "ms (median)", "bytes read/written", "vs snapshot"], table))
    lines.append(
        f"\nDelta bytes are {sizes['delta'] / sizes['snapshot']:.1%} of the snapshot's "
        f"({args.touched / args.rows:.0%} of rows touched)."
    )
    text = "\n".join(lines)
    print(text)
    if not (args.no_write or args.no_fsync):
        write_section("store", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
