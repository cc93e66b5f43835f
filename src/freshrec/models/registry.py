"""Models by name, with the defaults every benchmark and the CLI use (the same on every data set).

A published version names its model and config (`model_spec`), and a server rebuilds the same model from
them (`create_model(name, config)`): the trainer is free to use a non-default config.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from typing import Any

from freshrec.errors import ConfigError
from freshrec.models.base import Recommender

#: The model `freshrec replay` uses without `--model`: the winner of `bench/quality.py` on MovieLens-100K
#: (see BENCHMARKS.md for the run that decided it).
BEST_MODEL = "blend"
#: The default of `freshrec train`, `demo` and `study`: the best model that keeps up with a live stream on
#: two cores shared with the server (co-occurrence learns at ~40k events/s, the blend at ~1-3k) and
#: whose daily retrains in the cadence study take seconds, not hours.
LIVE_MODEL = "cooccurrence"

#: Rows the registry's models reserve. Snapshots leave out free rows, but a server holds every model dense
#: over its capacity, so it is sized for a live demo's start-up, not for 10^6 items: pass a config with a
#: larger capacity for larger catalogues.
REGISTRY_CAPACITY = 100_000

Overrides = Mapping[str, Any]


def _popularity(overrides: Overrides, half_life_days: float | None = None) -> Recommender:
    from freshrec.models.popularity import PopularityConfig, PopularityModel

    defaults = PopularityConfig(half_life_days=half_life_days, capacity=REGISTRY_CAPACITY)
    return PopularityModel(configured(defaults, overrides))


def _cooccurrence(overrides: Overrides) -> Recommender:
    from freshrec.models.cooccurrence import CooccurrenceConfig, CooccurrenceModel

    return CooccurrenceModel(configured(CooccurrenceConfig(capacity=REGISTRY_CAPACITY), overrides))


def _bpr_mf(overrides: Overrides) -> Recommender:
    from freshrec.models.mf import BPRMatrixFactorization, MFConfig

    defaults = MFConfig(user_capacity=REGISTRY_CAPACITY, item_capacity=REGISTRY_CAPACITY)
    return BPRMatrixFactorization(configured(defaults, overrides))


def _rating_mf(overrides: Overrides) -> Recommender:
    from freshrec.models.rating import RatingConfig, RatingModel

    defaults = RatingConfig(user_capacity=REGISTRY_CAPACITY, item_capacity=REGISTRY_CAPACITY)
    return RatingModel(configured(defaults, overrides))


def _two_tower(overrides: Overrides) -> Recommender:
    from freshrec.models.twotower import TwoTowerConfig, TwoTowerModel

    defaults = TwoTowerConfig(user_capacity=REGISTRY_CAPACITY, item_capacity=REGISTRY_CAPACITY)
    return TwoTowerModel(configured(defaults, overrides))


def _sasrec(overrides: Overrides) -> Recommender:
    from freshrec.models.sasrec import SASRecConfig, SASRecModel

    return SASRecModel(configured(SASRecConfig(item_capacity=REGISTRY_CAPACITY), overrides))


def _blend(overrides: Overrides) -> Recommender:
    """Two-tower, SASRec, co-occurrence and decayed popularity, each with its registry defaults; `overrides`
    set the blend's own config."""
    from freshrec.models.blend import BlendConfig, BlendedModel

    names = ("two-tower", "sasrec", "cooccurrence", "popularity-decayed")
    return BlendedModel([create_model(name) for name in names], configured(BlendConfig(), overrides))


MODEL_FACTORIES: dict[str, Callable[[Overrides], Recommender]] = {
    "popularity": _popularity,
    "popularity-decayed": lambda overrides: _popularity(overrides, half_life_days=7.0),
    "cooccurrence": _cooccurrence,
    "bpr-mf": _bpr_mf,
    "rating-mf": _rating_mf,
    "two-tower": _two_tower,
    "sasrec": _sasrec,
    "blend": _blend,
}


def create_model(name: str, config: Overrides | None = None) -> Recommender:
    """A fresh model with its documented defaults, or with the fields of `config` replacing them.

    >>> create_model("popularity").name
    'popularity'
    >>> create_model("cooccurrence", {"max_neighbors": 8}).config.max_neighbors
    8
    """
    try:
        factory = MODEL_FACTORIES[name]
    except KeyError:
        known = ", ".join(MODEL_FACTORIES)
        raise ConfigError(f"--model: unknown model {name!r}; choose one of {known}") from None
    return factory(config or {})


def model_spec(name: str, model: Recommender) -> dict[str, Any]:
    """What a published version records so a server can rebuild `model`: its registry name and config.

    >>> spec = model_spec("cooccurrence", create_model("cooccurrence", {"max_neighbors": 8}))
    >>> spec["model"], spec["model_config"]["max_neighbors"]
    ('cooccurrence', 8)
    """
    config = getattr(model, "config", None)
    fields = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {}
    return {"model": name, "model_config": fields}


def configured(defaults: Any, overrides: Overrides) -> Any:
    """`defaults` (a config dataclass) with `overrides` replacing fields; JSON lists become the tuples the
    field declares. An unknown field is a `ConfigError` naming it and the known ones.

    >>> from freshrec.models.cooccurrence import CooccurrenceConfig
    >>> configured(CooccurrenceConfig(), {"history_length": 5}).history_length
    5
    """
    if not overrides:
        return defaults
    kind = type(defaults)
    fields = {field.name: field for field in dataclasses.fields(defaults)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ConfigError(
            f"{kind.__name__} has no field {', '.join(unknown)}; its fields are {', '.join(fields)}"
        )
    hints = typing.get_type_hints(kind)
    values = {}
    for name, value in overrides.items():
        declared = typing.get_origin(hints.get(name)) or hints.get(name)
        values[name] = tuple(value) if declared is tuple and isinstance(value, list) else value
    return dataclasses.replace(defaults, **values)
