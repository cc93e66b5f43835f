"""One self-contained HTML page of a run folder's figures: what `freshrec report RUN_DIR` writes.

It reads what the other commands wrote: the metrics JSON of `freshrec replay --metrics-json` (one file per
model compared) and the ``cadence.json`` of `freshrec study cadence`, and draws with matplotlib (Agg, no
display) PNG plots that the page carries inline as base64 ``data:`` URLs. The page must never reference
anything outside itself (no script, stylesheet, font or image by URL), so that it opens offline and can be
mailed as one file; every text taken from the inputs is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freshrec.errors import FreshrecError

__all__ = ["ReportError", "RunFiles", "find_run_files", "write_report"]

_HR_KEY = re.compile(r"^hr@(\d+)$")


class ReportError(FreshrecError):
    """The run folder holds nothing a report can show, or a file in it cannot be read."""


@dataclass
class RunFiles:
    """The figures found in a run folder: replay metrics by file, and cadence studies by file."""

    replays: dict[Path, dict[str, Any]]
    cadences: dict[Path, dict[str, Any]]


def _cutoff(metrics: dict[str, Any]) -> int | None:
    """K of a metrics object's ``hr@K`` key (None if it has none)."""
    for key in metrics:
        match = _HR_KEY.match(key)
        if match:
            return int(match.group(1))
    return None


def find_run_files(run_dir: Path) -> RunFiles:
    """Every replay metrics file (a JSON object with ``model`` and ``hr@K``) and cadence study
    (``cadences`` and ``windows``) under `run_dir`, or a single such file; other JSON files are passed
    over."""
    if not run_dir.exists():
        raise ReportError(f"{run_dir}: no such folder; give the folder a replay or a study wrote into")
    paths = sorted(run_dir.rglob("*.json")) if run_dir.is_dir() else [run_dir]
    replays: dict[Path, dict[str, Any]] = {}
    cadences: dict[Path, dict[str, Any]] = {}
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            if run_dir.is_file():
                raise ReportError(f"{path}: not a JSON file freshrec wrote ({error})") from None
            continue  # a folder may hold other files; only ours are reported
        if not isinstance(data, dict):
            continue
        if isinstance(data.get("cadences"), dict) and isinstance(data.get("windows"), dict):
            cadences[path] = data
        elif isinstance(data.get("model"), str) and _cutoff(data) is not None:
            replays[path] = data
    if not replays and not cadences:
        raise ReportError(
            f"{run_dir}: no metrics found; expected the JSON of `freshrec replay --metrics-json FILE` or the "
            "cadence.json of `freshrec study cadence --out DIR`"
        )
    return RunFiles(replays, cadences)


