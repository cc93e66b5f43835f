"""Rating prediction on MovieLens-100K: freshrec's `RatingModel` and the River / Vowpal Wabbit references of
../shared/PROTOCOL.md, measured in the same run.

Usage: `python bench/rating.py [--batch-size 256] [--skip-trainer] [--skip-references] [--no-write]`

Every system sees the same 100,000 ratings in time order (ties keep file order) and is asked for each
rating before it learns it (predict-then-learn); predictions are clipped to [1, 5]; RMSE and MAE are over
all events. The references and freshrec's "explicit loop" rows run one event at a time (B = 1, the strict
form) in a plain loop, so they compare like for like; freshrec's "trainer" row runs the whole pipeline
(`freshrec.training.replay`: validation, dedupe, encoding, top-K evaluation, learning) with micro-batches of
B events, where a batch is predicted before any of it is learned. River and Vowpal Wabbit are optional
(`pip install river vowpalwabbit`): a missing one is skipped with a note, never a crash. The table goes to
BENCHMARKS.md (section "rating") unless --no-write.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import machine_line, markdown_table, version_of, write_section  # noqa: E402
from freshrec.events import KIND_CODES  # noqa: E402
from freshrec.interactions import Interactions, Query  # noqa: E402
from freshrec.models.rating import RatingConfig, RatingModel  # noqa: E402
from freshrec.preprocess.encode import encode_ids  # noqa: E402
from freshrec.sources.movielens import MovieLensSource, load_movielens_100k  # noqa: E402
from freshrec.training.online import OnlineTrainer, TrainerConfig  # noqa: E402
from freshrec.training.replay import replay  # noqa: E402

MIN_RATING, MAX_RATING = 1.0, 5.0
#: Rows of `run_rating_benchmark`: system, B, rmse, mae, events_per_second (+ optional extras).
Row = dict[str, Any]


def _figures(predicted: np.ndarray, ratings: np.ndarray, seconds: float) -> dict[str, float]:
    clipped = np.clip(predicted, MIN_RATING, MAX_RATING)
    errors = clipped - ratings
    return {
        "rmse": float(np.sqrt(np.mean(errors**2))),
        "mae": float(np.mean(np.abs(errors))),
        "events_per_second": len(ratings) / seconds if seconds > 0 else 0.0,
    }


def _explicit_loop(predict_then_learn: Callable[[int], float], n: int) -> tuple[np.ndarray, float]:
    """Predictions of a reference asked event by event (it learns each event right after predicting it)."""
    predicted = np.empty(n)
    started = time.perf_counter()
    for row in range(n):
        predicted[row] = predict_then_learn(row)
    return predicted, time.perf_counter() - started


# ---------------------------------------------------------------------- freshrec
def default_rating_config(capacity: int = 100_000) -> RatingConfig:
    """The registry's `rating-mf` configuration: the documented defaults with room for 100k users/items."""
    return RatingConfig(user_capacity=capacity, item_capacity=capacity)


def run_freshrec_loop(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    times: np.ndarray,
    batch_size: int = 1,
    config: RatingConfig | None = None,
) -> dict[str, float]:
    """`RatingModel` in a plain predict-then-learn loop over micro-batches of `batch_size` (no pipeline)."""
    model = RatingModel(config or default_rating_config())
    user_keys, item_keys = encode_ids(users), encode_ids(items)
    kinds = np.full(len(ratings), KIND_CODES["rating"], dtype=np.int8)
    no_negatives = np.zeros((len(ratings), 0), dtype=np.uint64)
    predicted = np.empty(len(ratings))
    started = time.perf_counter()
    for start in range(0, len(ratings), batch_size):
        part = slice(start, start + batch_size)
        query = Query.without_history(user_keys[part], times[part])
        predicted[part] = model.predict_ratings(query, item_keys[part])
        model.learn(Interactions(query, item_keys[part], ratings[part], kinds[part], no_negatives[part]))
    return _figures(predicted, ratings, time.perf_counter() - started)


def run_freshrec_trainer(movielens_path: Path | None, batch_size: int) -> dict[str, float]:
    """`RatingModel` through `OnlineTrainer` + `replay` (the whole pipeline, top-K evaluation included)."""
    trainer = OnlineTrainer(RatingModel(default_rating_config()), TrainerConfig(batch_size=batch_size, k=10))
    report = replay(MovieLensSource(movielens_path), trainer)
    return {
        "rmse": float(report.overall.rmse or np.nan),
        "mae": float(report.overall.mae or np.nan),
        "events_per_second": report.events_per_second,
        "hr": report.overall.hr,
        "ndcg": report.overall.ndcg,
    }


