"""The item feature table: lookups return exactly each item's (bounded) features, unknown items none."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.errors import ConfigError
from freshrec.features.items import NO_FEATURE, ItemFeatureTable
from freshrec.preprocess.encode import encode_ids

NAMES = ["a", "b", "c", "d", "e", "f"]


@settings(max_examples=60, deadline=None)
@given(
    catalogue=st.dictionaries(
        st.integers(1, 10_000), st.lists(st.sampled_from(NAMES), max_size=6), min_size=0, max_size=30
    ),
    unknown=st.lists(st.integers(10_001, 20_000), max_size=5),
    max_per_item=st.integers(1, 4),
)
def test_lookup_returns_each_items_first_distinct_features(
    catalogue: dict[int, list[str]], unknown: list[int], max_per_item: int
) -> None:
    ids = list(catalogue)
    table = ItemFeatureTable.from_arrow(
        pa.table(
            {
                "item_id": pa.array(ids, pa.int64()),
                "tags": pa.array(list(catalogue.values()), pa.list_(pa.string())),
            }
        ),
        "tags",
        max_per_item=max_per_item,
    )
    used = sorted({name for names in catalogue.values() for name in names})
    assert table.vocabulary == used
    assert table.num_features == len(used) + 1
    assert 1 <= table.width <= max_per_item

    queried = ids + unknown
    rng = np.random.default_rng(len(queried))
    queried = [queried[i] for i in rng.permutation(len(queried))]
    found = table.lookup(encode_ids(np.array(queried, dtype=np.int64)))
    assert found.indices.shape == found.mask.shape == (len(queried), table.width)
    assert np.array_equal(found.mask, found.indices != NO_FEATURE)
    for row, item in enumerate(queried):
        expected = list(dict.fromkeys(catalogue.get(item, [])))[:max_per_item]  # distinct, in list order
        got = found.indices[row][found.mask[row]]
        assert [table.vocabulary[i - 1] for i in got] == expected
        # features are packed to the left: the mask is a prefix
        assert found.mask[row].tolist() == [True] * len(expected) + [False] * (table.width - len(expected))


def test_vocabulary_keeps_the_most_frequent_features_and_the_last_row_of_a_repeated_id() -> None:
    table = ItemFeatureTable.from_arrow(
        pa.table(
            {
                "item_id": [1, 2, 3, 1],
                "genres": [["rare"], ["x", "y"], ["y", "x", "rare2"], ["x"]],
            }
        ),
        "genres",
        max_features=2,
    )
    assert table.vocabulary == ["x", "y"]  # "rare" and "rare2" occur once each, x and y three / two times
    assert len(table) == 3
    found = table.lookup(encode_ids(np.array([1, 2, 3])))
    assert table.names(found.indices) == [["x"], ["x", "y"], ["y", "x"]]


def test_integer_features_nulls_and_unknown_items() -> None:
    table = ItemFeatureTable.from_arrow(
        pa.table(
            {"item_id": ["m1", "m2", "m3"], "cats": pa.array([[7, 3], None, [3, None]], pa.list_(pa.int64()))}
        ),
        "cats",
    )
    found = table.lookup(encode_ids(["m1", "m2", "m3", "zz"]))
    assert table.names(found.indices) == [["7", "3"], [], ["3"], []]
    assert found.mask.sum(axis=1).tolist() == [2, 0, 1, 0]
    empty = ItemFeatureTable.from_arrow(
        pa.table({"item_id": pa.array([], pa.int64()), "g": pa.array([], pa.list_(pa.string()))}), "g"
    )
    assert empty.lookup(encode_ids(np.array([5]))).mask.tolist() == [[False]]


def test_fingerprint_tells_tables_apart() -> None:
    def build(genres: list[list[str]]) -> ItemFeatureTable:
        return ItemFeatureTable.from_arrow(pa.table({"item_id": [1, 2], "genres": genres}), "genres")

    assert build([["a"], ["b"]]).fingerprint() == build([["a"], ["b"]]).fingerprint()
    assert build([["a"], ["b"]]).fingerprint() != build([["b"], ["a"]]).fingerprint()


def test_bad_columns_are_config_errors() -> None:
    table = pa.table({"item_id": [1], "title": ["x"], "genres": [["a"]]})
    with pytest.raises(ConfigError, match="'tags'"):
        ItemFeatureTable.from_arrow(table, "tags")
    with pytest.raises(ConfigError, match="list column"):
        ItemFeatureTable.from_arrow(table, "title")
    with pytest.raises(ConfigError, match="max_per_item"):
        ItemFeatureTable.from_arrow(table, "genres", max_per_item=0)
    with pytest.raises(ConfigError, match="same key twice"):
        ItemFeatureTable(encode_ids(np.array([1, 1])), np.ones((2, 1), dtype=np.int64), ["a"])


def test_movielens_genres(wheel) -> None:
    from freshrec.sources.movielens import load_movielens_100k_items

    table = ItemFeatureTable.from_arrow(load_movielens_100k_items(wheel), "genres")
    assert len(table) == 1682
    assert table.num_features == 20  # 19 genres (with "unknown") + padding
    found = table.lookup(encode_ids(np.array([1, 2, 99_999])))
    assert table.names(found.indices) == [
        ["Animation", "Children's", "Comedy"],
        ["Action", "Adventure", "Thriller"],
        [],
    ]
