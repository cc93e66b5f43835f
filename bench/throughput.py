"""Online training throughput of the MF-class model on a synthetic stream, through the whole pipeline.

Usage: `python bench/throughput.py [--events N] [--users N] [--items N] [--dim D] [--runs R] [--no-write]`

The pipeline is the one `freshrec replay --no-evaluate` runs: generate, validate, dedupe, encode, sample
negatives, one fused row-wise Adagrad step per micro-batch. Top-K evaluation is excluded. In the same run, a
peer measures plain PyTorch (nn.Embedding(sparse=True) + torch.optim.Adagrad, ids already dense, no
validation, no dynamic table) on the same events, so the ratio holds on a noisy machine. Peak RSS is read
from the kernel. Figures go to BENCHMARKS.md (section "throughput").
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as freshrec/__init__.py; must precede importing torch

import argparse  # noqa: E402
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.report import machine_line, markdown_table, write_section  # noqa: E402
from freshrec.config import parse  # noqa: E402
from freshrec.models.mf import BPRMatrixFactorization, MFConfig  # noqa: E402
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream  # noqa: E402
from freshrec.training.online import OnlineTrainer, TrainerConfig  # noqa: E402
from freshrec.training.replay import replay  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain_pytorch_peer(
    users: np.ndarray,
    items: np.ndarray,
    n_users: int,
    n_items: int,
    dim: int,
    batch_size: int,
    negatives: int,
) -> float:
    """Events/s of BPR with nn.Embedding(sparse=True) + Adagrad on dense ids: the floor of what a
    hand-written PyTorch loop gets, without any of freshrec's id handling."""
    torch.manual_seed(0)
    user_table = torch.nn.Embedding(n_users, dim, sparse=True)
    item_table = torch.nn.Embedding(n_items, dim, sparse=True)
    for table in (user_table, item_table):
        torch.nn.init.normal_(table.weight, std=0.01)
    optimizer = torch.optim.Adagrad([user_table.weight, item_table.weight], lr=0.05)
    rng = np.random.default_rng(0)
    u_all, i_all = torch.from_numpy(users), torch.from_numpy(items)
    started = time.perf_counter()
    for start in range(0, len(users), batch_size):
        u, i = u_all[start : start + batch_size], i_all[start : start + batch_size]
        recent = i_all[max(0, start - 20_000) : start + batch_size]
        j = recent[torch.from_numpy(rng.integers(0, len(recent), size=(len(u), negatives)))]
        user_vec = user_table(u)
        diff = (user_vec[:, None, :] * (item_table(i)[:, None, :] - item_table(j))).sum(-1)
        loss = torch.nn.functional.softplus(-diff).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return len(users) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--negatives", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3, help="freshrec runs; the median is reported")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    stream_config = SyntheticConfig(n_events=args.events, n_users=args.users, n_items=args.items, seed=7)
    rates, learn_rates = [], []
    for run in range(args.runs):
        model = BPRMatrixFactorization(
            parse(
                MFConfig,
                {
                    "dim": args.dim,
                    "users": {"capacity": 2 * args.users},
                    "items": {"capacity": 2 * args.items},
                },
                "bench",
            )
        )
        trainer = OnlineTrainer(
            model, TrainerConfig(batch_size=args.batch_size, negatives=args.negatives, evaluate=False)
        )
        report = replay(SyntheticStream(stream_config), trainer, read_size=65_536)
        rates.append(report.events_per_second)
        learn_rates.append(report.learning_events_per_second)
        print(
            f"run {run + 1}: {report.events_per_second:,.0f} events/s end to end, "
            f"{report.learning_events_per_second:,.0f} events/s learning, read {report.events_read:,}",
            flush=True,
        )
    freshrec_rss = peak_rss_mib()

    # The peer sees the same events, as dense ids.
    users, items = [], []
    for raw in SyntheticStream(stream_config).batches(65_536):
        users.append(np.asarray(raw.columns["user_id"], dtype=np.int64))
        items.append(np.asarray(raw.columns["item_id"], dtype=np.int64))
    u, i = np.concatenate(users), np.concatenate(items)
    _, u = np.unique(u, return_inverse=True)
    _, i = np.unique(i, return_inverse=True)
    peer = plain_pytorch_peer(
        u, i, int(u.max()) + 1, int(i.max()) + 1, args.dim, args.batch_size, args.negatives
    )
    print(f"plain PyTorch peer: {peer:,.0f} events/s", flush=True)

    median = float(np.median(rates))
    rows = [
        [
            f"freshrec `bpr-mf`, whole pipeline (median of {args.runs})",
            f"{median:,.0f}",
            f"{float(np.median(learn_rates)):,.0f}",
            f"{median / peer:.2f}",
            f"{freshrec_rss:,.0f}",
        ],
        [
            "plain PyTorch sparse Adagrad, dense ids, learning only",
            f"{peer:,.0f}",
            f"{peer:,.0f}",
            "1.00",
            "",
        ],
    ]
    markdown = "\n".join(
        [
            "## Throughput: online MF training on a synthetic stream",
            "",
            f"`python bench/throughput.py` — {machine_line('fbgemm-gpu-cpu')}",
            "",
            f"{args.events:,} events, {args.users:,} users, {args.items:,} items, dimension {args.dim}, "
            f"B = {args.batch_size}, {args.negatives} negative(s) per event from the recent item "
            "distribution; "
            'no top-K evaluation. "Whole pipeline" counts generation, validation, dedupe, id encoding, '
            "dynamic "
            'table admission and the fused update; "learning" counts feature updates and the update only. '
            "Both sides run with 1 torch thread (the trainer's default, `TrainerConfig.torch_threads`). "
            "Target: ≥ 150,000 events/s.",
            "",
            markdown_table(
                ["system", "events/s", "events/s learning", "ratio to peer", "peak RSS MiB"], rows
            ),
        ]
    )
    print()
    print(markdown)
    if not args.no_write:
        write_section("throughput", markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
