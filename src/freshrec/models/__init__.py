"""Recommender models behind one declared contract (`freshrec.models.base`): `Model` for every model,
`VectorModel` for those a server answers from an item index, `RatingPredictor` for explicit ratings.

The registry (`freshrec.models.registry`) knows each by name: popularity, decayed popularity,
co-occurrence, BPR matrix factorisation, rating MF, two-tower, SASRec and the online blend of several. A
model is one file (a config dataclass and a `Model` subclass) plus one `register` line; a `ModelSpec`
(name and full config) builds it, and a published version stores that spec. Models see only uint64 keys,
never raw ids, and never block on I/O.
"""

from freshrec.models.base import LearnStats, Model, RatingPredictor, Recommender, VectorModel

__all__ = ["LearnStats", "Model", "RatingPredictor", "Recommender", "VectorModel"]
