"""Where the time of one training step goes: a replay of MovieLens-100K's first events under cProfile, with
every event evaluated (test-then-train, as `bench/quality.py` runs), summed per part of the step.

Usage: `python bench/step_profile.py [--model blend] [--events 20000] [--batch-size 256]
[--reference-commit [COMMIT]] [--no-write]`

Each row is the time spent in one function and everything it called, in milliseconds per step of
`--batch-size` events; rows are nested as the calls are (an indented row is part of the row above).
cProfile adds a cost per Python call, so parts made of many small calls read slower than they run; the
events/s line is measured by the same run. With `--reference-commit` the same profile runs first with
the code of that commit (`bench/at_commit.py`; alone, the blend as issue 15 found it) and the table puts
the two side by side: where the time went before and after. The table goes to BENCHMARKS.md (section
"profile-<model>").
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import json
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.at_commit import add_reference_commit_option, exported_source, run_with_source, short_commit  # noqa: E402
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


def profile(model_name: str, events: int, batch_size: int, movielens_path: Path | None) -> dict:
    """Milliseconds per step of each part of `step_parts` (by label), the events/s under the profiler,
    the seconds, events and steps of the run."""
    model = create_model(model_name)
    trainer = OnlineTrainer(model, TrainerConfig(batch_size=batch_size, k=10))
    source = MovieLensSource(movielens_path)
    batches = list(itertools.islice(source.batches(events), 1))
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    replay(source, trainer, batches=batches)
    profiler.disable()
    seconds = time.perf_counter() - started
    steps = trainer.totals.batches
    cumulative = _cumulative_seconds(pstats.Stats(profiler))
    parts = [
        {"indent": indent, "label": label, "ms": 1000 * cumulative.get((path, function), 0.0) / steps}
        for indent, label, path, function in step_parts(model)
    ]
    return {
        "parts": parts,
        "events": trainer.totals.events,
        "steps": steps,
        "seconds": seconds,
        "events_per_second": trainer.totals.events / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="blend")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--movielens-path", type=Path, default=None)
    add_reference_commit_option(parser, "profile the code")
    parser.add_argument("--json", action="store_true", help="print the profile as JSON only")
    parser.add_argument("--no-write", action="store_true", help="print, do not rewrite BENCHMARKS.md")
    args = parser.parse_args()
    before = None
    if args.reference_commit:
        commit = short_commit(args.reference_commit)
        with exported_source(commit) as source:
            child = [__file__, "--model", args.model, "--events", str(args.events), "--json"]
            child += ["--batch-size", str(args.batch_size)]
            if args.movielens_path:
                child += ["--movielens-path", str(args.movielens_path)]
            before = json.loads(run_with_source(source, child, f"profile at {commit}").splitlines()[-1])
            before["commit"] = commit
    now = profile(args.model, args.events, args.batch_size, args.movielens_path)
    if args.json:
        print(json.dumps(now))
        return
    print(render(args, now, before))
    if not args.no_write:
        write_section(f"profile-{args.model}", render(args, now, before))


def render(args: argparse.Namespace, now: dict, before: dict | None) -> str:
    """The section: one column per run, rows in the nesting of today's parts (then the earlier run's
    parts that no longer exist)."""
    whole = now["parts"][0]["ms"]
    earlier = {part["label"]: part for part in before["parts"]} if before else {}
    labels = [part["label"] for part in now["parts"]]
    rows = []
    for part in now["parts"] + [p for p in (before or {"parts": []})["parts"] if p["label"] not in labels]:
        label = "\u2003" * part["indent"] + part["label"]
        mine = part if part["label"] in labels else None
        row = [label]
        if before:
            then = earlier.get(part["label"])
            row.append(f"{then['ms']:.1f}" if then and then["ms"] else "")
        row += [f"{mine['ms']:.1f}" if mine else "", f"{100 * mine['ms'] / whole:.0f}%" if mine else ""]
        rows.append(row)
    header = ["part"] + ([f"ms per step at {before['commit']}"] if before else []) + ["ms per step"]
    header.append("share of the step")
    command = f"python bench/step_profile.py --model {args.model} --events {args.events}"
    if before:
        command += f" --reference-commit {before['commit']}"
        runs = (
            f"At {before['commit']}: {before['events_per_second']:,.0f} events/s "
            f"({before['seconds']:.1f} s); today: {now['events_per_second']:,.0f} events/s "
            f"({now['seconds']:.1f} s), both under the profiler, same run."
        )
    else:
        runs = f"{now['events_per_second']:,.0f} events/s ({now['seconds']:.1f} s) under the profiler."
    return (
        f"## Profile of a training step, `{args.model}`\n\n"
        f"`{command}` — {machine_line()}\n\n"
        f"MovieLens-100K's first {now['events']:,} events, {now['steps']} steps of {args.batch_size}, every "
        f"event evaluated, under cProfile. {runs} Milliseconds per step, including what each part "
        "calls (an empty cell: that part did not exist then).\n\n"
        f"{markdown_table(header, rows)}"
    )


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
