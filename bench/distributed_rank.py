"""One rank of a synchronous distributed run over a synthetic stream, for bench/distributed.py and
tests/training/test_distributed.py; launched by torchrun (which sets RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT).

Events are split into `--partitions` partitions by user (as a broker stream keys them) and rank r reads the
partitions p with p % world_size == r. `--plain` runs the reference instead: one process, unsharded tables,
the plain `OnlineTrainer`, fed the very global batches the ranks build (each rank's next micro-batch,
concatenated in rank order and put in time order). Each process writes ``rank-R.npz``: the rows it holds
by id, the dense weights, HR@10 / NDCG@10 and timings (of the training loop alone: the events are read
and encoded before the clock starts, so no source competes for the cores), and ``state-R.npz``: its
`state_dict`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from freshrec.embeddings import DynamicEmbeddingTable
from freshrec.embeddings.sharded import collectives
from freshrec.errors import ConfigError
from freshrec.hashing import mix64
from freshrec.interactions import EncodedBatch
from freshrec.models.registry import create_model
from freshrec.preprocess.pipeline import IngestPipeline
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream
from freshrec.training.distributed import DistributedTrainer
from freshrec.training.online import OnlineTrainer, TrainerConfig


def encoded_stream(events: int, seed: int) -> EncodedBatch:
    """The synthetic stream's events after the ingest pipeline, in time order."""
    pipeline = IngestPipeline()
    source = SyntheticStream(SyntheticConfig(n_events=events, seed=seed))
    return EncodedBatch.concat([pipeline.process(raw).events for raw in source.batches(4096)])


def partition_events(batch: EncodedBatch, partitions: int, world: int) -> list[EncodedBatch]:
    """Each rank's events: the partitions p (user hash mod `partitions`) with p % world == rank."""
    partition = mix64(batch.user_keys) % np.uint64(partitions)
    return [batch.take(np.flatnonzero(partition % np.uint64(world) == rank)) for rank in range(world)]


def tables_of(model: object) -> dict[str, DynamicEmbeddingTable]:
    found = {}
    for name in ("users", "items", "history_items"):
        table = getattr(model, name, None)
        if isinstance(table, DynamicEmbeddingTable) and all(t is not table for t in found.values()):
            found[name] = table
    return found


def held_rows(table: DynamicEmbeddingTable) -> tuple[np.ndarray, np.ndarray]:
    """(keys, weights) of the live rows this process stores."""
    slots = table.index.live_slots()
    rows = slots + 1
    if table.sharding is not None:
        rows = rows[table.sharding.owned(rows)]
        local = table.sharding.local(rows)
    else:
        local = rows
    return table.index.keys_of(rows - 1), table.local_weights(local).numpy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="bpr-mf")
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=256, help="events per rank per step")
    parser.add_argument("--world", type=int, default=2, help="ranks whose batches --plain rebuilds")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--plain", action="store_true")
    parser.add_argument("--no-evaluate", action="store_true")
    parser.add_argument("--config", default="{}", help="model config as JSON")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = create_model(args.model, json.loads(args.config))
    config = TrainerConfig(batch_size=args.batch, evaluate=not args.no_evaluate, torch_threads=1)
    events = encoded_stream(args.events, args.seed)
    result: dict[str, object] = {}
    if args.plain:
        rank = 0
        trainer = OnlineTrainer(model, config)
        parts = partition_events(events, args.partitions, args.world)
        steps = max(-(-len(p) // args.batch) for p in parts)
        started = time.perf_counter()
        for s in range(steps):
            window = slice(s * args.batch, (s + 1) * args.batch)
            pieces = [p.take(np.arange(len(p))[window]) for p in parts]
            trainer.step(EncodedBatch.concat(pieces).in_time_order())
    else:
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        try:
            trainer = DistributedTrainer(model, config)
        except ConfigError as error:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"rank-{rank}.error").write_text(str(error))
            dist.destroy_process_group()
            raise SystemExit(3) from None
        mine = partition_events(events, args.partitions, world)[rank]
        dist.barrier()
        collectives.seconds, collectives.bytes_sent, collectives.calls = 0.0, 0, 0
        started = time.perf_counter()
        trainer.process(mine)
        result["seconds"] = time.perf_counter() - started
        result["communication_seconds"] = collectives.seconds
        result["bytes_sent"] = collectives.bytes_sent
        result["collectives"] = collectives.calls
        dist.destroy_process_group()
    result.setdefault("seconds", time.perf_counter() - started)
    result["steps"] = trainer.totals.batches
    totals = trainer.totals
    result["learning_seconds"] = totals.learning_seconds
    result["events"] = totals.events
    summary = trainer.evaluator.summary()
    result["hr"], result["ndcg"] = summary.hr, summary.ndcg
    arrays: dict[str, np.ndarray] = {}
    for name, table in tables_of(model).items():
        keys, weights = held_rows(table)
        arrays[f"{name}.keys"], arrays[f"{name}.weights"] = keys, weights
        result[f"{name}.live_rows"] = len(table)
    for key, value in model.state_dict().items():
        if key.startswith("dense."):
            arrays[key] = value
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / f"rank-{rank}.npz", **arrays)
    np.savez(args.out / f"state-{rank}.npz", **model.state_dict())
    (args.out / f"rank-{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
