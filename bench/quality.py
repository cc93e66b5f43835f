"""Prequential quality on MovieLens-100K: the protocol's references and every freshrec model, in one run.

Usage: `python bench/quality.py [--batch-size 256] [--models a,b] [--skip-references] [--skip-rating]
[--reference-commit COMMIT [--reference-models blend]] [--section quality] [--no-write]`

The references are the straightforward implementations of ../shared/PROTOCOL.md (B = 1, dense matrices,
`bench/references.py`); freshrec's models run through the real pipeline (`freshrec.training.replay`) with
micro-batches of B events. Rating prediction (`bench/rating.py`: freshrec `rating-mf` against River and
Vowpal Wabbit when installed, the `bench` extra) runs in the same run. With `--reference-commit`, the
`--reference-models` run once more as the code of that commit had them (`bench/at_commit.py`), so a
speed-up is a ratio measured in one run; the default commit is the blend as issue 15 found it. The tables
go to BENCHMARKS.md (section "quality") with the date and machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import references  # noqa: E402
from bench.at_commit import add_reference_commit_option, replay_at_commit, short_commit  # noqa: E402
from bench.rating import rating_markdown, run_rating_benchmark  # noqa: E402
from bench.report import machine_line, markdown_table, write_section  # noqa: E402
from freshrec.features.items import ItemFeatureTable  # noqa: E402
from freshrec.models.base import Recommender  # noqa: E402
from freshrec.models.registry import BEST_MODEL, MODEL_FACTORIES, create_model  # noqa: E402
from freshrec.models.twotower import TwoTowerModel  # noqa: E402
from freshrec.sources.movielens import (  # noqa: E402
    MovieLensSource,
    load_movielens_100k,
    load_movielens_100k_items,
)
from freshrec.training.online import OnlineTrainer, TrainerConfig  # noqa: E402
from freshrec.training.replay import replay  # noqa: E402

REFERENCES = {
    "reference: global popularity so far": references.run_popularity,
    "reference: popularity decayed, half-life 7 days": references.run_popularity_decayed,
    "reference: ISGD k=10, lr 0.05, reg 0.01": references.run_isgd,
    "reference: co-occurrence, last 20 items": references.run_cooccurrence,
    "reference: co-occurrence tuned (0.9^age, / (count+1)^0.5)": references.run_cooccurrence_tuned,
}
#: freshrec models that learn parameters by gradient descent (the rest are counting heuristics).
LEARNED_MODELS = {"bpr-mf", "two-tower", "two-tower+genres", "sasrec", "blend", "rating-mf"}
#: Ranking models run by default: the registry's, but the rating model (it has its own table), plus the
#: two-tower model with MovieLens genres as item features (data, not a hyper-parameter).
TOP_K_MODELS = [name for name in MODEL_FACTORIES if name != "rating-mf"] + ["two-tower+genres"]
#: Issue 4's bar for the best model (HR@10, NDCG@10 over all events).
TARGET = (0.22, 0.115)


def build_model(name: str, movielens_path: Path | None) -> Recommender:
    if name == "two-tower+genres":
        genres = ItemFeatureTable.from_arrow(load_movielens_100k_items(movielens_path), "genres")
        two_tower = create_model("two-tower")
        return TwoTowerModel(two_tower.config, item_features=genres)
    return create_model(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--models", default=",".join(TOP_K_MODELS), help="comma-separated freshrec models")
    parser.add_argument("--skip-references", action="store_true")
    parser.add_argument("--skip-rating", action="store_true", help="leave out rating prediction")
    parser.add_argument("--movielens-path", type=Path, default=None)
    add_reference_commit_option(parser, "run --reference-models")
    parser.add_argument("--reference-models", default="blend", help="comma-separated, for --reference-commit")
    parser.add_argument(
        "--section",
        default="quality",
        help="BENCHMARKS.md section to write (another name keeps a partial run from replacing the table)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()

    table = load_movielens_100k(args.movielens_path)
    users = table.column("user_id").to_numpy()
    items = table.column("item_id").to_numpy()
    times = table.column("timestamp").to_numpy().astype(np.float64)
    rows: list[tuple[str, str, dict[str, float]]] = []

    if not args.skip_references:
        for label, run in REFERENCES.items():
            started = time.perf_counter()
            result = run(users, items, times, k=10)
            print(
                f"{label}: HR@10 {result['hr']:.4f} NDCG@10 {result['ndcg']:.4f} "
                f"({time.perf_counter() - started:.1f}s)",
                flush=True,
            )
            rows.append((label, "1", result))

    for name in [m for m in args.models.split(",") if m]:
        model = build_model(name, args.movielens_path)
        trainer = OnlineTrainer(model, TrainerConfig(batch_size=args.batch_size, k=10))
        report = replay(MovieLensSource(args.movielens_path), trainer)
        result = {
            "name": name,
            "hr": report.overall.hr,
            "ndcg": report.overall.ndcg,
            "hr_last20": report.last_20_percent.hr,
            "ndcg_last20": report.last_20_percent.ndcg,
            "events_per_second": report.events_per_second,
            "learning_events_per_second": report.learning_events_per_second,
        }
        print(
            f"freshrec {name}: HR@10 {result['hr']:.4f} NDCG@10 {result['ndcg']:.4f} "
            f"(learning {result['learning_events_per_second']:,.0f} events/s; {report.seconds:.1f}s)",
            flush=True,
        )
        rows.append((f"freshrec `{name}`", str(args.batch_size), result))

    if args.reference_commit:
        commit = short_commit(args.reference_commit)
        for name in [m for m in args.reference_models.split(",") if m]:
            result = {"name": name, **replay_at_commit(commit, name, args.batch_size, args.movielens_path)}
            print(
                f"freshrec {name} at {commit}: HR@10 {result['hr']:.4f} NDCG@10 {result['ndcg']:.4f} "
                f"(learning {result['learning_events_per_second']:,.0f} events/s)",
                flush=True,
            )
            rows.append((f"freshrec `{name}` as of {commit}", str(args.batch_size), result))

    rating_rows = [] if args.skip_rating else run_rating_benchmark(args.movielens_path, args.batch_size)

    header = [
        "system",
        "B",
        "HR@10",
        "NDCG@10",
        "HR@10 last 20%",
        "NDCG@10 last 20%",
        "events/s",
        "learning events/s",
    ]
    body = [
        [
            label,
            b,
            f"{r['hr']:.4f}",
            f"{r['ndcg']:.4f}",
            f"{r['hr_last20']:.4f}",
            f"{r['ndcg_last20']:.4f}",
            f"{r['events_per_second']:,.0f}",
            f"{r['learning_events_per_second']:,.0f}" if "learning_events_per_second" in r else "",
        ]
        for label, b, r in rows
    ]
    earlier = [(label, r) for label, _, r in rows if " as of " in label]
    freshrec_rows = [
        (label, r) for label, _, r in rows if label.startswith("freshrec") and (label, r) not in earlier
    ]
    reference_rows = [(label, r) for label, _, r in rows if label.startswith("reference")]
    verdict = []
    if freshrec_rows:
        best_label, best = max(freshrec_rows, key=lambda lr: lr[1]["hr"])
        met = "met" if best["hr"] >= TARGET[0] and best["ndcg"] >= TARGET[1] else "not met"
        verdict.append(
            f"Best freshrec model: {best_label} HR@10 {best['hr']:.4f} NDCG@10 {best['ndcg']:.4f} "
            f"(target {TARGET[0]} / {TARGET[1]}: {met}; default model: `{BEST_MODEL}`)."
        )
        learned = [(label, r) for label, r in freshrec_rows if r["name"] in LEARNED_MODELS]
        heuristics = [(label, r) for label, r in freshrec_rows if r["name"] not in LEARNED_MODELS]
        if learned and heuristics:
            l_label, l_best = max(learned, key=lambda lr: lr[1]["hr"])
            h_label, h_best = max(heuristics, key=lambda lr: lr[1]["hr"])
            winner = "the learned model" if l_best["hr"] > h_best["hr"] else "the heuristic"
            verdict.append(
                f"Learned vs heuristics: {l_label} {l_best['hr']:.4f} vs {h_label} {h_best['hr']:.4f}: "
                f"{winner} wins."
            )
    for label, then in earlier:
        now = next((r for _, r in freshrec_rows if r["name"] == then["name"]), None)
        if now is not None:
            verdict.append(
                f"{label}: learning {then['learning_events_per_second']:,.0f} events/s, today "
                f"{now['learning_events_per_second']:,.0f} "
                f"({now['learning_events_per_second'] / then['learning_events_per_second']:.1f}x); "
                f"end to end {now['events_per_second'] / then['events_per_second']:.1f}x; HR@10 "
                f"{then['hr']:.4f} then, {now['hr']:.4f} today."
            )
    if reference_rows:
        ref_label, ref = max(reference_rows, key=lambda lr: lr[1]["hr"])
        verdict.append(f"Best reference: {ref_label} HR@10 {ref['hr']:.4f} NDCG@10 {ref['ndcg']:.4f}.")
    markdown = "\n".join(
        [
            "## Quality: prequential top-10 on MovieLens-100K",
            "",
            f"`{' '.join(['python bench/quality.py', *sys.argv[1:]])}` — {machine_line()}",
            "",
            "Protocol of PROTOCOL.md: time order, test-then-train, all items seen so far ranked, the user's "
            "seen "
            "items excluded, every event counted. References at B = 1; freshrec models through the full "
            f"pipeline with micro-batches of B = {args.batch_size} and live feature state. events/s include "
            "scoring every item for top-K; learning events/s are feature updates and learning alone.",
            "",
            markdown_table(header, body),
            "",
            *[f"- {line}" for line in verdict],
            *(
                ["", "### Rating prediction (same run)", "", rating_markdown(rating_rows)]
                if rating_rows
                else ()
            ),
        ]
    )
    print()
    print(markdown)
    if not args.no_write:
        write_section(args.section, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
