"""Item-side categorical features (genres, categories, tags): item key -> a few feature indices.

A model that reads item features (the two-tower item tower) asks for a padded ``[C, F]`` array of feature
indices and a mask for C candidate items at once; the lookup is one `np.searchsorted` over the sorted item
keys, never a loop per item. The table is keyed by the uint64 keys the models see
(`freshrec.preprocess.encode.encode_ids` of the raw item id), holds at most `max_per_item` features per item
and `max_features` distinct feature values, and is immutable once built. Items it does not know have no
features (an all-False mask), never an error. It must never change after construction: a model's item
vectors, and therefore published versions, depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from freshrec.errors import ConfigError
from freshrec.keyindex import as_keys
from freshrec.preprocess.encode import encode_ids

__all__ = ["ItemFeatureLookup", "ItemFeatureTable"]

#: The feature index that pads rows: no feature. Real features are ``1..num_features - 1``.
NO_FEATURE = 0


@dataclass
class ItemFeatureLookup:
    """Features of C items, padded to F columns.

    Attributes
    ----------
    indices
        int64 [C, F], feature indices in ``[1, num_features)``; `NO_FEATURE` (0) where the mask is False.
    mask
        bool [C, F], True where the entry is a real feature.
    """

    indices: np.ndarray
    mask: np.ndarray


class ItemFeatureTable:
    """An immutable map from item keys to up to F categorical feature indices.

    Parameters
    ----------
    item_keys
        uint64 [n], distinct item keys (`encode_ids` of the raw ids).
    features
        int64 [n, F], each item's feature indices, `NO_FEATURE` (0) padding; ``F >= 1``.
    vocabulary
        Names of the features 1..V (index i is ``vocabulary[i - 1]``), for reading results and checking
        that two tables agree.

    Build it with `from_arrow` (any table with an id column and a list column, e.g.
    `freshrec.sources.movielens.load_movielens_100k_items`).

    >>> table = ItemFeatureTable.from_arrow(
    ...     pa.table({"item_id": [1, 2], "genres": [["Comedy", "Drama"], ["Drama"]]}), "genres")
    >>> table.vocabulary, table.num_features, table.width
    (['Comedy', 'Drama'], 3, 2)
    >>> found = table.lookup(encode_ids(np.array([2, 1, 99])))
    >>> found.indices.tolist(), found.mask.tolist()
    ([[2, 0], [1, 2], [0, 0]], [[True, False], [True, True], [False, False]])
    """

    def __init__(self, item_keys: np.ndarray, features: np.ndarray, vocabulary: list[str]) -> None:
        keys = as_keys(item_keys, "item_keys")
        features = np.asarray(features, dtype=np.int64)
        if features.ndim != 2 or features.shape[0] != len(keys) or features.shape[1] < 1:
            raise ConfigError(
                f"features must be [n_items, F] with F >= 1 and n_items = len(item_keys) = {len(keys)}, got "
                f"shape {features.shape}"
            )
        if len(features) and (features.min() < 0 or features.max() > len(vocabulary)):
            raise ConfigError(
                f"features must lie in [0, {len(vocabulary)}] (0 pads, 1..V index the vocabulary), got "
                f"values in [{features.min()}, {features.max()}]"
            )
        order = np.argsort(keys, kind="stable")
        self._keys = keys[order]
        if len(self._keys) > 1 and (np.diff(self._keys) == 0).any():
            raise ConfigError("item_keys holds the same key twice; pass each item once")
        self._features = features[order]
        self.vocabulary = list(vocabulary)

    @classmethod
    def from_arrow(
        cls,
        table: pa.Table,
        feature_column: str,
        id_column: str = "item_id",
        max_per_item: int = 8,
        max_features: int = 10_000,
    ) -> ItemFeatureTable:
        """Build from an arrow table with an id column and a list (of strings or integers) column.

        Parameters
        ----------
        table
            One row per item, e.g. ``item_id, title, genres`` from `load_movielens_100k_items`.
        feature_column
            The list column whose values are the item's features (``"genres"``).
        id_column
            The raw item id column (encoded with `encode_ids`, as the trainer does).
        max_per_item
            F: features kept per item (the first F of its list, in list order; duplicates within a list
            are kept once).
        max_features
            Most distinct feature values kept (the most frequent, ties by value); the rest are dropped.
            The vocabulary is the kept values sorted, so the same table always gives the same indices.

        If an item id appears in several rows, the last row wins.
        """
        for name in (id_column, feature_column):
            if name not in table.column_names:
                raise ConfigError(
                    f"column {name!r} not in the items table (columns: {table.column_names}); pass "
                    "id_column / feature_column naming an id column and a list column"
                )
        if max_per_item < 1 or max_features < 1:
            raise ConfigError(
                f"max_per_item and max_features must be >= 1, got {max_per_item} and {max_features}"
            )
        lists = table.column(feature_column).combine_chunks()
        if not pa.types.is_list(lists.type) and not pa.types.is_large_list(lists.type):
            raise ConfigError(
                f"column {feature_column!r} must be a list column (e.g. list<string>), got {lists.type}"
            )
        ids = table.column(id_column).to_numpy(zero_copy_only=False)
        keys = encode_ids(ids if ids.dtype.kind in "iu" else ids.astype(object))
        # Last row of each id wins: keep the first occurrence in reversed order.
        _, first_in_reverse = np.unique(keys[::-1], return_index=True)
        keep_rows = np.sort(len(keys) - 1 - first_in_reverse)

        lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        values = pc.list_flatten(lists)  # nulls lists contribute nothing
        row_of_value = np.repeat(np.arange(len(lengths)), lengths)
        valid = ~values.is_null().to_numpy(zero_copy_only=False)
        # Integers and strings alike become names (in arrow: a null among integers would make numpy floats).
        names = values.filter(pa.array(valid)).cast(pa.string())
        raw_values = np.asarray(names.to_numpy(zero_copy_only=False), dtype=str)
        row_of_value = row_of_value[valid]

        vocabulary, codes, counts = np.unique(raw_values, return_inverse=True, return_counts=True)
        if len(vocabulary) > max_features:
            # most frequent first, ties by value (np.unique sorted them); then back into value order
            kept = np.sort(np.lexsort((np.arange(len(vocabulary)), -counts))[:max_features])
            new_code = np.full(len(vocabulary), -1, dtype=np.int64)
            new_code[kept] = np.arange(len(kept))
            codes = new_code[codes]
            vocabulary = vocabulary[kept]
            row_of_value, codes = row_of_value[codes >= 0], codes[codes >= 0]

        # One entry per (row, feature), in list order; then position within the row.
        pair = row_of_value * (len(vocabulary) + 1) + codes
        _, first = np.unique(pair, return_index=True)
        first = np.sort(first)
        row_of_value, codes = row_of_value[first], codes[first]
        starts = np.searchsorted(row_of_value, np.arange(len(lengths)))
        position = np.arange(len(row_of_value)) - starts[row_of_value]
        fits = position < max_per_item
        width = int(min(max_per_item, max(1, int(position.max()) + 1 if len(position) else 1)))
        features = np.zeros((len(lengths), width), dtype=np.int64)
        features[row_of_value[fits], position[fits]] = codes[fits] + 1
        return cls(keys[keep_rows], features[keep_rows], [str(v) for v in vocabulary])

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self._keys)

    @property
    def num_features(self) -> int:
        """Size of an embedding table over the features: the vocabulary plus the padding index 0."""
        return len(self.vocabulary) + 1

    @property
    def width(self) -> int:
        """F, the columns of every lookup."""
        return self._features.shape[1]

    @property
    def nbytes(self) -> int:
        return int(self._keys.nbytes + self._features.nbytes)

    def lookup(self, item_keys: np.ndarray) -> ItemFeatureLookup:
        """Features of each key, [C, F] indices and mask; unknown keys (and key 0) get none."""
        keys = as_keys(item_keys, "item_keys")
        if len(self._keys) == 0:
            shape = (len(keys), self.width)
            return ItemFeatureLookup(np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=bool))
        position = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        found = self._keys[position] == keys
        indices = np.where(found[:, None], self._features[position], NO_FEATURE)
        return ItemFeatureLookup(indices, indices != NO_FEATURE)

    def names(self, indices: np.ndarray) -> list[list[str]]:
        """The feature names of a lookup's rows (for reading results, not the hot path)."""
        return [[self.vocabulary[i - 1] for i in row if i != NO_FEATURE] for row in np.asarray(indices)]

    def fingerprint(self) -> int:
        """A 64-bit hash of the keys, features and vocabulary: equal tables, equal fingerprints. A model
        stores it in its state so that a state is never loaded next to a different feature table."""
        digest = xxhash.xxh64()
        digest.update(self._keys.tobytes())
        digest.update(np.ascontiguousarray(self._features).tobytes())
        digest.update("\x00".join(self.vocabulary).encode())
        return digest.intdigest()
