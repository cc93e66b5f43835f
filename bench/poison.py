"""Poisoning drills: what the publish gate and the guardrail let through a burst of bad events, and how soon
publishing resumes after it (`freshrec.publishing.poisoning`).

Usage: `python bench/poison.py [--model cooccurrence|two-tower] [--no-write]`

A synthetic stream (800 users, 600 items, seed 5 for co-occurrence; 300 users, 400 items for two-tower):
clean events, then a burst, then clean events again (the recovery). Every burst runs under four
configurations: the defaults (gate and guardrail), the gate alone, the guardrail alone (the gate without
its collapse and concentration checks) and neither. Each row gives the HR@10 users got
on the recovery's events from the versions served (and its difference to the run without the burst), how
often the served versions would show the promoted item to the recovery's users, the publications during
the burst, the clean events until the first publication after it, and the quarantine restarts and
rollbacks. A second table counts publications per quarter of the drifting stream.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import machine_line, markdown_table, write_section  # noqa: E402
from freshrec.evaluation.gate import GateConfig  # noqa: E402
from freshrec.models.base import Model  # noqa: E402
from freshrec.models.cooccurrence import CooccurrenceConfig, CooccurrenceModel  # noqa: E402
from freshrec.publishing import poisoning  # noqa: E402
from freshrec.publishing.guardrail import GuardrailConfig  # noqa: E402
from freshrec.publishing.publisher import PublisherConfig  # noqa: E402
from freshrec.sources.synthetic import SyntheticConfig  # noqa: E402

#: The gate without its poison checks: it still compares the candidate with the serving version.
BLIND = GateConfig(collapse_ratio=0.0, concentration_ratio=0.0, rare_ratio=0.0)
CONFIGURATIONS = {
    "gate + guardrail": PublisherConfig(interval_ms=0),
    "gate only": PublisherConfig(interval_ms=0, guardrail=GuardrailConfig(enabled=False)),
    "guardrail only": PublisherConfig(interval_ms=0, gate=BLIND),
    "neither": PublisherConfig(interval_ms=0, gate=BLIND, guardrail=GuardrailConfig(enabled=False)),
}


def cooccurrence() -> Model:
    return CooccurrenceModel(CooccurrenceConfig(capacity=4096, max_neighbors=32))


def two_tower() -> Model:
    from freshrec.models.registry import create_model

    tables = {"capacity": 2048}
    return create_model("two-tower", {"dim": 16, "hidden": 32, "users": tables, "items": tables, "seed": 1})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("cooccurrence", "two-tower"), default="cooccurrence")
    parser.add_argument("--no-write", action="store_true", help="print, do not rewrite BENCHMARKS.md")
    args = parser.parse_args()
    if args.model == "cooccurrence":
        model: Callable[[], Model] = cooccurrence
        clean_events, burst_events, recovery = 12_000, 6_000, 8_000
        stream = SyntheticConfig(n_events=26_000, n_users=800, n_items=600, seed=5)
    else:
        model = two_tower
        clean_events, burst_events, recovery = 6_000, 3_000, 4_000
        stream = SyntheticConfig(n_events=13_000, n_users=300, n_items=400, seed=5)
    clean = poisoning.synthetic_events(stream)
    start, stop = clean_events, clean_events + burst_events
    short_stop = start + burst_events // 6
    bursts = {
        "random items": poisoning.random_items(clean, start, stop),
        "least popular 10%": poisoning.least_popular_items(clean, start, stop),
        "promotion, new accounts (1/2)": poisoning.promotion_by_new_accounts(clean, start, stop),
        "promotion, existing accounts (1/2)": poisoning.promotion_by_existing_accounts(clean, start, stop),
        "short promotion, existing accounts (3/4)": poisoning.promotion_by_existing_accounts(
            clean, start, short_stop, share=0.75
        ),
    }
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, burst in bursts.items():
            unpoisoned = poisoning.Burst.none(clean, start, burst.clean_end, burst.target)
            control = poisoning.drill(unpoisoned, model, Path(folder) / f"{name}-clean")
            rows.append(_row(name, "no burst", control, control, control.exposure))
            for label, config in CONFIGURATIONS.items():
                outcome = poisoning.drill(burst, model, Path(folder) / f"{name}-{label}", config)
                rows.append(_row(name, label, outcome, control, outcome.exposure))
                print(" | ".join(rows[-1]), flush=True)
        drift = _drift(model, Path(folder) / "drift", 60_000 if args.model == "cooccurrence" else 20_000)
    header = [
        "burst",
        "configuration",
        "published in burst",
        "first publication after (clean events)",
        "served HR@10 after",
        "vs no burst",
        "parameters' HR@10 after",
        "vs no burst",
        "promoted item shown",
        "restarts",
        "rollbacks",
    ]
    body = (
        f"## Poisoning drills, `{args.model}`\n\n"
        f"`python bench/poison.py --model {args.model}` — {machine_line()}\n\n"
        f"{stream.n_users} users, {stream.n_items} items, seed 5: {clean_events:,} clean events, a burst "
        f"over the next {burst_events:,} (the short one over {burst_events // 6:,}), {recovery:,} clean "
        "events after. A publish attempt after every micro-batch of 256. `(1/2)`: the injected events "
        "make half of the burst's. 'served HR@10 after': what users got on the clean events after the "
        "burst from the versions served; 'parameters' HR@10': the same versions ranking those events with "
        "the clean run's histories and seen items (the damage of the parameters alone); 'promoted item "
        "shown': share of those events whose user would see the target in the top 10.\n\n"
        f"{markdown_table(header, rows)}\n\n"
        f"Drifting stream (`SyntheticConfig.drifting({drift[0]:,})`), defaults: publications in each of its "
        "last three quarters "
        f"{drift[1]}, held {drift[2]}, restarts {drift[3]}, rollbacks {drift[4]}.\n\n"
        f"Total {time.perf_counter() - started:.0f} s."
    )
    print(body)
    if not args.no_write:
        write_section(f"poison-{args.model}", body)


def _row(
    name: str, label: str, outcome: poisoning.DrillOutcome, control: poisoning.DrillOutcome, exposure
) -> list[str]:
    first = "none" if outcome.first_publish is None else f"{outcome.first_publish:,}"
    rollbacks = outcome.publisher.guardrail.rollbacks if outcome.publisher.guardrail is not None else "-"
    return [
        name,
        label,
        f"{outcome.published_in_burst}/{len(outcome.burst)}",
        first,
        f"{outcome.served_hr:.4f}",
        f"{outcome.served_hr - control.served_hr:+.4f}",
        f"{outcome.parameters_hr:.4f}",
        f"{outcome.parameters_hr - control.parameters_hr:+.4f}",
        "-" if exposure is None else f"{exposure:.4f}",
        str(outcome.publisher.gate.rebases),
        str(rollbacks),
    ]


def _drift(model, folder: Path, n_events: int) -> tuple[int, str, int, int, int]:
    """The drifting stream under the defaults: publications in each quarter after the first."""
    stream = poisoning.synthetic_events(SyntheticConfig.drifting(n_events))
    outcome = poisoning.drill(poisoning.Burst.none(stream, n_events // 4, n_events // 4), model, folder)
    gate, guardrail = outcome.publisher.gate, outcome.publisher.guardrail
    rollbacks = guardrail.rollbacks if guardrail is not None else 0
    per_quarter = " / ".join(map(str, outcome.published_per_part(3)))
    return n_events, per_quarter, gate.held, gate.rebases, rollbacks


if __name__ == "__main__":
    main()
