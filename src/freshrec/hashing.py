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
