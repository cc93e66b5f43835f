"""Retention during a live run: a trainer that publishes delta after delta (what `freshrec train` does,
snapshotting only its first version) leaves at most `keep_versions` versions on disk, and each of them
still loads. Before the store compacted, every delta chained back to version 1's snapshot, retention could
drop no whole chain, and a 70 s demo kept 66 versions with keep_versions = 20."""

import numpy as np
import pytest

from freshrec.preprocess.validate import EventValidator
from freshrec.publishing.store import ModelStore, StoreConfig
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream


def _batches(n: int):
    stream = SyntheticStream(SyntheticConfig(n_events=n, n_users=200, n_items=300, seed=3))
    validator = EventValidator()
    for raw in stream.batches(64):
        yield validator.validate(raw).events


@pytest.mark.parametrize("keep, compact_every", [(6, None), (5, 5), (4, 1)])
def test_a_live_run_keeps_at_most_keep_versions_and_each_loads(tmp_path, live_trainer, keep, compact_every):
    config = StoreConfig(tmp_path / "store", keep_versions=keep, compact_every=compact_every, fsync=False)
    with ModelStore(config) as store:
        loop = live_trainer("cooccurrence", store, 64)  # deltas only, no periodic snapshots
        model = loop.trainer.model
        counts = []
        for batch in _batches(64 * 40):
            loop.feed_events(batch)
            counts.append(len(store.versions()))  # after every publish, not only at the end
        store.wait_for_compaction()
        published = store.current_version()
        assert published > 3 * keep, "the run must publish several times keep_versions"
        assert max(counts) <= keep, counts
        kinds = [info.kind for info in store.versions()]
        assert kinds.count("snapshot") <= 1, kinds  # the trainer published deltas; the store compacted
        kept = [info.version for info in store.versions()]
        assert kept == list(range(published - len(kept) + 1, published + 1))
        assert len(kept) >= keep - store.config.compaction_interval + 1  # the guaranteed rollback depth
        newest_state = dict(model.state_dict())
        for version in kept:
            state, loaded = store.load(version)
            assert loaded.version == version and not loaded.damaged
        # The newest kept version, rebuilt from the store's files, is what the trainer holds.
        for name, array in state.items():
            if name in newest_state:
                np.testing.assert_array_equal(array, np.asarray(newest_state[name]), err_msg=name)
        files = {path.name for path in store.directory.glob("v*.safetensors")}
        named = {name for info in store.versions() for name in info.files}
        assert files == named, "files of dropped versions must go"