# ---------------------------------------------------------------------- River
def _river_loop(model: Any, users: np.ndarray, items: np.ndarray, ratings: np.ndarray) -> dict[str, float]:
    user_list, item_list, rating_list = users.tolist(), items.tolist(), ratings.tolist()

    def step(row: int) -> float:
        user, item = user_list[row], item_list[row]
        prediction = model.predict_one(user, item)
        model.learn_one(user, item, rating_list[row])
        return prediction

    predicted, seconds = _explicit_loop(step, len(ratings))
    return _figures(predicted, ratings, seconds)


def run_river_biased_mf(users: np.ndarray, items: np.ndarray, ratings: np.ndarray) -> dict[str, float]:
    """River's `reco.BiasedMF` with the settings of its MovieLens-100K guide (k=10, SGD 0.025 / 0.05)."""
    from river import optim, reco

    model = reco.BiasedMF(
        n_factors=10,
        bias_optimizer=optim.SGD(0.025),
        latent_optimizer=optim.SGD(0.05),
        weight_initializer=optim.initializers.Zeros(),
        latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=73),
        l2_bias=0.0,
        l2_latent=0.0,
    )
    return _river_loop(model, users, items, ratings)


def run_river_baseline(users: np.ndarray, items: np.ndarray, ratings: np.ndarray) -> dict[str, float]:
    """River's `reco.Baseline` (global mean + user and item biases), SGD(0.025), no L2."""
    from river import optim, reco

    model = reco.Baseline(optimizer=optim.SGD(0.025), l2=0.0, initializer=optim.initializers.Zeros())
    return _river_loop(model, users, items, ratings)


# ---------------------------------------------------------------------- Vowpal Wabbit
def _vw_loop(arguments: str, users: np.ndarray, items: np.ndarray, ratings: np.ndarray) -> dict[str, float]:
    """Explicit predict-then-learn through VW's Python binding (text parsing included in the time)."""
    from vowpalwabbit import Workspace

    workspace = Workspace(f"{arguments} --quiet")
    features = [f"|u {u} |i {i}" for u, i in zip(users.tolist(), items.tolist(), strict=True)]
    labels = [f"{r:g} " for r in ratings.tolist()]

    def step(row: int) -> float:
        example = workspace.parse(labels[row] + features[row])
        prediction = workspace.predict(example)  # predict does not learn: asked before the update
        workspace.learn(example)
        workspace.finish_example(example)
        return float(prediction)

    try:
        predicted, seconds = _explicit_loop(step, len(ratings))
    finally:
        workspace.finish()
    return _figures(predicted, ratings, seconds)


def run_vw_biases(users: np.ndarray, items: np.ndarray, ratings: np.ndarray) -> dict[str, float]:
    """Vowpal Wabbit, user and item biases only (one-hot user and item features): ``-b 20``."""
    return _vw_loop("-b 20", users, items, ratings)


def run_vw_rank(users: np.ndarray, items: np.ndarray, ratings: np.ndarray) -> dict[str, float]:
    """Vowpal Wabbit's matrix factorisation: ``--rank 10 -q ui -l 0.08 --power_t 0``."""
    return _vw_loop("--rank 10 -q ui -l 0.08 --power_t 0", users, items, ratings)


Reference = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, float]]
#: label, the package it needs, the runner.
REFERENCES: list[tuple[str, str, Reference]] = [
    ("River `reco.BiasedMF` k=10, bias SGD(0.025), latent SGD(0.05)", "river", run_river_biased_mf),
    ("River `reco.Baseline`, SGD(0.025)", "river", run_river_baseline),
    ("Vowpal Wabbit, user + item biases (`-b 20`)", "vowpalwabbit", run_vw_biases),
    ("Vowpal Wabbit `--rank 10 -q ui -l 0.08 --power_t 0`", "vowpalwabbit", run_vw_rank),
]


def _available(package: str) -> bool:
    try:
        __import__(package)
    except ImportError:
        return False
    return True


def run_references(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    references: list[tuple[str, str, Reference]] | None = None,
    log: Callable[[str], None] = print,
) -> list[tuple[str, int, dict[str, float]]]:
    """(label with package version, B = 1, figures) of each reference whose package is installed; a
    missing package is skipped with a note through `log`."""
    results = []
    for label, package, run in REFERENCES if references is None else references:
        if not _available(package):
            log(f"skipped {label}: `{package}` is not installed (pip install {package})")
            continue
        results.append((f"{label} ({package} {version_of(package)})", 1, run(users, items, ratings)))
    return results


