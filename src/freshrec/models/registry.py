"""Models by name, with the defaults every benchmark and the CLI use (the same on every data set)."""

from __future__ import annotations

from collections.abc import Callable

from freshrec.errors import ConfigError
from freshrec.models.base import Recommender

#: The model `freshrec replay` uses without `--model`: the winner of `bench/quality.py` on MovieLens-100K
#: (see BENCHMARKS.md for the run that decided it).
BEST_MODEL = "cooccurrence"


def _popularity() -> Recommender:
    from freshrec.models.popularity import PopularityConfig, PopularityModel

    return PopularityModel(PopularityConfig(capacity=REGISTRY_CAPACITY))


def _popularity_decayed() -> Recommender:
    from freshrec.models.popularity import PopularityConfig, PopularityModel

    return PopularityModel(PopularityConfig(half_life_days=7.0, capacity=REGISTRY_CAPACITY))


#: Rows the registry's models reserve. Published snapshots are dense over this capacity (a co-occurrence
#: item row is ~1.2 kB), so it is sized for a live demo's start-up and publish times, not for 10^6 items:
#: build the model with its own config for larger catalogues.
REGISTRY_CAPACITY = 100_000


def _cooccurrence() -> Recommender:
    from freshrec.models.cooccurrence import CooccurrenceConfig, CooccurrenceModel

    return CooccurrenceModel(CooccurrenceConfig(capacity=REGISTRY_CAPACITY))


def _bpr_mf() -> Recommender:
    from freshrec.models.mf import BPRMatrixFactorization, MFConfig

    return BPRMatrixFactorization(MFConfig(user_capacity=REGISTRY_CAPACITY, item_capacity=REGISTRY_CAPACITY))


MODEL_FACTORIES: dict[str, Callable[[], Recommender]] = {
    "popularity": _popularity,
    "popularity-decayed": _popularity_decayed,
    "cooccurrence": _cooccurrence,
    "bpr-mf": _bpr_mf,
}


def create_model(name: str) -> Recommender:
    """A fresh model with its documented defaults.

    >>> create_model("popularity").name
    'popularity'
    """
    try:
        factory = MODEL_FACTORIES[name]
    except KeyError:
        known = ", ".join(MODEL_FACTORIES)
        raise ConfigError(f"--model: unknown model {name!r}; choose one of {known}") from None
    return factory()
