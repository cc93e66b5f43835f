"""freshrec.publishing: the model store (versions, snapshots, deltas, manifest, rollback) and the publisher
that feeds it from the trainer."""

from freshrec.publishing.store import (
    Delta,
    DeltaBaseError,
    LoadedVersion,
    ModelStore,
    NonFiniteValueError,
    StoreConfig,
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    VersionInfo,
    VersionNotFoundError,
    apply_delta,
)

__all__ = [
    "Delta",
    "DeltaBaseError",
    "LoadedVersion",
    "ModelStore",
    "NonFiniteValueError",
    "StoreConfig",
    "StoreCorruptError",
    "StoreError",
    "StoreLockedError",
    "VersionInfo",
    "VersionNotFoundError",
    "apply_delta",
]