def run_rating_benchmark(
    movielens_path: Path | None = None,
    batch_size: int = 256,
    trainer: bool = True,
    references: bool = True,
    limit: int | None = None,
    log: Callable[[str], None] = print,
) -> list[Row]:
    """Run every system over MovieLens-100K in time order; one row per system.

    Parameters
    ----------
    movielens_path
        As for `freshrec.sources.movielens.load_movielens_100k` (None: the cache, downloading once).
    batch_size
        B of freshrec's trainer row and of its second explicit-loop row (the other loops run at B = 1).
    trainer
        Include the whole-pipeline row (slowest: it also ranks every item for top-K per batch).
    references
        Include River and Vowpal Wabbit (each skipped with a note when its package is missing).
    limit
        Use only the first `limit` ratings (tests); the trainer row is then skipped (it reads the source).

    Returns
    -------
    Dicts with ``system``, ``B``, ``rmse``, ``mae``, ``events_per_second`` (and ``hr``, ``ndcg`` for
    the trainer row), in the order run.
    """
    table = load_movielens_100k(movielens_path)
    if limit is not None:
        table = table.slice(0, limit)
    users = table.column("user_id").to_numpy()
    items = table.column("item_id").to_numpy()
    ratings = table.column("rating").to_numpy().astype(np.float64)
    times = table.column("timestamp").to_numpy().astype(np.float64)
    rows: list[Row] = []

    def record(system: str, b: int, result: dict[str, float]) -> None:
        rows.append({"system": system, "B": b, **result})
        log(
            f"{system} (B = {b}): RMSE {result['rmse']:.4f} MAE {result['mae']:.4f} "
            f"{result['events_per_second']:,.0f} events/s"
        )

    record("freshrec `rating-mf`, explicit loop", 1, run_freshrec_loop(users, items, ratings, times, 1))
    if batch_size != 1:
        # Without the pipeline's live history values: what batching costs when nothing corrects for it.
        label = "freshrec `rating-mf`, explicit loop without live history"
        record(label, batch_size, run_freshrec_loop(users, items, ratings, times, batch_size))
    if trainer and limit is None:
        record(
            "freshrec `rating-mf`, OnlineTrainer + replay",
            batch_size,
            run_freshrec_trainer(movielens_path, batch_size),
        )
    if references:
        for label, b, result in run_references(users, items, ratings, log=log):
            record(label, b, result)
    return rows


def rating_markdown(rows: list[Row]) -> str:
    """The explanation, table and notes of a `run_rating_benchmark` result (also used by bench/quality.py)."""
    header = ["system", "B", "RMSE", "MAE", "events/s"]
    body = [
        [r["system"], str(r["B"]), f"{r['rmse']:.4f}", f"{r['mae']:.4f}", f"{r['events_per_second']:,.0f}"]
        for r in rows
    ]
    notes = [f"Defaults: `{RatingConfig()}` (capacity 100k per side in the run)."]
    pipeline = [r for r in rows if "OnlineTrainer" in r["system"]]
    if pipeline:
        notes.append(
            f"Trainer row: top-K as a by-product, HR@10 {pipeline[0]['hr']:.4f} NDCG@10 "
            f"{pipeline[0]['ndcg']:.4f}; its events/s include ranking every item seen so far per batch."
        )
    return "\n".join(
        [
            "All 100,000 ratings in time order; each is predicted before it is learned; predictions clipped "
            "to [1, 5]. B = 1 rows are explicit one-event loops (the strict form; the references run so); "
            "with B > 1 a whole micro-batch is predicted before any of it is learned, which costs RMSE on "
            "MovieLens because users rate in bursts (a new user's first ratings of a session share a batch); "
            "through the pipeline the model reads the user's ratings earlier in the batch from the live "
            "feature state and corrects for what it has not learned yet (`RatingConfig.session_history`).",
            "",
            markdown_table(header, body),
            "",
            *[f"- {line}" for line in notes],
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256, help="B of the trainer row")
    parser.add_argument("--skip-trainer", action="store_true", help="leave out the whole-pipeline row")
    parser.add_argument("--skip-references", action="store_true")
    parser.add_argument("--movielens-path", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()

    rows = run_rating_benchmark(
        args.movielens_path,
        args.batch_size,
        trainer=not args.skip_trainer,
        references=not args.skip_references,
    )
    markdown = "\n".join(
        [
            "## Rating prediction: MovieLens-100K, predict-then-learn",
            "",
            f"`python bench/rating.py --batch-size {args.batch_size}` — "
            f"{machine_line('river', 'vowpalwabbit')}",
            "",
            rating_markdown(rows),
        ]
    )
    print()
    print(markdown)
    if not args.no_write:
        write_section("rating", markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
