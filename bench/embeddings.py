"""Embedding engine figures: fbgemm's fused row-wise Adagrad vs plain PyTorch sparse optimizers, KeyIndex vs a
Python dict, and BPR-MF `learn` throughput on a synthetic stream. Prints markdown tables (nothing is written).

Usage: `python bench/embeddings.py [--threads 1] [--repeats 3] [--events 1000000] [--quick]`

Every comparison runs its peers in the same process, one after the other, and reports the ratio: absolute
times drift on a shared machine. Figures are medians over `--repeats` runs.

Threads: on a 2-core machine shared with other work, OpenMP's busy-waiting barriers make fbgemm's CPU
backward pathological with 2 threads (measured 77 ms instead of 1.3 ms for 2048 rows while another process
held one core). This script defaults to ``OMP_WAIT_POLICY=PASSIVE`` (set before torch is imported) and one
torch thread; both are printed.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the first import of torch

import argparse  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import machine_line, markdown_table, write_section  # noqa: E402
from freshrec.embeddings import DynamicEmbeddingTable, EmbeddingTableConfig  # noqa: E402
from freshrec.interactions import Interactions, Query  # noqa: E402
from freshrec.keyindex import KeyIndex  # noqa: E402
from freshrec.models.mf import BPRMatrixFactorization, MFConfig  # noqa: E402


def median_rate(run: Callable[[], float], repeats: int) -> float:
    """Median over `repeats` of `run()`, which returns a rate (items per second)."""
    return statistics.median(run() for _ in range(repeats))


def fmt(rate: float) -> str:
    return f"{rate / 1e6:.2f}M" if rate >= 1e6 else f"{rate / 1e3:.0f}k"


# ---------------------------------------------------------------------------------------------- optimizers
def optimizer_rates(rows: int, dim: int, batch: int, steps: int, repeats: int) -> list[list[str]]:
    """Rows/s of one training step (lookup, backward, update) on random rows of a `rows` x `dim` table."""
    rng = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, rows, (batch,), generator=rng) for _ in range(steps)]

    table = DynamicEmbeddingTable(EmbeddingTableConfig(dim=dim, capacity=rows - 1))

    def fbgemm_step() -> float:
        started = time.perf_counter()
        for index in batches:
            table.embed(index).pow(2).sum().backward()
        return steps * batch / (time.perf_counter() - started)

    def torch_step(optimizer_class: type[torch.optim.Optimizer]) -> Callable[[], float]:
        embedding = torch.nn.Embedding(rows, dim, sparse=True)
        optimizer = optimizer_class(embedding.parameters(), lr=0.05)

        def step() -> float:
            started = time.perf_counter()
            for index in batches:
                optimizer.zero_grad(set_to_none=True)
                embedding(index).pow(2).sum().backward()
                optimizer.step()
            return steps * batch / (time.perf_counter() - started)

        return step

    engines = {
        "fbgemm TBE, fused EXACT_ROWWISE_ADAGRAD (SUM, 1 id/bag)": fbgemm_step,
        "torch nn.Embedding(sparse) + Adagrad": torch_step(torch.optim.Adagrad),
        "torch nn.Embedding(sparse) + SparseAdam": torch_step(torch.optim.SparseAdam),
    }
    for step in engines.values():  # warm-up: first touches of the weight pages, allocator, kernels
        step()
    # Round-robin, so that drift on a shared machine hits every engine alike.
    runs: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(repeats):
        for name, step in engines.items():
            runs[name].append(step())
    fused = statistics.median(runs[next(iter(engines))])
    return [
        [name, fmt(statistics.median(r)), f"{statistics.median(r) / fused:.2f}"] for name, r in runs.items()
    ]


# ---------------------------------------------------------------------------------------------- key index
def keyindex_rates(n: int, repeats: int) -> list[list[str]]:
    rng = np.random.default_rng(0)
    keys = rng.integers(1, 2**63, size=n, dtype=np.int64).view(np.uint64)
    queries = keys[rng.integers(0, n, n)]
    key_list, query_list = keys.tolist(), queries.tolist()

    def timed(run: Callable[[], object], count: int) -> float:
        started = time.perf_counter()
        run()
        return count / (time.perf_counter() - started)

    def index_insert() -> float:
        return timed(lambda: KeyIndex(n).assign(keys, 1.0), n)

    full = KeyIndex(n)
    full.assign(keys, 1.0)
    lookup_index = median_rate(lambda: timed(lambda: full.lookup(queries), n), repeats)
    insert_index = median_rate(index_insert, repeats)

    def batched_assign() -> float:
        def run() -> None:
            for start in range(0, n, 1024):
                full.assign(queries[start : start + 1024], 2.0)

        return timed(run, n)

    assign_batched = median_rate(batched_assign, repeats)

    def dict_insert() -> float:
        return timed(lambda: {k: i for i, k in enumerate(key_list)}, n)

    table = {k: i for i, k in enumerate(key_list)}
    insert_dict = median_rate(dict_insert, repeats)
    lookup_dict = median_rate(lambda: timed(lambda: [table.get(k, -1) for k in query_list], n), repeats)

    def evicting() -> float:
        small = KeyIndex(n // 10)
        stream = (rng.zipf(1.2, size=n) % (4 * n) + 1).astype(np.uint64)

        def run() -> None:
            for start in range(0, n, 1024):
                small.assign(stream[start : start + 1024], float(start))

        return timed(run, n)

    evict = median_rate(evicting, repeats)
    return [
        [
            f"insert {n:,} new keys (one call)",
            fmt(insert_index),
            fmt(insert_dict),
            f"{insert_index / insert_dict:.1f}",
        ],
        [
            f"lookup {n:,} keys (one call)",
            fmt(lookup_index),
            fmt(lookup_dict),
            f"{lookup_index / lookup_dict:.1f}",
        ],
        [
            "assign existing keys, batches of 1024",
            fmt(assign_batched),
            fmt(lookup_dict),
            f"{assign_batched / lookup_dict:.1f}",
        ],
        [f"assign, LRU eviction at capacity {n // 10:,}, batches of 1024", fmt(evict), "-", "-"],
    ]


# ---------------------------------------------------------------------------------------------- MF learn
def synthetic_batches(events: int, users: int, items: int, batch: int, seed: int = 0) -> list[Interactions]:
    """Zipf-ish item popularity (exponent 0.8), uniform users, one negative per event drawn uniformly from
    the last 20,000 item occurrences; keys are random 64-bit values like encoded ids."""
    rng = np.random.default_rng(seed)
    user_keys = rng.integers(1, 2**63, users, dtype=np.int64).view(np.uint64)
    item_keys = rng.integers(1, 2**63, items, dtype=np.int64).view(np.uint64)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    user_column = user_keys[rng.integers(0, users, events)]
    item_column = item_keys[rng.choice(items, events, p=popularity / popularity.sum())]
    times = np.sort(rng.uniform(0, 30 * 86_400, events))
    out = []
    for start in range(0, events, batch):
        stop = min(events, start + batch)
        recent = item_column[max(0, start - 20_000) : start] if start else item_column[:stop]
        negatives = recent[rng.integers(0, len(recent), (stop - start, 1))]
        query = Query.without_history(user_column[start:stop], times[start:stop])
        out.append(
            Interactions(
                query,
                item_column[start:stop],
                np.full(stop - start, np.nan),
                np.zeros(stop - start, np.int8),
                negatives,
            )
        )
    return out


def mf_rate(batches: list[Interactions], events: int, dim: int) -> float:
    model = BPRMatrixFactorization(MFConfig(dim=dim))
    started = time.perf_counter()
    for interactions in batches:
        model.learn(interactions)
    return events / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--events", type=int, default=1_000_000, help="events of the MF stream")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test (never written)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    quick = args.quick
    lines: list[str] = [
        "## Embeddings: fbgemm table, optimizer step, KeyIndex",
        "",
        "`python bench/embeddings.py` — ",
    ]

    def emit(text: str) -> None:
        print(text)
        lines.append(text)

    lines[-1] += machine_line("fbgemm-gpu-cpu", "torchrec")
    print(lines[-1])
    emit(
        f"torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
        f"repeats {args.repeats} (median)\n"
    )

    # MF first, so that the process's peak RSS is the model's and its stream's, not the other sections'.
    events = 50_000 if quick else args.events
    batches = synthetic_batches(events, users=100_000, items=50_000, batch=1024)
    rates = [mf_rate(batches, events, dim=64) for _ in range(args.repeats)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    emit(
        f"### BPR-MF learn: {events:,} events, 100k users, 50k items (zipf 0.8), dim 64, batch 1024, "
        "1 negative from the last 20k items; key -> row assignment included\n"
    )
    header = ["model", "events/s (median)", "runs", "peak RSS (process)"]
    row = ["bpr-mf, 2 fbgemm tables of 1M rows", fmt(statistics.median(rates)), ", ".join(map(fmt, rates))]
    emit(markdown_table(header, [[*row, f"{peak:,.0f} MiB"]]))

    rows, steps = (100_000, 20) if quick else (1_000_000, 100)
    emit(f"\n### Sparse optimizer step: {rows:,} x 64 table, batches of 4,096 random rows, rows/s\n")
    rates_table = optimizer_rates(rows, 64, 4096, steps, args.repeats)
    emit(markdown_table(["engine", "rows/s", "ratio to fbgemm"], rates_table))

    n = 100_000 if quick else 1_000_000
    emit(f"\n### KeyIndex vs Python dict, {n:,} random uint64 keys, keys/s\n")
    emit(markdown_table(["operation", "KeyIndex", "dict", "ratio"], keyindex_rates(n, args.repeats)))
    emit("\n(dict figures exclude converting the numpy keys to Python ints, which KeyIndex never needs)")
    if not (quick or args.no_write):
        write_section("embeddings", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
