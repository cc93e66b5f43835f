"""Exact top-k for one user: score every item of the catalogue, drop the user's seen items, keep the best.

What a server answers with for models without item vectors, and what the library API's `recommend` does.
Never changes the model or the catalogue.
"""

from __future__ import annotations

import numpy as np

from freshrec.features.catalogue import Catalogue
from freshrec.interactions import Query
from freshrec.models.base import Model

__all__ = ["top_items"]


def top_items(
    model: Model, query: Query, catalogue: Catalogue, exclude: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 keys, float64 scores) of the `k` best catalogue items for the query's one row, best first,
    ties in catalogue order; items in `exclude` never appear, and fewer than `k` come back when fewer are
    left.

    >>> from freshrec.models.popularity import PopularityModel
    >>> from freshrec.interactions import Interactions
    >>> model, catalogue = PopularityModel(), Catalogue()
    >>> items = np.array([5, 7, 5, 9], dtype=np.uint64)
    >>> catalogue.add(items).tolist()
    [0, 1, 3]
    >>> _ = model.learn(Interactions(Query.without_history(items, np.zeros(4)), items, np.full(4, np.nan),
    ...                              np.zeros(4, np.int8), items[:, None]))
    >>> keys, scores = top_items(model, Query.without_history(np.array([1], np.uint64), np.ones(1)),
    ...                          catalogue, np.array([9], np.uint64), k=5)
    >>> keys.tolist(), scores.tolist()
    ([5, 7], [2.0, 1.0])
    """
    candidates = catalogue.keys
    if len(candidates) == 0:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.float64)
    scores = model.score(query, candidates)[0].astype(np.float64)
    columns = catalogue.columns_of(exclude)  # a few lookups, not a pass over the catalogue
    scores[columns[columns >= 0]] = -np.inf
    eligible = int(np.isfinite(scores).sum())
    top = np.argsort(-scores, kind="stable")[: min(k, eligible)]
    return candidates[top], scores[top]
