"""Raw ids to 64-bit keys: freshrec.preprocess.encode."""

import numpy as np
import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from freshrec.interactions import NO_KEY
from freshrec.preprocess.encode import IdEncoder, decode_int_keys, encode_ids

int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def _objects(*values):
    column = np.empty(len(values), dtype=object)
    column[:] = list(values)
    return column


def test_keys_are_pinned() -> None:
    """Keys are persisted in checkpoints and published models: they must never change."""
    assert encode_ids(np.array([0, 1, -1])).tolist() == [
        16294208416658607535,
        10451216379200822465,
        16490336266968443936,
    ]
    assert encode_ids(["alice"]).tolist() == [xxhash.xxh64_intdigest(b"alice")]


def test_distinct_integers_never_collide_and_zero_is_never_a_key() -> None:
    ids = np.concatenate(
        [
            np.arange(-100_000, 100_000, dtype=np.int64),
            np.array([-(2**63), 2**63 - 1, 7046029254386353131], dtype=np.int64),  # the last one mixes to 0
        ]
    )
    keys = encode_ids(ids)
    assert keys.dtype == np.uint64
    assert len(np.unique(keys)) == len(ids)
    assert not (keys == NO_KEY).any()


def test_decimal_strings_are_the_integers_they_spell() -> None:
    ints = np.array([0, 42, -7, 2**63 - 1, -(2**63)], dtype=np.int64)
    texts = _objects(*[str(v) for v in ints.tolist()])
    assert (encode_ids(texts) == encode_ids(ints)).all()
    mixed = _objects(42, "42", np.int64(42), "042", " 42", "+42", "-0", "42.0")
    keys = encode_ids(mixed)
    assert keys[0] == keys[1] == keys[2]
    assert len(set(keys[3:].tolist()) | {int(keys[0])}) == 6  # non-canonical forms are other ids


def test_integers_beyond_int64_are_their_decimal_text() -> None:
    big = 2**64 + 5
    keys = encode_ids(_objects(big, str(big)))
    assert keys[0] == keys[1] == xxhash.xxh64_intdigest(str(big).encode())
    unsigned = np.array([2**64 - 1], dtype=np.uint64)
    assert encode_ids(unsigned)[0] == encode_ids(_objects(str(2**64 - 1)))[0]
    assert encode_ids(np.array([5], dtype=np.uint64))[0] == encode_ids(np.array([5]))[0]


def test_string_arrays_of_any_numpy_flavour() -> None:
    assert (encode_ids(np.array(["a", "7"])) == encode_ids(_objects("a", 7))).all()
    assert encode_ids(_objects("\ud800")).shape == (1,)  # lone surrogate from a JSON escape


def test_non_ids_are_refused() -> None:
    with pytest.raises(TypeError, match="ids must be integers or strings"):
        encode_ids(np.array([1.5]))
    with pytest.raises(TypeError, match="got bool True"):
        encode_ids(_objects("a", True))


@given(st.lists(int64s, max_size=50))
def test_decode_inverts_integer_keys(ids: list[int]) -> None:
    array = np.array(ids, dtype=np.int64)
    keys = encode_ids(array)
    decoded = decode_int_keys(keys)
    # The one integer that mixes to 0 shares its stand-in key with one other integer; all else inverts.
    shared = keys == encode_ids(np.array([7046029254386353131]))[0]
    assert (decoded[~shared] == array[~shared]).all()


@given(st.lists(int64s, max_size=50))
def test_ints_and_their_text_share_keys(ids: list[int]) -> None:
    assert (encode_ids(np.array(ids, dtype=np.int64)) == encode_ids(_objects(*[str(v) for v in ids]))).all()


def test_id_encoder_remembers_recent_ids_within_capacity() -> None:
    encoder = IdEncoder(capacity=3)
    keys = encoder.encode(_objects("a", "b", 7, "a"))
    assert encoder.raw_ids(keys).tolist() == ["a", "b", 7, "a"]
    more = encoder.encode(_objects("c", "b"))  # recency, oldest first: 7, a, c, b; 7 is dropped
    assert len(encoder) == 3
    assert encoder.raw_ids(keys[:3]).tolist() == ["a", "b", None]
    assert encoder.raw_ids(more).tolist() == ["c", "b"]
    assert encoder.raw_ids(encode_ids(["never"])).tolist() == [None]


def test_id_encoder_returns_python_ints() -> None:
    encoder = IdEncoder()
    keys = encoder.encode(np.array([5, 6], dtype=np.int64))
    raw = encoder.raw_ids(keys).tolist()
    assert raw == [5, 6] and all(type(v) is int for v in raw)
    with pytest.raises(ValueError):
        IdEncoder(capacity=0)