def _figure(width: float = 8.0, height: float = 4.0) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A Figure with its own Agg canvas, not pyplot: no global backend state, safe in any process.
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Any) -> str:
    """The figure as an ``<img>`` whose source is the PNG itself (a data URL)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{encoded}">'


def _label(path: Path, metrics: dict[str, Any], labels: Sequence[str]) -> str:
    """The model's name, with the file's name when two files hold the same model."""
    name = str(metrics["model"])
    return name if labels.count(name) == 1 else f"{name} ({path.stem})"


def _over_time(replays: dict[Path, dict[str, Any]], names: list[str], key: str) -> str | None:
    """HR@K (or NDCG@K) per stretch of the stream over event time, one line per file; over events for
    files written before replays recorded event times."""
    figure = _figure()
    axes = figure.add_subplot()
    drawn, by_time = 0, None
    for name, metrics in zip(names, replays.values(), strict=True):
        series = [p for p in metrics.get("series") or [] if isinstance(p, dict) and key in p and "time" in p]
        if series and by_time is not False:
            by_time = True
            times = [dt.datetime.fromtimestamp(float(p["time"]), dt.UTC) for p in series]
            axes.plot(times, [float(p[key]) for p in series], marker=".", label=name)
            drawn += 1
        elif metrics.get("windows") and by_time is not True:
            by_time = False
            windows = [w for w in metrics["windows"] if isinstance(w, dict) and key in w]
            ends = [sum(int(w["events"]) for w in windows[: i + 1]) for i in range(len(windows))]
            axes.plot(ends, [float(w[key]) for w in windows], marker=".", label=name)
            drawn += 1
    if not drawn:
        return None
    axes.set_xlabel("event time (UTC)" if by_time else "events evaluated")
    axes.set_ylabel(key.upper())
    axes.set_title(f"{key.upper()} over the stream (each point: the events since the previous one)")
    axes.set_ylim(bottom=0.0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    if by_time:
        figure.autofmt_xdate()
    return _png(figure)


def _comparison(replays: dict[Path, dict[str, Any]], names: list[str], k: int) -> str:
    """HR@K and NDCG@K of every file, side by side."""
    import numpy as np

    figure = _figure(max(6.0, 1.2 * len(names) + 3.0), 4.0)
    axes = figure.add_subplot()
    x = np.arange(len(names))
    for offset, key in ((-0.2, f"hr@{k}"), (0.2, f"ndcg@{k}")):
        values = [float(m.get(key) or 0.0) for m in replays.values()]
        bars = axes.bar(x + offset, values, width=0.4, label=key.upper())
        axes.bar_label(bars, fmt="%.4f", fontsize="small")
    axes.set_xticks(x, names, rotation=20 if len(names) > 3 else 0)
    axes.set_title("Model comparison over the whole stream")
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3, axis="y")
    return _png(figure)


def _cadence_plot(study: dict[str, Any]) -> str | None:
    windows = study["windows"]
    days, rates = windows.get("days") or [], windows.get("hr") or {}
    if not days or not isinstance(rates, dict):
        return None
    figure = _figure()
    axes = figure.add_subplot()
    for cadence, values in rates.items():
        label = study["cadences"].get(cadence, {}).get("label", cadence)
        axes.plot(days[: len(values)], values, label=str(label))
    axes.set_xlabel("event time (days since the first event)")
    axes.set_ylabel("HR per window")
    axes.set_title(f"Update cadence: {study.get('source', '')}, {study.get('model', '')}")
    axes.set_ylim(bottom=0.0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _png(figure)


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_number(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 1em 0; }
"""


def _replay_section(replays: dict[Path, dict[str, Any]]) -> list[str]:
    labels = [str(m["model"]) for m in replays.values()]
    names = [_label(path, m, labels) for path, m in replays.items()]
    k = _cutoff(next(iter(replays.values()))) or 10
    keys = [f"hr@{k}", f"ndcg@{k}", f"hr@{k}_last20", f"ndcg@{k}_last20"]
    counts = ["events_read", "events_accepted", "events_rejected", "events_duplicate", "events_per_second"]
    rows = [
        [name, path.name, *(m.get(key) for key in keys + counts)]
        for name, (path, m) in zip(names, replays.items(), strict=True)
    ]
    parts = ["<h2>Replays</h2>", _table(["model", "file", *keys, *counts], rows)]
    for key in (f"hr@{k}", f"ndcg@{k}"):
        plot = _over_time(replays, names, key)
        if plot:
            parts.append(plot)
    if len(replays) > 1:
        parts.append(_comparison(replays, names, k))
    return parts


def _cadence_section(path: Path, study: dict[str, Any]) -> list[str]:
    rows = []
    for cadence, figures in study["cadences"].items():
        hr = next((v for key, v in figures.items() if _HR_KEY.match(key)), None)
        rows.append([figures.get("label", cadence), hr, figures.get("refreshes")])
    title = f"Cadence study: {study.get('source', '')}, {study.get('model', '')} ({path.name})"
    parts = [f"<h2>{html.escape(title)}</h2>", _table(["cadence", "HR", "refreshes"], rows)]
    plot = _cadence_plot(study)
    if plot:
        parts.append(plot)
    return parts


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the report of `run_dir` to `out` (default: ``report.html`` in the folder) and return its path."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ReportError("freshrec report draws with matplotlib: `pip install matplotlib`") from error
    files = find_run_files(run_dir)
    parts: list[str] = []
    if files.replays:
        parts += _replay_section(files.replays)
    for path, study in files.cadences.items():
        parts += _cadence_section(path, study)
    target = out if out is not None else (run_dir if run_dir.is_dir() else run_dir.parent) / "report.html"
    created = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>freshrec report: {html.escape(str(run_dir))}</title><style>{_STYLE}</style></head><body>"
        f"<h1>freshrec report</h1><p>{html.escape(str(run_dir))}, written {created}</p>"
        + "\n".join(parts)
        + "</body></html>\n"
    )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page, encoding="utf-8")
    except OSError as error:
        raise ReportError(f"{target}: cannot write the report ({error.strerror or error})") from None
    return target
