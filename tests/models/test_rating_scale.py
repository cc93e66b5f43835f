"""A rating model learns ratings on its scale only: values off it (a price mapped to ``value``) are an
error naming the field, the scale and how many, before anything is learned."""

import numpy as np
import pytest

from freshrec.interactions import Interactions, Query
from freshrec.models.rating import RatingConfig, RatingModel, RatingScaleError


def _batch(values):
    n = len(values)
    query = Query.without_history(np.arange(1, n + 1, dtype=np.uint64), np.arange(float(n)))
    items = np.arange(10, 10 + n, dtype=np.uint64)
    kinds, negatives = np.full(n, 4, np.int8), np.zeros((n, 0), np.uint64)
    return Interactions(query, items, np.asarray(values, float), kinds, negatives)


def test_values_off_the_scale_are_refused_before_any_is_learned():
    model = RatingModel(RatingConfig(dim=4, user_capacity=16, item_capacity=16))
    with pytest.raises(RatingScaleError) as raised:
        model.learn(_batch([4.0, 113.9, 0.5, 3.0]))
    message = str(raised.value)
    assert message.startswith("value: 2 of 4 rated events")
    assert "[1, 5]" in message and "rating-mf" in message and "from 0.5 to 113.9" in message
    assert "model.min_rating" in message
    assert model.global_mean == 3.0 and len(model) == 0  # nothing learned


def test_ratings_on_the_scale_and_absent_values_are_learned():
    model = RatingModel(RatingConfig(dim=4, user_capacity=16, item_capacity=16, min_rating=0, max_rating=10))
    model.learn(_batch([0.0, 10.0, float("nan"), 7.5]))
    assert len(model) == 3
