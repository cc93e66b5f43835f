"""TorchRec against freshrec's own DynamicEmbeddingTable, measured in one process: training throughput of the
embedding step (with and without the id -> row mapping), the fused and unfused TorchRec paths, the sharded
path (DistributedModelParallel on one gloo rank), and whether TorchRec's managed-collision modules give the
dynamic-table features freshrec needs (admission after N sightings, expiry by event time, re-initialised
reused rows, changed rows per step), each checked by running it.

Usage: `python bench/torchrec.py [--threads 1] [--repeats 5] [--steps 30] [--quick] [--no-write]`, after
`pip install -e ".[bench]"` and `pip install --no-deps torchrec==1.8.0` (TorchRec is not a dependency of
freshrec: docs/decisions.md, "Embedding rows in fbgemm").

Writes the section "torchrec" of BENCHMARKS.md unless `--no-write` or `--quick` (small sizes, a smoke test
of under a minute). Every TorchRec variant is built and run inside try/except: a variant that fails on this
machine is reported with the first line of its error instead of a figure.

Every comparison runs its peers in the same process, round-robin, and reports the median of `--repeats`
passes and its ratio to the freshrec engine of the same scope: absolute times drift on a shared machine.
Like bench/embeddings.py, this script sets ``OMP_WAIT_POLICY=PASSIVE`` before torch is imported and runs
one torch thread by default.

The file is named after the package it measures, so the script takes its own folder off ``sys.path``
before importing anything (``python bench/torchrec.py`` puts ``bench/`` first, where this file would
shadow the ``torchrec`` package).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must precede the first import of torch
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import inspect  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.report import machine_line, markdown_table, write_section  # noqa: E402
from freshrec.embeddings import DynamicEmbeddingTable, EmbeddingTableConfig  # noqa: E402

LR, EPS = 0.05, 1e-8
CPU = torch.device("cpu")


def fmt(rate: float) -> str:
    return f"{rate / 1e6:.2f}M" if rate >= 1e6 else f"{rate / 1e3:.0f}k"


def error_line(error: BaseException) -> str:
    """The exception's type and first line, fit for a markdown cell."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    line = f"{type(error).__name__}: {text}" if text else type(error).__name__
    if len(line) > 400:
        line = line[:397] + "..."
    return line.replace("|", "\\|")


# ---------------------------------------------------------------------------------------------- workload
@dataclass
class Workload:
    """Batches of random 62-bit ids drawn uniformly from a pool twice the table's capacity, so the tables
    keep admitting and evicting (LRU) in steady state; and the rows freshrec gives them, for the engines
    that start from precomputed rows."""

    rows: int  # table rows, row 0 / the last row being the shared row of ids without one
    dim: int
    batch: int
    keys: list[np.ndarray]  # uint64 per batch (freshrec)
    key_tensors: list[torch.Tensor]  # the same ids as int64 (TorchRec)
    row_tensors: list[torch.Tensor]  # int64 rows in [0, rows), from a freshrec table fed the same stream
    prepared: DynamicEmbeddingTable  # the table that produced row_tensors

    @property
    def capacity(self) -> int:
        return self.rows - 1

    @property
    def per_pass(self) -> int:
        return self.batch * len(self.keys)


