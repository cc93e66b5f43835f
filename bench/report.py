"""Shared by the benchmarks: the machine description and the section writer for BENCHMARKS.md.

Each benchmark owns one section of BENCHMARKS.md, between `<!-- bench:NAME -->` markers, and rewrites only
that section, so benchmarks can be rerun one at a time.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from importlib import metadata
from pathlib import Path

BENCHMARKS_FILE = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = (
    "# freshrec benchmarks\n\n"
    "Every figure below was written by a script in `bench/`; rerun it to refresh its section.\n"
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def version_of(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_line(*packages: str) -> str:
    """One line naming the date, the machine and the versions that matter for a figure."""
    versions = ", ".join(f"{p} {version_of(p)}" for p in ("freshrec", "torch", "numpy", *packages))
    return (
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores, {cpu_model()}; "
        f"Python {platform.python_version()}; {versions}"
    )


def write_section(name: str, body: str, path: Path = BENCHMARKS_FILE) -> None:
    """Replace (or append) the section `name` of BENCHMARKS.md with `body`."""
    text = path.read_text() if path.exists() else HEADER
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    text = (
        pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    )
    path.write_text(text)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
