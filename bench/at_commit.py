"""Run a model of an earlier commit of freshrec beside today's, in the same benchmark run.

A speed-up is claimed against the code as it was, not against a figure written down on another day on
a machine that was busier or quieter: `bench/quality.py --reference-commit COMMIT` exports that commit's
``src/`` (``git archive``, nothing checked out in this tree) into a temporary folder and replays the
same stream there, in a child process whose ``freshrec`` is imported from that folder, with the same
settings as today's rows. Needs the git history (a clone, not an sdist) and the commit's dependencies
(those of today's install, when the commit is recent).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The blend's last commit before the work on its speed: the blend issue 15 measured ("today's blend",
#: 1,244 learning events/s on MovieLens-100K).
BLEND_BEFORE_SPEED_WORK = "a7fef50"

#: Replays MovieLens-100K with the commit's own freshrec and prints the figures as one JSON line. The
#: API it calls (`OnlineTrainer`, `TrainerConfig`, `replay`, `create_model`) is the same since the
#: design issue landed; older commits need another script.
_CHILD = """
import json, sys
from pathlib import Path
import freshrec
if not Path(freshrec.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()):
    raise SystemExit(f"imported {freshrec.__file__}, not the exported commit under {sys.argv[1]}")
from freshrec.models.registry import create_model
from freshrec.sources.movielens import MovieLensSource
from freshrec.training.online import OnlineTrainer, TrainerConfig
from freshrec.training.replay import replay
model, batch_size = sys.argv[2], int(sys.argv[3])
path = Path(sys.argv[4]) if sys.argv[4] else None
trainer = OnlineTrainer(create_model(model), TrainerConfig(batch_size=batch_size, k=10))
report = replay(MovieLensSource(path), trainer)
print(json.dumps({
    "hr": report.overall.hr, "ndcg": report.overall.ndcg,
    "hr_last20": report.last_20_percent.hr, "ndcg_last20": report.last_20_percent.ndcg,
    "events_per_second": report.events_per_second,
    "learning_events_per_second": report.learning_events_per_second,
}))
"""


def add_reference_commit_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``--reference-commit [COMMIT]`` on `parser`: `what` is done at that commit too (alone, at
    `BLEND_BEFORE_SPEED_WORK`)."""
    parser.add_argument(
        "--reference-commit",
        nargs="?",
        const=BLEND_BEFORE_SPEED_WORK,
        default=None,
        help=f"{what} as of this commit too (alone: {BLEND_BEFORE_SPEED_WORK})",
    )


def short_commit(commit: str) -> str:
    """The abbreviated hash of `commit` (any name git resolves), or a clear error."""
    found = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if found.returncode:
        raise SystemExit(f"--reference-commit {commit}: not a commit of {ROOT} ({found.stderr.strip()})")
    return found.stdout.strip()


@contextlib.contextmanager
def exported_source(commit: str) -> Iterator[Path]:
    """The ``src/`` folder of `commit`, exported into a temporary folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="freshrec-at-commit-") as folder:
        archive = Path(folder) / "src.tar"
        subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), commit, "src"],
            check=True,
        )
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
        yield Path(folder) / "src"


def run_with_source(source: Path, arguments: list[str], what: str) -> str:
    """Run ``python ARGUMENTS`` with `source` first on the import path (this tree's ``bench`` after it);
    returns its stdout, or stops with its stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, *arguments], env=env, cwd=source.parent, capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"{what} failed:\n{done.stderr[-4000:]}")
    return done.stdout


def replay_at_commit(commit: str, model: str, batch_size: int, movielens_path: Path | None) -> dict:
    """The figures of `model` replayed on MovieLens-100K by freshrec as of `commit` (keys as
    `bench/quality.py`'s rows)."""
    with exported_source(commit) as source:
        arguments = ["-c", _CHILD, str(source), model, str(batch_size), str(movielens_path or "")]
        out = run_with_source(source, arguments, f"{model} at {commit}")
        return json.loads(out.strip().splitlines()[-1])
