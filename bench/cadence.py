"""Update cadence: what a model loses when it is refreshed every hour, retrained every day, or frozen.

Usage: `python bench/cadence.py [--runs ml100k:cooccurrence,synthetic:two-tower] [--synthetic-events 150000]
[--synthetic-days 10] [--epochs 3] [--batch-size 256] [--max-events N] [--seed S] [--no-write]`

Runs `freshrec.training.cadence` (four cadences of one model over one prequential replay, ../shared/
PROTOCOL.md) for each SOURCE:MODEL pair named (sources: MovieLens-100K, a drifting synthetic stream).
--max-events studies only the first N events of each stream (a quick check of the early phase); --seed
sets the models' seed (a second run at another seed shows how much of a difference is noise).
Writes the plots to docs/images/cadence-<source>-<model>.png and the tables to BENCHMARKS.md (section
"cadence"); with --no-write the plots go to --plot-dir (default: a folder under /tmp) and nothing else is
written.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import machine_line, write_section  # noqa: E402
from freshrec.events import KindWeights  # noqa: E402
from freshrec.models.registry import create_model  # noqa: E402
from freshrec.sources.movielens import MovieLensSource  # noqa: E402
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream  # noqa: E402
from freshrec.training.cadence import CadenceConfig, CadenceReport, run_cadence_study  # noqa: E402
from freshrec.training.online import TrainerConfig  # noqa: E402

REPOSITORY = Path(__file__).resolve().parent.parent
IMAGES = REPOSITORY / "docs" / "images"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs",
        default="ml100k:cooccurrence,synthetic:cooccurrence,synthetic:two-tower",
        help="comma-separated SOURCE:MODEL pairs (SOURCE: ml100k or synthetic). Two-tower is left out of "
        "ml100k by default: its daily retrains over ~200 days of events take most of an hour here",
    )
    parser.add_argument("--synthetic-events", type=int, default=150_000)
    parser.add_argument("--synthetic-days", type=float, default=10.0)
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs of each daily retrain (gradient models)"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--window-events", type=int, default=None, help="default: events / 60")
    parser.add_argument(
        "--max-events",
        type=int,
        default=None,
        help="study only each stream's first N events (a quick check of the early phase)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="the models' seed setting (default: each model's own)"
    )
    parser.add_argument("--movielens-path", type=Path, default=None)
    parser.add_argument("--plot-dir", type=Path, default=None, help="where plots go with --no-write")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()

    plot_dir = IMAGES if not args.no_write else (args.plot_dir or Path(tempfile.mkdtemp(prefix="cadence-")))
    runs = [tuple(pair.split(":", 1)) for pair in args.runs.split(",") if pair]
    sections: list[str] = []
    for source_name, model_name in runs:
        source = (
            MovieLensSource(args.movielens_path)
            if source_name == "ml100k"
            else SyntheticStream(
                SyntheticConfig.drifting(args.synthetic_events, args.synthetic_days),
                name="synthetic-drift",
            )
        )
        n = len(source) if source_name == "ml100k" else args.synthetic_events
        n = min(n, args.max_events or n)
        config = CadenceConfig(
            # The synthetic stream's kinds are drawn at random (kind_signal 0): weighting them would only
            # add noise, and every kind at 1 keeps the published figures reproducible.
            trainer=TrainerConfig(batch_size=args.batch_size, k=10, kind_weights=KindWeights.uniform()),
            retrain_epochs=args.epochs,
            window_events=args.window_events or max(500, n // 60),
        )
        started = time.perf_counter()
        report = run_cadence_study(
            source,
            lambda name=model_name: create_model(name, {} if args.seed is None else {"seed": args.seed}),
            config,
            max_events=args.max_events,
        )
        seconds = time.perf_counter() - started
        # A partial or reseeded run never overwrites the plot of a full default one.
        suffix = f"-first{args.max_events}" if args.max_events else ""
        suffix += f"-seed{args.seed}" if args.seed is not None else ""
        plot = report.write_plot(plot_dir / f"cadence-{source_name}-{model_name}{suffix}.png")
        print(f"\n### {source_name}, {model_name} ({seconds:.0f} s; plot {plot})\n", flush=True)
        print(report.markdown(), flush=True)
        sections.append(section(report, source_name, model_name, plot, args))

    markdown = "\n".join(
        [
            "## Update cadence: per-batch vs hourly vs daily retrain vs frozen",
            "",
            f"`python bench/cadence.py --runs {args.runs} --epochs {args.epochs}"
            + (f" --max-events {args.max_events}" if args.max_events else "")
            + (f" --seed {args.seed}" if args.seed is not None else "")
            + f"` — "
            f"{machine_line('matplotlib')}",
            "",
            "One prequential replay (PROTOCOL.md: test-then-train, all items seen so far ranked, the user's "
            "seen items excluded) scored by four copies of the same model: (a) the online learner, updated "
            "every micro-batch; (b) a served copy refreshed with the learner's state at every event-time "
            "hour boundary; (c) a model retrained from scratch at every UTC day boundary on all earlier days "
            "(gradient models: several shuffled epochs of their own learn() with the recent-item negative "
            "sampler; counting models: one pass), frozen for the day; (d) the learner frozen after 50% of "
            "the events. Feature state (histories, seen items) is live for all four. The learner learns in "
            "micro-batches of B events; scoring is cut at hour and day boundaries, so a refreshed copy "
            "serves exactly the events after its boundary, with the learner's state as it is then.",
            "",
            *sections,
        ]
    )
    print()
    print(markdown)
    if not args.no_write:
        write_section("cadence", markdown)
    return 0


def section(report: CadenceReport, source: str, model: str, plot: Path, args: argparse.Namespace) -> str:
    try:
        shown = plot.resolve().relative_to(REPOSITORY)
    except ValueError:
        shown = plot
    return "\n".join(
        [
            f"### {source}, `{model}`",
            "",
            report.markdown(),
            "",
            f"![HR@10 over event time, {source}, {model}]({shown})",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