def make_workload(rows: int, dim: int, batch: int, steps: int, seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    pool = np.unique(rng.integers(1, 2**62, size=2 * (rows - 1), dtype=np.int64))
    keys = [pool[rng.integers(0, len(pool), batch)] for _ in range(steps)]
    prepared = DynamicEmbeddingTable(EmbeddingTableConfig(dim=dim, capacity=rows - 1, learning_rate=LR))
    row_tensors = [
        torch.from_numpy(prepared.rows_for_training(k.view(np.uint64), float(i))) for i, k in enumerate(keys)
    ]
    return Workload(
        rows=rows,
        dim=dim,
        batch=batch,
        keys=[k.view(np.uint64) for k in keys],
        key_tensors=[torch.from_numpy(k.copy()) for k in keys],
        row_tensors=row_tensors,
        prepared=prepared,
    )


# ---------------------------------------------------------------------------------------------- engines
@dataclass
class Engine:
    """One variant: `build` returns a callable that runs one pass over the workload and returns rows/s."""

    scope: str
    name: str
    build: Callable[[], Callable[[], float]]
    run: Callable[[], float] | None = None
    rates: list[float] = field(default_factory=list)
    error: str = ""
    note: str = ""
    notes: dict[str, str] = field(default_factory=dict)  # filled in by the engine while it runs


def timed(count: int, body: Callable[[], None]) -> float:
    started = time.perf_counter()
    body()
    return count / (time.perf_counter() - started)


def freshrec_engines(w: Workload) -> list[Engine]:
    def full() -> Callable[[], float]:
        table = DynamicEmbeddingTable(EmbeddingTableConfig(dim=w.dim, capacity=w.capacity, learning_rate=LR))
        clock = [0.0]

        def body() -> None:
            for keys in w.keys:
                clock[0] += 1.0
                rows = table.rows_for_training(keys, clock[0])
                table.embed(rows).pow(2).sum().backward()

        return lambda: timed(w.per_pass, body)

    def step() -> Callable[[], float]:
        table = w.prepared

        def body() -> None:
            for rows in w.row_tensors:
                table.embed(rows).pow(2).sum().backward()

        return lambda: timed(w.per_pass, body)

    def step_drain(engine: Engine) -> Callable[[], Callable[[], float]]:
        def build() -> Callable[[], float]:
            table = DynamicEmbeddingTable(
                EmbeddingTableConfig(dim=w.dim, capacity=w.capacity, learning_rate=LR)
            )
            for i, keys in enumerate(w.keys):
                table.rows_for_training(keys, float(i))
            table.drain_changes()

            def body() -> None:
                for rows in w.row_tensors:
                    table.embed(rows).pow(2).sum().backward()
                changes = table.drain_changes()
                engine.notes["drained"] = f"{len(changes.rows['weights'][0]):,} rows drained per pass"

            return lambda: timed(w.per_pass, body)

        return build

    def mapping() -> Callable[[], float]:
        table = DynamicEmbeddingTable(EmbeddingTableConfig(dim=w.dim, capacity=w.capacity, learning_rate=LR))
        clock = [0.0]

        def body() -> None:
            for keys in w.keys:
                clock[0] += 1.0
                table.rows_for_training(keys, clock[0])

        return lambda: timed(w.per_pass, body)

    drain = Engine("changes", "freshrec: embed + backward, drain_changes() once per pass", lambda: None)
    drain.build = step_drain(drain)
    return [
        Engine("full", "freshrec DynamicEmbeddingTable: rows_for_training + embed + fused backward", full),
        Engine("step", "freshrec DynamicEmbeddingTable: embed + fused backward (rows precomputed)", step),
        drain,
        Engine("map", "freshrec rows_for_training (KeyIndex, LRU, admit_after=1)", mapping),
    ]


class TorchRecBench:
    """Builders of the TorchRec variants; imports TorchRec lazily so that an import error is a result."""

    def __init__(self, w: Workload) -> None:
        self.w = w
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchrec
            from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection
            from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingBagCollection
            from torchrec.modules.mc_modules import (
                LRU_EvictionPolicy,
                ManagedCollisionCollection,
                MCHManagedCollisionModule,
            )
            from torchrec.optim import RowWiseAdagrad
            from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

        self.tr = torchrec
        self.Fused = FusedEmbeddingBagCollection
        self.MCEBC = ManagedCollisionEmbeddingBagCollection
        self.MCC = ManagedCollisionCollection
        self.MCH = MCHManagedCollisionModule
        self.LRU = LRU_EvictionPolicy
        self.RowWiseAdagrad = RowWiseAdagrad
        self.aoib = apply_optimizer_in_backward
        ones = torch.ones(w.batch, dtype=torch.int64)
        kjt = torchrec.KeyedJaggedTensor
        self.row_kjts = [kjt(keys=["f"], values=r, lengths=ones) for r in w.row_tensors]
        self.key_kjts = [kjt(keys=["f"], values=k, lengths=ones) for k in w.key_tensors]
        self.gloo_error = ""
        self.gloo = False
        self._configs: dict[tuple[int, int], list] = {}

    # -------------------------------------------------------------- helpers
    def configs(self, rows: int | None = None, dim: int | None = None) -> list:
        """The table's config, one list object per size: ManagedCollisionEmbeddingBagCollection asserts
        that its embedding module and its collision collection hold *equal* configs, and two configs built
        apart are not (each carries its own `init_fn` partial, which compares by identity)."""
        key = (rows or self.w.rows, dim or self.w.dim)
        if key not in self._configs:
            self._configs[key] = [
                self.tr.EmbeddingBagConfig(
                    name="t", embedding_dim=key[1], num_embeddings=key[0], feature_names=["f"]
                )
            ]
        return self._configs[key]

    def fire(self, module: torch.nn.Module, params) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the torchrec wrapper is deprecated in favour of torch's
            self.aoib(self.RowWiseAdagrad, params, {"lr": LR, "eps": EPS})

    def mcc(self, interval: int, rows: int | None = None, threshold=None, dim: int | None = None):
        rows = rows or self.w.rows
        module = self.MCH(
            zch_size=rows,
            device=CPU,
            eviction_policy=self.LRU(threshold_filtering_func=threshold),
            eviction_interval=interval,
        )
        return self.MCC({"t": module}, embedding_configs=self.configs(rows, dim))

    def init_gloo(self) -> bool:
        """One gloo rank on a FileStore, for DistributedModelParallel; the error line if it fails."""
        if self.gloo or self.gloo_error:
            return self.gloo
        import torch.distributed as dist

        try:
            path = Path(tempfile.mkdtemp(prefix="freshrec-torchrec-")) / "store"
            os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
            dist.init_process_group("gloo", store=dist.FileStore(str(path), 1), rank=0, world_size=1)
            self.gloo = True
        except Exception as error:  # noqa: BLE001 - reported
            self.gloo_error = error_line(error)
        return self.gloo

    def close(self) -> None:
        if self.gloo:
            import torch.distributed as dist

            dist.destroy_process_group()

    def dmp(self, module: torch.nn.Module):
        from torchrec.distributed import DistributedModelParallel

        if not self.init_gloo():
            raise RuntimeError(f"gloo init failed: {self.gloo_error}")
        return DistributedModelParallel(module, device=CPU)

    @staticmethod
    def plan_note(dmp) -> str:
        parts = []
        for module_plan in dmp.plan.plan.values():
            for name, sharding in module_plan.items():
                parts.append(f"{name}: {sharding.sharding_type}, kernel {sharding.compute_kernel}")
        return "plan " + "; ".join(parts)

    def pooled_pass(self, module: Callable, kjts: list) -> Callable[[], float]:
        def body() -> None:
            for kjt in kjts:
                module(kjt).values().pow(2).sum().backward()

        return lambda: timed(self.w.per_pass, body)

    # -------------------------------------------------------------- engines
    def engines(self) -> list[Engine]:
        w = self.w
        out: list[Engine] = []

        def fused() -> Callable[[], float]:
            ebc = self.Fused(
                tables=self.configs(),
                optimizer_type=self.RowWiseAdagrad,
                optimizer_kwargs={"lr": LR, "eps": EPS},
            )
            return self.pooled_pass(ebc, self.row_kjts)

        def sharded(engine: Engine) -> Callable[[], Callable[[], float]]:
            def build() -> Callable[[], float]:
                ebc = self.tr.EmbeddingBagCollection(tables=self.configs(), device=torch.device("meta"))
                self.fire(ebc, ebc.parameters())
                model = self.dmp(ebc)
                engine.note = self.plan_note(model)
                return self.pooled_pass(model, self.row_kjts)

            return build

        def tracked(engine: Engine) -> Callable[[], Callable[[], float]]:
            def build() -> Callable[[], float]:
                from torch import nn
                from torchrec.distributed.model_tracker.types import DeltaTrackerConfig, TrackingMode

                class Holder(nn.Module):
                    """ModelDeltaTrackerTrec reads `model.module` (set when DDP wraps dense parts)."""

                    def __init__(self, module: nn.Module) -> None:
                        super().__init__()
                        self.module = module

                    def forward(self, kjt):
                        return self.module(kjt)

                # First on a bare DMP(EBC), as documented: record what happens.
                small = self.tr.EmbeddingBagCollection(
                    tables=self.configs(rows=16), device=torch.device("meta")
                )
                self.fire(small, small.parameters())
                try:
                    self.dmp(small).init_torchrec_delta_tracker(DeltaTrackerConfig())
                    engine.notes["bare"] = "tracker on bare DMP(EBC): ok"
                except Exception as error:  # noqa: BLE001 - reported
                    engine.notes["bare"] = (
                        f"tracker on bare DMP(EBC): {error_line(error)}; run with a wrapper"
                    )
                ebc = self.tr.EmbeddingBagCollection(tables=self.configs(), device=torch.device("meta"))
                self.fire(ebc, ebc.parameters())
                model = self.dmp(Holder(ebc))
                tracker = model.init_torchrec_delta_tracker(
                    DeltaTrackerConfig(tracking_mode=TrackingMode.ROWWISE_ADAGRAD)
                )
                tracker.get_unique()

                def body() -> None:
                    for kjt in self.row_kjts:
                        model(kjt).values().pow(2).sum().backward()
                    unique = tracker.get_unique()
                    ids = sum(len(rows.ids) for rows in unique.values())
                    engine.notes["ids"] = f"{ids:,} row ids (+ row-wise Adagrad state deltas) per pass"

                return lambda: timed(w.per_pass, body)

            return build

        def unsharded_aoib() -> Callable[[], float]:
            ebc = self.tr.EmbeddingBagCollection(tables=self.configs())
            self.fire(ebc, ebc.parameters())
            return self.pooled_pass(ebc, self.row_kjts)

        def unfused() -> Callable[[], float]:
            ebc = self.tr.EmbeddingBagCollection(tables=self.configs())
            optimizer = torch.optim.Adagrad(ebc.parameters(), lr=LR, eps=EPS)

            def body() -> None:
                for kjt in self.row_kjts:
                    optimizer.zero_grad(set_to_none=True)
                    ebc(kjt).values().pow(2).sum().backward()
                    optimizer.step()

            return lambda: timed(w.per_pass, body)

        def mc_ebc_unsharded() -> Callable[[], float]:
            ebc = self.tr.EmbeddingBagCollection(tables=self.configs())
            model = self.MCEBC(ebc, self.mcc(interval=1), return_remapped_features=False)
            self.fire(ebc, ebc.parameters())

            def body() -> None:
                for kjt in self.key_kjts:
                    model(kjt)[0].values().pow(2).sum().backward()

            return lambda: timed(w.per_pass, body)

        def mch_plus_fused() -> Callable[[], float]:
            mcc = self.mcc(interval=1)
            ebc = self.Fused(
                tables=self.configs(),
                optimizer_type=self.RowWiseAdagrad,
                optimizer_kwargs={"lr": LR, "eps": EPS},
            )

            def body() -> None:
                for kjt in self.key_kjts:
                    ebc(mcc(kjt)).values().pow(2).sum().backward()

            return lambda: timed(w.per_pass, body)

        def mc_ebc_sharded(engine: Engine) -> Callable[[], Callable[[], float]]:
            def build() -> Callable[[], float]:
                ebc = self.tr.EmbeddingBagCollection(tables=self.configs(), device=torch.device("meta"))
                model = self.MCEBC(ebc, self.mcc(interval=1), return_remapped_features=False)
                self.fire(ebc, ebc.parameters())
                sharded_model = self.dmp(model)
                engine.note = self.plan_note(sharded_model)

                def body() -> None:
                    for kjt in self.key_kjts:
                        sharded_model(kjt)[0].values().pow(2).sum().backward()

                return lambda: timed(w.per_pass, body)

            return build

        def mpzch() -> Callable[[], float]:
            from torchrec.modules.hash_mc_modules import HashZchManagedCollisionModule

            ebc = self.tr.EmbeddingBagCollection(tables=self.configs())
            module = HashZchManagedCollisionModule(zch_size=w.rows, device=CPU, total_num_buckets=1)
            model = self.MCEBC(ebc, self.MCC({"t": module}, embedding_configs=self.configs()))
            self.fire(ebc, ebc.parameters())

            def body() -> None:
                for kjt in self.key_kjts:
                    model(kjt)[0].values().pow(2).sum().backward()

            return lambda: timed(w.per_pass, body)

        def mch_map(interval: int, engine: Engine) -> Callable[[], Callable[[], float]]:
            def build() -> Callable[[], float]:
                mcc = self.mcc(interval=interval)
                miss_row = w.rows - 1

                def body() -> None:
                    misses = 0
                    for kjt in self.key_kjts:
                        misses += int((mcc(kjt).values() == miss_row).sum())
                    engine.notes["miss"] = f"{misses / w.per_pass:.1%} of ids on the shared miss row"

                return lambda: timed(w.per_pass, body)

            return build

        sharded_engine = Engine(
            "step", "TorchRec DMP(EBC), 1 gloo rank, RowWiseAdagrad in backward", lambda: None
        )
        sharded_engine.build = sharded(sharded_engine)
        tracked_engine = Engine(
            "changes",
            "TorchRec DMP(EBC) + ModelDeltaTracker (ROWWISE_ADAGRAD), get_unique() once per pass",
            lambda: None,
        )
        tracked_engine.build = tracked(tracked_engine)
        mc_sharded = Engine("full", "TorchRec DMP(ManagedCollisionEBC + MCH LRU), 1 gloo rank", lambda: None)
        mc_sharded.build = mc_ebc_sharded(mc_sharded)
        map1 = Engine("map", "TorchRec MCH LRU, eviction_interval=1 (profile + remap)", lambda: None)
        map1.build = mch_map(1, map1)
        map10 = Engine("map", "TorchRec MCH LRU, eviction_interval=10 (profile + remap)", lambda: None)
        map10.build = mch_map(10, map10)
        out += [
            Engine(
                "full",
                "TorchRec ManagedCollisionEBC (MCH LRU, interval 1) + EBC, "
                "RowWiseAdagrad in backward (unsharded)",
                mc_ebc_unsharded,
            ),
            Engine(
                "full",
                "TorchRec MCH LRU remap (interval 1) + FusedEmbeddingBagCollection (by hand)",
                mch_plus_fused,
            ),
            mc_sharded,
            Engine("full", "TorchRec HashZch (MPZCH) ManagedCollisionEBC + EBC (unsharded)", mpzch),
            Engine("step", "TorchRec FusedEmbeddingBagCollection, RowWiseAdagrad (fbgemm TBE)", fused),
            sharded_engine,
            Engine(
                "step",
                "TorchRec EmbeddingBagCollection + apply_optimizer_in_backward(RowWiseAdagrad), unsharded",
                unsharded_aoib,
            ),
            Engine("step", "TorchRec EmbeddingBagCollection + torch.optim.Adagrad (unfused)", unfused),
            tracked_engine,
            map1,
            map10,
        ]
        return out

    # -------------------------------------------------------------- feature checks
    def checks(self) -> list[list[str]]:
        rows: list[list[str]] = []
        for name, check in (
            ("admission after N sightings (N = 2, one sighting per batch)", self.check_admission),
            ("expiry (TTL) by event time", self.check_ttl),
            ("reused row re-initialised (unsharded MC-EBC)", self.check_reuse),
            ("changed rows per step", self.check_changes),
        ):
            try:
                freshrec, torchrec = check()
            except Exception as error:  # noqa: BLE001 - reported
                freshrec, torchrec = "-", f"check failed: {error_line(error)}"
            rows.append([name, freshrec, torchrec])
        return rows

    def small_kjt(self, values: list[int]):
        tensor = torch.tensor(values, dtype=torch.int64)
        return self.tr.KeyedJaggedTensor(
            keys=["f"], values=tensor, lengths=torch.ones(len(values), dtype=torch.int64)
        )

    def check_admission(self) -> tuple[str, str]:
        table = DynamicEmbeddingTable(
            EmbeddingTableConfig(dim=4, capacity=16, admit_after=2, sketch_width=1024)
        )
        key = np.array([7], dtype=np.uint64)
        first, second = (int(table.rows_for_training(key, float(t))[0]) for t in (0, 1))
        freshrec = f"admit_after=2: rows {first} then {second} (0 = cold row): admitted at the 2nd sighting"

        def at_least_two(counts: torch.Tensor) -> tuple[torch.Tensor, float]:
            return counts >= 2, 1.0

        mcc = self.mcc(interval=1, rows=16, threshold=at_least_two, dim=4)
        across = [int(mcc(self.small_kjt([7, 100 + t])).values()[0]) for t in range(3)]
        within = int(
            self.mcc(interval=1, rows=16, threshold=at_least_two, dim=4)(self.small_kjt([7, 7])).values()[0]
        )
        torchrec = (
            "MCH LRU with threshold_filtering_func(counts >= 2), eviction_interval=1: id seen once in each "
            "of "
            f"3 batches -> rows {across} (15 = shared miss row); seen twice in one batch -> row {within}. "
            "Counts cover one eviction window only (the history buffer is reset at each eviction)"
        )
        return freshrec, torchrec

    def check_ttl(self) -> tuple[str, str]:
        from torchrec.modules import hash_mc_evictions, mc_modules

        params = [p for p in inspect.signature(self.MCH.forward).parameters if p != "self"]
        metadata = sorted(
            {
                info.metadata_name
                for policy in (mc_modules.LRU_EvictionPolicy(), mc_modules.LFU_EvictionPolicy())
                for info in policy.metadata_info
            }
        )
        wall_clock = "time.time()" in inspect.getsource(hash_mc_evictions.HashZchSingleTtlScorer)
        freshrec = "ttl_seconds against the event timestamps passed to rows_for_training"
        torchrec = (
            f"MCH forward({', '.join(params)}) takes no timestamps; its eviction metadata is {metadata} "
            "(iteration counts); MPZCH's SINGLE_TTL scorer uses "
            + ("time.time() (wall clock, hours)" if wall_clock else "no time.time()")
            + ", not event time"
        )
        return freshrec, torchrec

    def check_reuse(self) -> tuple[str, str]:
        from torchrec.modules import mc_embedding_modules

        rows, dim = 8, 4
        ebc = self.tr.EmbeddingBagCollection(tables=self.configs(rows=rows, dim=dim))
        model = self.MCEBC(ebc, self.mcc(interval=1, rows=rows, dim=dim), return_remapped_features=True)
        self.fire(ebc, ebc.parameters())
        old_ids = list(range(1, rows))
        _, remapped = model(self.small_kjt(old_ids))
        model(self.small_kjt(old_ids))[0].values().pow(2).sum().backward()
        old_rows = set(remapped.values().tolist())
        weight = ebc.embedding_bags["t"].weight
        trained = weight.detach().clone()
        with torch.no_grad():
            _, remapped_new = model(self.small_kjt(list(range(101, 101 + rows - 1))))
        new_rows = [r for r in remapped_new.values().tolist() if r in old_rows]
        kept = sum(bool(torch.equal(weight[r], trained[r])) for r in new_rows)
        no_op = inspect.getsource(mc_embedding_modules.evict).rstrip().endswith("return")
        freshrec = "reused rows get fresh N(0, init_std) weights and zero Adagrad state (_reinit)"
        torchrec = (
            f"{len(new_rows)} evicted ids' rows went to new ids; {kept} kept the evicted ids' trained "
            "weights. "
            "torchrec.modules.mc_embedding_modules.evict is "
            + ("a no-op ('# TODO: write function')" if no_op else "implemented")
            + "; the sharded MC-EBC resets rows (reset_embedding_weight_momentum) but needs ROW_WISE sharding"
        )
        return freshrec, torchrec

    def check_changes(self) -> tuple[str, str]:
        freshrec = (
            "drain_changes(): every row trained, re-initialised, seen, evicted or expired, with its weights, "
            "Adagrad state and id -> row entries"
        )
        torchrec = (
            "ModelDeltaTracker (DMP-sharded EC/EBC only): row ids looked up since the last read, optionally "
            "embeddings (EC) or optimizer-state deltas; see the 'changes' table. No raw ids or freed rows "
            "(RawIdTracker is for MPZCH)"
        )
        return freshrec, torchrec


# ---------------------------------------------------------------------------------------------- run
def run_engines(engines: list[Engine], repeats: int) -> None:
    for engine in engines:  # build and warm up: first touches of the weight pages, allocator, kernels
        try:
            engine.run = engine.build()
            engine.run()
        except Exception as error:  # noqa: BLE001 - reported in the table
            engine.error = error_line(error)
            engine.run = None
    for _ in range(repeats):  # round-robin, so that drift on a shared machine hits every engine alike
        for engine in engines:
            if engine.run is None:
                continue
            try:
                engine.rates.append(engine.run())
            except Exception as error:  # noqa: BLE001 - reported in the table
                engine.error = error_line(error)
                engine.run = None


def scope_table(engines: list[Engine], scope: str) -> str:
    members = [e for e in engines if e.scope == scope]
    base = next((e for e in members if e.name.startswith("freshrec") and e.rates), None)
    base_rate = statistics.median(base.rates) if base else float("nan")
    rows = []
    for e in members:
        notes = "; ".join(filter(None, [e.note, *e.notes.values()]))
        if e.rates:
            rate = statistics.median(e.rates)
            rows.append(
                [e.name, fmt(rate), f"{rate / base_rate:.2f}", "ok" + (f"; {notes}" if notes else "")]
            )
        else:
            rows.append([e.name, "-", "-", f"fails: {e.error}" + (f"; {notes}" if notes else "")])
    return markdown_table(["engine", "rows/s (median)", "ratio to freshrec", "status"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30, help="batches per timed pass")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test (never written)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)  # TorchRec's planner and DMP log warnings about the topology
    torch.set_num_threads(args.threads)
    rows, batch, steps, repeats = (
        (20_000, 512, 10, 2) if args.quick else (100_000, 2048, args.steps, args.repeats)
    )
    dim = 64

    lines = ["## TorchRec vs freshrec's DynamicEmbeddingTable", "", "`python bench/torchrec.py` — "]

    def emit(text: str) -> None:
        print(text)
        lines.append(text)

    lines[-1] += machine_line("fbgemm-gpu-cpu", "torchrec")
    print(lines[-1])
    emit(
        f"torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
        f"repeats {repeats} (median), engines run round-robin in one process\n"
    )
    emit(
        f"Table {rows:,} rows x {dim}, batches of {batch:,} ids, {steps} batches per pass; ids are random "
        f"62-bit values drawn uniformly from a pool of {2 * (rows - 1):,} (twice the capacity, so LRU keeps "
        "evicting); "
        "loss sum(e^2); row-wise Adagrad lr 0.05 everywhere except the unfused row (per-element Adagrad). "
        "Ratios are to the freshrec engine of the same table.\n"
    )
    w = make_workload(rows, dim, batch, steps)
    engines = freshrec_engines(w)
    bench: TorchRecBench | None = None
    import_error = ""
    try:
        bench = TorchRecBench(w)
        engines += bench.engines()
    except Exception as error:  # noqa: BLE001 - reported
        import_error = error_line(error)
    started = time.perf_counter()
    run_engines(engines, repeats)
    elapsed = time.perf_counter() - started
    if import_error:
        emit(f"TorchRec could not be imported: {import_error}\n")

    titles = {
        "full": "### Ids to rows, lookup, backward and update (raw 64-bit ids in)",
        "step": "### Lookup, backward and update alone (rows precomputed by freshrec, same for every engine)",
        "changes": "### Step plus changed-row export once per pass",
        "map": "### Id -> row mapping alone",
    }
    for scope, title in titles.items():
        emit(f"\n{title}\n")
        emit(scope_table(engines, scope))

    if bench is not None:
        emit("\n### Dynamic-table features, checked by running them\n")
        emit(markdown_table(["feature", "freshrec", "TorchRec (this install)"], bench.checks()))
        if bench.gloo_error:
            emit(f"\ngloo init: {bench.gloo_error}")
        bench.close()
    emit(
        "\nFusedEmbeddingBagCollection and DMP's fused kernel both run fbgemm's "
        "SplitTableBatchedEmbeddingBags "
        "(EXACT_ROWWISE_ADAGRAD), the kernel DynamicEmbeddingTable calls directly. The unsharded "
        "EmbeddingBagCollection is torch.nn.EmbeddingBag with dense gradients, so its update touches the "
        "whole table every step."
    )
    print(f"\n(timed section {elapsed:.0f} s)")
    if not (args.quick or args.no_write):
        write_section("torchrec", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
