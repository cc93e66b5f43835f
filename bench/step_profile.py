"""Where the time of one training step goes: a replay of MovieLens-100K's first events under cProfile, with
every event evaluated (test-then-train, as `bench/quality.py` runs), summed per part of the step.

Usage: `python bench/step_profile.py [--model blend] [--events 20000] [--batch-size 256] [--no-write]`

Each row is the time spent in one function and everything it called, in milliseconds per step of
`--batch-size` events; rows are nested as the calls are (an indented row is part of the row above).
cProfile adds a cost per Python call, so parts made of many small calls read slower than they run; the
events/s line is measured by the same run. The table goes to BENCHMARKS.md (section "profile-<model>").
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import machine_line, markdown_table, write_section  # noqa: E402
from freshrec.models.blend import BlendedModel  # noqa: E402
from freshrec.models.registry import create_model  # noqa: E402
from freshrec.sources.movielens import MovieLensSource  # noqa: E402
from freshrec.training.online import OnlineTrainer, TrainerConfig  # noqa: E402
from freshrec.training.replay import replay  # noqa: E402

#: A row of the table: indent, label, module path suffix, function name.
Part = tuple[int, str, str, str]


def step_parts(model) -> list[Part]:
    """The parts of a step, as the calls nest; for a blend also its own parts and its components'."""
    blend = isinstance(model, BlendedModel)
    components = model.components if blend else []

    def path(component) -> str:
        return f"models/{type(component).__module__.rsplit('.', 1)[-1]}.py"

    parts: list[Part] = [
        (0, "step", "training/online.py", "step"),
        (1, "feature state (histories, seen items, candidates)", "features/state.py", "observe"),
        (1, "evaluation: the model ranks the catalogue", "training/online.py", "evaluate"),
    ]
    if blend:
        parts += [
            (2, "blend: features (every call, learning's too)", "models/blend.py", "features"),
            (3, "features of the distinct keys", "models/blend.py", "_key_features"),
            (3, "ranks against the reference set (binary search)", "models/blend.py", "_reference_ranks"),
            (3, "ranks against the reference set (sort)", "models/blend.py", "_ranks_among_keys"),
            (3, "rank features (-log(1 + rank))", "models/blend.py", "_rank_feature"),
        ]
        parts += [(3, f"{c.name}: score (every call)", path(c), "score") for c in components]
    parts += [
        (2, "ranks of the targets among the scores", "evaluation/prequential.py", "ranks_of_targets"),
        (1, "learning", "training/online.py", "learn"),
    ]
    if blend:
        parts.append(
            (2, "blend: weight step (softmax over the recent items)", "models/blend.py", "_learn_weights")
        )
        parts += [(2, f"{c.name}: learn", path(c), "learn") for c in components]
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="blend")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--movielens-path", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true", help="print, do not rewrite BENCHMARKS.md")
    args = parser.parse_args()
    model = create_model(args.model)
    trainer = OnlineTrainer(model, TrainerConfig(batch_size=args.batch_size, k=10))
    source = MovieLensSource(args.movielens_path)
    batches = list(itertools.islice(source.batches(args.events), 1))
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    replay(source, trainer, batches=batches)
    profile.disable()
    seconds = time.perf_counter() - started
    steps, events = trainer.totals.batches, trainer.totals.events
    cumulative = _cumulative_seconds(pstats.Stats(profile))
    whole = cumulative.get(("training/online.py", "step"), 0.0)
    rows = []
    for indent, label, path, function in step_parts(model):
        spent = cumulative.get((path, function), 0.0)
        rows.append(["\u2003" * indent + label, f"{1000 * spent / steps:.1f}", f"{100 * spent / whole:.0f}%"])
    body = (
        f"## Profile of a training step, `{args.model}`\n\n"
        f"`python bench/step_profile.py --model {args.model} --events {args.events}` — {machine_line()}\n\n"
        f"MovieLens-100K's first {events:,} events, {steps} steps of {args.batch_size}, every event "
        f"evaluated, under cProfile: {events / seconds:,.0f} events/s ({seconds:.1f} s). Milliseconds per "
        "step, including what each part calls.\n\n"
        f"{markdown_table(['part', 'ms per step', 'share of the step'], rows)}"
    )
    print(body)
    if not args.no_write:
        write_section(f"profile-{args.model}", body)


def _cumulative_seconds(stats: pstats.Stats) -> dict[tuple[str, str], float]:
    """Cumulative seconds per (module path suffix, function), summed over same-named functions of a file
    (every model's `score` is its own entry by its file)."""
    out: dict[tuple[str, str], float] = {}
    for (filename, _, function), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        parts = Path(filename).parts
        key = ("/".join(parts[-2:]), function)
        out[key] = out.get(key, 0.0) + cumulative
    return out


if __name__ == "__main__":
    main()
