import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from freshrec.features.catalogue import Catalogue


@given(st.lists(st.lists(st.integers(1, 40), max_size=20), max_size=6))
def test_columns_follow_first_appearance(batches):
    catalogue = Catalogue()
    order: list[int] = []
    for batch in batches:
        keys = np.array(batch, dtype=np.uint64)
        first = catalogue.add(keys)
        new = [k for i, k in enumerate(batch) if k not in order and k not in batch[:i]]
        assert keys[first].tolist() == new
        order.extend(new)
    assert catalogue.keys.tolist() == order
    probe = np.array(order + [99], dtype=np.uint64)
    assert catalogue.columns_of(probe).tolist() == list(range(len(order))) + [-1]
