"""The one 64-bit mixer every stage uses (id keys, hash-table placement, sketches, stateless randomness).

splitmix64's finaliser: a bijection on 64-bit words, so distinct inputs never collide, and fast in numpy.
"""

from __future__ import annotations

import numpy as np

GOLDEN_GAMMA = 0x9E3779B97F4A7C15
MULTIPLIER_1 = 0xBF58476D1CE4E5B9
MULTIPLIER_2 = 0x94D049BB133111EB
_M1, _M2 = np.uint64(MULTIPLIER_1), np.uint64(MULTIPLIER_2)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def mix64(keys: np.ndarray, seed: int = 0) -> np.ndarray:
    """The finaliser of ``key + seed * golden gamma``, as a new uint64 array; a bijection for each seed.

    Different seeds give independent-looking hash functions of the same keys (the count-min sketch uses one
    per row); ``seed=1`` is exactly splitmix64 of the key.

    >>> mix64(np.array([0, 1], dtype=np.uint64), seed=1).tolist()  # splitmix64's published first outputs
    [16294208416658607535, 10451216379200822465]
    """
    keys = np.asarray(keys, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = keys + np.uint64((seed * GOLDEN_GAMMA) & 0xFFFFFFFFFFFFFFFF) if seed else keys.copy()
        x ^= x >> _S30
        x *= _M1
        x ^= x >> _S27
        x *= _M2
        x ^= x >> _S31
    return x


_MASK64 = 0xFFFFFFFFFFFFFFFF


def mix64_int(key: int, seed: int = 0) -> int:
    """`mix64` of one key as a Python int: the same bijection without numpy's per-call overhead (~1 µs
    instead of ~20 µs), for lookups of a handful of keys on a request's path.

    >>> keys = [0, 1, 42, 2**63 + 5, 2**64 - 1]
    >>> [mix64_int(k, 3) for k in keys] == mix64(np.array(keys, dtype=np.uint64), seed=3).tolist()
    True
    """
    x = (key + seed * GOLDEN_GAMMA) & _MASK64
    x ^= x >> 30
    x = (x * MULTIPLIER_1) & _MASK64
    x ^= x >> 27
    x = (x * MULTIPLIER_2) & _MASK64
    return x ^ (x >> 31)
