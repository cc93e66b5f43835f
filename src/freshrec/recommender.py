"""The library API: a recommender that learns from events and answers in this process, the way River's
estimators are used, built on the same pipeline, feature state, trainer and models as every command.

>>> import freshrec
>>> rec = freshrec.Recommender("cooccurrence", batch_size=64)
>>> report = rec.learn([
...     {"user_id": "ann", "item_id": "tea", "timestamp": "2024-05-01T08:00:00Z"},
...     {"user_id": "ann", "item_id": "cake", "timestamp": "2024-05-01T08:01:00Z"},
...     {"user_id": "bob", "item_id": "tea", "timestamp": 1714551000},
...     {"user_id": "bob", "item_id": "", "timestamp": 1714551060},
... ])
>>> report.accepted, report.rejected, report.rejections[0].field
(3, 1, 'item_id')
>>> [item for item, score in rec.recommend("bob", k=3)]  # bob had tea: people who had tea had cake
['cake']
>>> rec.recommend("nobody", k=2)  # doctest: +ELLIPSIS
[('tea', ...), ('cake', ...)]

Everything that changes an answer or the next step is saved, with no pickle anywhere (safetensors for
arrays, TOML, JSON and Arrow for the rest): parameters and optimizer state, feature state (histories, seen
items, catalogue, negative sampler), deduplication state and the raw-id map.

>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> rec.save(folder)
>>> again = freshrec.Recommender.load(folder)
>>> again.recommend("bob", k=3) == rec.recommend("bob", k=3)
True
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc

from freshrec import __version__
from freshrec.durable import write_atomically
from freshrec.errors import ConfigError
from freshrec.events import EventBatch
from freshrec.model_state import State
from freshrec.models.registry import LIVE_MODEL, ModelSpec
from freshrec.preprocess.encode import IdEncoder
from freshrec.preprocess.pipeline import IngestedBatch, IngestPipeline
from freshrec.preprocess.validate import Rejection
from freshrec.serving.ranking import top_items
from freshrec.serving.runtime import user_key_of
from freshrec.settings import Settings, load_settings
from freshrec.sources.memory import table_batch, to_arrow
from freshrec.training.loop import TrainingLoop
from freshrec.training.online import OnlineTrainer

__all__ = ["LearnReport", "Recommender"]

#: Files of a saved recommender (in its directory); `FORMAT` changes when their meaning does.
FORMAT = 1
_FILES = {
    "settings": "settings.toml",
    "model": "model.safetensors",
    "trainer": "trainer.safetensors",
    "pipeline": "pipeline.safetensors",
    "item_ids": "item_ids.arrow",
    "meta": "recommender.json",
}
#: Raw item ids the library remembers to answer with (the least recently seen are forgotten first).
ITEM_IDS = 1_000_000


@dataclass
class LearnReport:
    """What one `Recommender.learn` call took in.

    Attributes
    ----------
    accepted
        Records that were valid events (repeats included).
    rejected
        Records rejected, each with its reason in `rejections`.
    duplicates
        Accepted events dropped because an earlier one had the same ``event_id``.
    learned
        Events learned (accepted minus duplicates).
    """

    accepted: int
    rejected: int
    duplicates: int
    learned: int
    rejections: list[Rejection] = field(default_factory=list)


class Recommender:
    """A registered model with the live feature state around it, learning in this process.

    Parameters
    ----------
    model
        A registry name (``"cooccurrence"``, ``"two-tower"``, ``"blend"``...; `freshrec.models.registry`).
    settings
        A whole configuration (`freshrec.settings.Settings`) or a TOML file's path; its model is used
        unless `model` names another.
    overrides
        Settings by name: fields of the trainer (``batch_size``, ``negatives``, ``evaluate``, ``k``...)
        and of the model's config (``dim``, ``items={"capacity": 50_000}``...).

    Events are learned in micro-batches of the trainer's ``batch_size`` (a call with fewer events learns
    them as one smaller batch); ``evaluate=True`` ranks every event before learning it, as a replay does
    (`metrics`). Answers are computed at the time of the latest event learned, never the wall clock: a
    replayed history and a live stream behave the same.
    """

    def __init__(
        self, model: str | None = None, *, settings: Settings | str | Path | None = None, **overrides: Any
    ) -> None:
        if isinstance(settings, Settings):
            base = settings
        else:
            path = Path(settings) if settings is not None else None
            base = load_settings(path, default_model=model or LIVE_MODEL)
            if settings is None and "evaluate" not in overrides:
                # Ranking every event costs a pass over the catalogue: the library does it when asked.
                overrides = {**overrides, "evaluate": False}
        self.settings = _with_overrides(base, model, overrides)
        self._build()

    def _build(self) -> None:
        settings = self.settings
        self.model = settings.model.build()
        trainer_config = settings.trainer
        # The catalogue and seen items are kept whether or not events are ranked: `recommend` needs them.
        features = trainer_config.features(self.model, rankable=True)
        self.trainer = OnlineTrainer(self.model, trainer_config, features=features)
        pipeline = settings.pipeline
        if pipeline.item_ids == 0:
            pipeline = _replace(pipeline, item_ids=ITEM_IDS)
        self.pipeline = IngestPipeline(pipeline, source="library")
        self._loop = TrainingLoop(self.trainer, self.pipeline)
        self._records = 0  # records taken in: positions and the names of events without an id
        self._now = float("-inf")

    # ------------------------------------------------------------------ learning
    def learn(self, events: Any, columns: str | None = None) -> LearnReport:
        """Learn from a batch of events: a list of dicts (keys ``user_id``, ``item_id``, ``timestamp``,
        optional ``event_id``, ``kind``, ``value`` and context fields), a pyarrow table or pandas DataFrame
        (``columns`` maps their column names as ``"user=COL,item=COL,time=COL"`` when they are not the
        canonical ones), or an `EventBatch`. Times are ISO 8601 text or epoch seconds. Bad records are
        rejected with their reasons and never stop the call.
        """
        if isinstance(events, EventBatch):
            ingested = self._loop.feed_events(events)
        elif (table := to_arrow(events)) is not None:
            ingested = self._loop.feed(table_batch(table, columns, "library", self._records))
        elif isinstance(events, Sequence) and not isinstance(events, str | bytes):
            ingested = self._feed_records(list(events))
        else:
            raise ConfigError(
                f"learn takes a list of dicts, a pyarrow table, a pandas DataFrame or an EventBatch, got "
                f"{type(events).__name__}"
            )
        return self._report(ingested)

    def learn_one(self, event: Mapping[str, Any]) -> LearnReport:
        """Learn from one event (a dict, as in `learn`), at once."""
        return self.learn([event])

    def _feed_records(self, records: list[Any]) -> IngestedBatch:
        named = []
        for offset, record in enumerate(records):
            if isinstance(record, Mapping) and "event_id" not in record:
                record = {**record, "event_id": f"library:{self._records + offset}"}
            named.append(record)
        ingested = self.pipeline.process_records(named, self._records)
        self._loop.learn(ingested)
        return ingested

    def _report(self, ingested: IngestedBatch) -> LearnReport:
        self._records += ingested.read
        events = ingested.events
        if len(events):
            self._now = max(self._now, float(events.timestamps.max()))
        return LearnReport(
            accepted=ingested.accepted,
            rejected=len(ingested.rejections),
            duplicates=ingested.duplicates,
            learned=len(events),
            rejections=list(ingested.rejections),
        )

    # ------------------------------------------------------------------ answering
    def recommend(
        self, user_id: str | int, k: int = 10, exclude_seen: bool = True
    ) -> list[tuple[Any, float]]:
        """The `k` best items for a user as ``(raw item id, score)``, best first: items the user already
        acted on are left out (unless `exclude_seen` is False), and a user never seen gets the model's
        cold-start fallback."""
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        features = self.trainer.features
        assert features.catalogue is not None
        key = user_key_of(user_id)
        now = self._now if np.isfinite(self._now) else 0.0
        query = features.query(key, np.array([now]), length=self.model.history_length)
        seen = features.seen_items(int(key[0])) if exclude_seen else np.zeros(0, np.uint64)
        keys, scores = top_items(self.model, query, features.catalogue, seen, k)
        raw = self.pipeline.raw_item_ids(keys)
        return [(item, float(score)) for item, score in zip(raw.tolist(), scores.tolist(), strict=True)]

    @property
    def metrics(self) -> dict[str, float]:
        """Prequential HR@K / NDCG@K over what was learned with ``evaluate=True`` (zeros otherwise)."""
        summary = self.trainer.evaluator.summary()
        k = self.settings.trainer.k
        return {"events": summary.events, f"hr@{k}": summary.hr, f"ndcg@{k}": summary.ndcg}

    # ------------------------------------------------------------------ saving
    def save(self, directory: str | Path) -> None:
        """Write everything that changes an answer or the next step into `directory` (created; files
        already there are replaced one by one, each atomically)."""
        from safetensors.numpy import save as save_tensors

        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder / _FILES["settings"], self.settings.as_toml().encode())
        write_atomically(folder / _FILES["model"], save_tensors(_contiguous(self.model.state_dict())))
        write_atomically(folder / _FILES["trainer"], save_tensors(_contiguous(self.trainer.state_dict())))
        write_atomically(folder / _FILES["pipeline"], save_tensors(_contiguous(self.pipeline.state_dict())))
        assert self.pipeline.item_ids is not None
        sink = pa.BufferOutputStream()
        table = self.pipeline.item_ids.to_arrow()
        with pyarrow.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        write_atomically(folder / _FILES["item_ids"], sink.getvalue().to_pybytes())
        meta = {"format": FORMAT, "freshrec": __version__, "records": self._records, "now": self._now}
        write_atomically(folder / _FILES["meta"], json.dumps(meta, allow_nan=True).encode())

    @classmethod
    def load(cls, directory: str | Path) -> Recommender:
        """The recommender `save` wrote: the same answers, and the same further learning."""
        from safetensors.numpy import load as load_tensors

        folder = Path(directory)
        missing = [name for name in _FILES.values() if not (folder / name).is_file()]
        if missing:
            raise ConfigError(f"{folder}: not a saved freshrec recommender (missing {', '.join(missing)})")
        meta = json.loads((folder / _FILES["meta"]).read_text())
        if meta.get("format") != FORMAT:
            raise ConfigError(f"{folder}: saved in format {meta.get('format')}, this freshrec reads {FORMAT}")
        rec = cls(settings=folder / _FILES["settings"])
        rec.model.load_state_dict(load_tensors((folder / _FILES["model"]).read_bytes()))
        rec.trainer.load_state_dict(load_tensors((folder / _FILES["trainer"]).read_bytes()))
        rec.pipeline.load_state_dict(load_tensors((folder / _FILES["pipeline"]).read_bytes()))
        with pyarrow.ipc.open_file(pa.BufferReader((folder / _FILES["item_ids"]).read_bytes())) as reader:
            rec.pipeline.item_ids = IdEncoder.from_arrow(reader.read_all(), rec.pipeline.config.item_ids)
        rec._records, rec._now = int(meta["records"]), float(meta["now"])
        return rec

    def __repr__(self) -> str:
        return f"Recommender({self.settings.model.name!r}, events learned {self.trainer.totals.events:,})"


def _with_overrides(base: Settings, model: str | None, overrides: Mapping[str, Any]) -> Settings:
    """`base` with `model` and the overrides applied: trainer fields to the trainer, the rest to the model."""
    from freshrec.config import as_plain, known_keys, parse
    from freshrec.training.online import TrainerConfig

    trainer_keys = set(known_keys(TrainerConfig))
    trainer = {key: value for key, value in overrides.items() if key in trainer_keys}
    model_overrides = {key: value for key, value in overrides.items() if key not in trainer_keys}
    name = model or base.model.name
    spec = base.model
    if name != spec.name or model_overrides:
        current = spec.as_dict() if name == spec.name else {}
        current.pop("name", None)
        spec = ModelSpec.of(name, {**current, **model_overrides}, "Recommender", "model")
    trainer_config = base.trainer
    if trainer:
        trainer_config = parse(TrainerConfig, {**as_plain(base.trainer), **trainer}, "Recommender", "trainer")
    return base.replace(model=spec, trainer=trainer_config)


def _replace(config: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(config, **changes)


def _contiguous(state: State) -> State:
    return {name: np.ascontiguousarray(array) for name, array in state.items()}
