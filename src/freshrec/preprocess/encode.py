"""Map raw ids (strings or integers) to 64-bit keys, vectorised, so every later stage works on uint64 arrays.

Integers go through a bijective 64-bit mixer (the splitmix64 finaliser after adding the golden-ratio
constant), so two distinct integer ids never share a key and keys of consecutive ids look random (good
hash-table slots). A string that is exactly the decimal form of an int64 (``"42"``, ``"-7"``; not ``"042"``
nor ``" 42"``) is that integer, so ``"42"`` and ``42`` get the same key, as `freshrec.events` promises.
Other strings are hashed with xxh64 (collisions among n strings: about n^2 / 2^65, e.g. 3e-8 for 1e6).
Key 0 is never returned: it is `freshrec.interactions.NO_KEY`.

This module never stores ids except in the bounded `IdEncoder`, and never changes its mapping between
versions: keys are persisted in checkpoints and published models.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from freshrec.hashing import GOLDEN_GAMMA, MULTIPLIER_1, MULTIPLIER_2, mix64, mix64_int
from freshrec.interactions import NO_KEY
from freshrec.timeparse import T_INT, T_STR, classify_column, text_array

__all__ = ["IdEncoder", "decode_int_keys", "encode_ids"]

_GAMMA = np.uint64(GOLDEN_GAMMA)
# Modular inverses of the mixer's multipliers (mod 2^64), to undo it.
_M1_INV = np.uint64(pow(MULTIPLIER_1, -1, 2**64))
_M2_INV = np.uint64(pow(MULTIPLIER_2, -1, 2**64))
# Where key 0 goes. Exactly one int64 mixes to 0 (7046029254386353131) and exactly one mixes to this
# constant; those two integers share a key, the only integer collision.
_ZERO_KEY_REPLACEMENT = np.uint64(0x5851F42D4C957F2D)
# Decimal forms of int64 values with at most 18 digits always fit; 19-digit ones are checked by Python.
_SHORT_DECIMAL = r"^(?:0|-?[1-9][0-9]{0,17})$"
_LONG_DECIMAL = r"^-?[1-9][0-9]{18}$"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def encode_ids(column: np.ndarray | Sequence[Any]) -> np.ndarray:
    """uint64 keys of raw ids (an int64 array, or an object/str array of strings and integers).

    >>> keys = encode_ids(np.array([42, 43, 0]))
    >>> keys.dtype, bool((keys != 0).all()), len(set(keys.tolist()))
    (dtype('uint64'), True, 3)
    >>> bool(encode_ids(np.array(["42"], dtype=object))[0] == keys[0])
    True
    >>> bool(encode_ids(["042"])[0] == keys[0])
    False
    """
    array = column if isinstance(column, np.ndarray) else np.asarray(column, dtype=object)
    kind = array.dtype.kind
    if kind == "i":
        return _mix_ints(array.astype(np.int64, copy=False).view(np.uint64))
    if kind == "u":
        if len(array) and array.max() > _INT64_MAX:  # beyond int64: the id's decimal text is the id
            return encode_ids(array.astype(object))
        return _mix_ints(array.astype(np.uint64, copy=False))
    if kind in "OUS":
        return _encode_objects(array)
    raise TypeError(f"ids must be integers or strings, got an array of {array.dtype}")


def decode_int_keys(keys: np.ndarray) -> np.ndarray:
    """The int64 ids whose keys these are, assuming they came from integer ids (the mixer is invertible).

    >>> decode_int_keys(encode_ids(np.array([-5, 0, 2**62]))).tolist()
    [-5, 0, 4611686018427387904]
    """
    z = np.asarray(keys, dtype=np.uint64).copy()
    z[z == _ZERO_KEY_REPLACEMENT] = 0  # ambiguous by construction; see _ZERO_KEY_REPLACEMENT
    with np.errstate(over="ignore"):
        z ^= (z >> np.uint64(31)) ^ (z >> np.uint64(62))
        z *= _M2_INV
        z ^= (z >> np.uint64(27)) ^ (z >> np.uint64(54))
        z *= _M1_INV
        z ^= (z >> np.uint64(30)) ^ (z >> np.uint64(60))
        z -= _GAMMA
    return z.view(np.int64)


class IdEncoder:
    """Encode ids and remember, for the most recently seen `capacity` keys, which raw id each key came from.

    Serving and debugging need the way back (key -> raw id); the forward direction needs no memory.
    Memory is bounded: beyond `capacity` keys, the least recently remembered key is forgotten.

    >>> encoder = IdEncoder(capacity=2)
    >>> keys = encoder.encode(np.array(["a", "b", "c"], dtype=object))
    >>> encoder.raw_ids(keys).tolist()
    [None, 'b', 'c']
    """

    def __init__(self, capacity: int = 1_000_000) -> None:
        if capacity < 1:
            raise ValueError(f"IdEncoder capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._raw: OrderedDict[int, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._raw)

    def encode(self, column: np.ndarray) -> np.ndarray:
        """`encode_ids` of `column`, remembering the raw ids."""
        keys = encode_ids(column)
        self.remember(column, keys)
        return keys

    def remember(self, raw_column: np.ndarray, keys: np.ndarray) -> None:
        """Remember that ``keys[i]`` is the key of ``raw_column[i]`` (most recent last)."""
        if not len(keys):
            return
        # Last occurrence of each key in the batch: reversed first occurrences.
        unique, first_reversed = np.unique(keys[::-1], return_index=True)
        rows = len(keys) - 1 - first_reversed
        order = np.argsort(rows, kind="stable")  # keep batch order, so recency follows the stream
        raw = self._raw
        values = np.asarray(raw_column, dtype=object)[rows[order]].tolist()
        for key, value in zip(unique[order].tolist(), values, strict=True):
            if key in raw:
                raw.move_to_end(key)
            raw[key] = value.item() if isinstance(value, np.generic) else value
        while len(raw) > self.capacity:
            raw.popitem(last=False)

    def raw_ids(self, keys: np.ndarray) -> np.ndarray:
        """The raw id of each key (object array), None where the key is unknown or forgotten."""
        get = self._raw.get
        return np.fromiter((get(k) for k in np.asarray(keys).tolist()), dtype=object, count=len(keys))

    def to_arrow(self) -> pa.Table:
        """The remembered ids, least recent first, as a table ``key`` (uint64), ``int_id`` and ``text_id``
        (UTF-8 bytes, lone surrogates kept; one of the two set per row): ids keep their type, no pickling.

        >>> encoder = IdEncoder()
        >>> _ = encoder.encode(np.array(["a", 7], dtype=object))
        >>> copy = IdEncoder.from_arrow(encoder.to_arrow())
        >>> copy.raw_ids(encode_ids(np.array([7, "a"], dtype=object))).tolist()
        [7, 'a']
        """
        keys = np.fromiter(self._raw.keys(), dtype=np.uint64, count=len(self._raw))
        values = list(self._raw.values())
        is_int = [type(v) is int for v in values]
        return pa.table(
            {
                "key": pa.array(keys, pa.uint64()),
                "int_id": pa.array(
                    [v if i else None for v, i in zip(values, is_int, strict=True)], pa.int64()
                ),
                "text_id": pa.array(
                    [
                        None if i else v.encode("utf-8", "surrogatepass")
                        for v, i in zip(values, is_int, strict=True)
                    ],
                    pa.binary(),
                ),
            }
        )

    @classmethod
    def from_arrow(cls, table: pa.Table, capacity: int = 1_000_000) -> IdEncoder:
        """An encoder remembering what `to_arrow` wrote (the most recent `capacity` of them)."""
        encoder = cls(capacity)
        keys = table.column("key").to_numpy().tolist()
        ints = table.column("int_id").to_pylist()
        texts = table.column("text_id").to_pylist()
        for key, number, text in zip(keys, ints, texts, strict=True):
            encoder._raw[key] = number if number is not None else text.decode("utf-8", "surrogatepass")
        while len(encoder._raw) > capacity:
            encoder._raw.popitem(last=False)
        return encoder


def encode_int(number: int) -> int:
    """`encode_ids` of one integer id of the int64 range, as a Python int, without the array machinery
    (~1 µs instead of ~60 µs: a request encodes one user id).

    >>> ids = [0, 1, -7, 2**62, -(2**63)]
    >>> [encode_int(i) for i in ids] == encode_ids(np.array(ids, dtype=np.int64)).tolist()
    True
    """
    return mix64_int(number & 0xFFFFFFFFFFFFFFFF, seed=1) or int(_ZERO_KEY_REPLACEMENT)


def _mix_ints(x: np.ndarray) -> np.ndarray:
    """splitmix64 (a bijection on 64-bit words), with key 0 moved off the reserved "no key"."""
    z = mix64(x, seed=1)
    z[z == NO_KEY] = _ZERO_KEY_REPLACEMENT
    return z


def _hash_strings(strings: Sequence[str]) -> np.ndarray:
    try:
        utf8 = list(map(str.encode, strings))
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape is still a distinct, hashable id
        utf8 = [text.encode("utf-8", "surrogatepass") for text in strings]
    keys = np.fromiter(map(xxhash.xxh64_intdigest, utf8), dtype=np.uint64, count=len(strings))
    keys[keys == NO_KEY] = _ZERO_KEY_REPLACEMENT
    return keys


def _encode_objects(column: np.ndarray) -> np.ndarray:
    values, types = classify_column(column)
    n = len(values)
    keys = np.empty(n, dtype=np.uint64)
    strings = np.flatnonzero(types == T_STR)
    ints = np.flatnonzero(types == T_INT)
    other = np.flatnonzero((types != T_STR) & (types != T_INT))
    if len(other):
        bad = values[int(other[0])]
        raise TypeError(f"ids must be integers or strings, got {type(bad).__name__} {bad!r}")
    if len(ints):
        int_values = [values[i] for i in ints.tolist()]
        fits = np.fromiter((_INT64_MIN <= v <= _INT64_MAX for v in int_values), dtype=bool, count=len(ints))
        if fits.all():
            keys[ints] = _mix_ints(np.array(int_values, dtype=np.int64).view(np.uint64))
        else:  # an integer beyond int64 is identified by its decimal text
            keys[ints] = [_encode_big_int(v) for v in int_values]
    if len(strings):
        texts = values if len(strings) == n else [values[i] for i in strings.tolist()]
        keys[strings] = _encode_strings(texts)
    return keys


def _encode_strings(texts: list[str]) -> np.ndarray:
    arrow = text_array(texts)
    decimal = _match(arrow, _SHORT_DECIMAL)
    keys = np.empty(len(texts), dtype=np.uint64)
    if decimal.any():
        idx = np.flatnonzero(decimal)
        numbers = arrow.take(pa.array(idx)).cast(pa.int64()).to_numpy(zero_copy_only=False)
        keys[idx] = _mix_ints(numbers.view(np.uint64))
    rest = np.flatnonzero(~decimal)
    if len(rest):
        everything = len(rest) == len(texts)
        long_decimal = _match(arrow if everything else arrow.take(pa.array(rest)), _LONG_DECIMAL)
        texts_rest = texts if everything else [texts[i] for i in rest.tolist()]
        keys[rest] = _hash_strings(texts_rest)
        for j in np.flatnonzero(long_decimal).tolist():
            value = int(texts_rest[j])
            if _INT64_MIN <= value <= _INT64_MAX:
                keys[rest[j]] = _mix_ints(np.array([value], dtype=np.int64).view(np.uint64))[0]
    return keys


def _encode_big_int(value: int) -> np.uint64:
    if _INT64_MIN <= value <= _INT64_MAX:
        return _mix_ints(np.array([value], dtype=np.int64).view(np.uint64))[0]
    return _hash_strings([str(value)])[0]


def _match(strings: pa.Array, pattern: str) -> np.ndarray:
    return pc.match_substring_regex(strings, pattern).fill_null(False).to_numpy(zero_copy_only=False)
