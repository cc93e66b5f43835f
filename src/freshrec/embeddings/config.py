"""Configuration of a dynamic embedding table: size, admission, expiry, eviction and optimizer settings.

`TableConfig` is what a model's config nests once per id table (``MFConfig.users``, ``TwoTowerConfig.items``,
``[model.items]`` in a configuration file): the row lifecycle and the optimizer, which a user tunes per
table. `EmbeddingTableConfig` adds what the model decides (the row width and a seed) and is what a
`DynamicEmbeddingTable` is built from.

Plain data with validation only; it must never allocate a table or touch torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from freshrec.embeddings.sketch import MAX_COUNT
from freshrec.errors import ConfigError

#: Ids with a row of their own in a table (or items counted by a count-based model) unless configured:
#: the one default of every model. Snapshots leave out free rows, but a server holds a model dense over
#: its capacity, so the default is sized for a catalogue and audience of up to this many, with start-up in
#: seconds; set ``capacity`` for larger ones.
DEFAULT_CAPACITY = 100_000


@dataclass
class TableConfig:
    """How the rows of one id table live and learn.

    Parameters
    ----------
    capacity
        Most ids with their own row at once (the table holds ``capacity + 1`` rows: row 0 is the shared
        cold-start row).
    admit_after
        An id gets its own row at its N-th sighting; before that it trains and is served with the cold
        row 0. Sightings of ids not yet admitted are counted in a count-min sketch (1: no sketch).
    ttl_seconds
        Rows whose id was not seen for this much *event time* are freed for reuse (None: never). The
        expiry scan runs at most once per ``ttl_seconds / 16`` of event time, so a row lives at most
        ``ttl * 17/16`` unseen.
    eviction
        Which live ids lose their rows when new ids arrive at a full table: least recently seen (``"lru"``),
        least often seen (``"lfu"``), or none (``"none"``: the table raises `CapacityError`).
    optimizer
        The update fbgemm fuses into ``backward()``: ``"rowwise_adagrad"`` (one accumulator per row, step
        ``lr * g / sqrt(sum of mean g^2)``) or ``"sgd"`` (``lr * g``, no state: a constant step keeps
        adapting on a drifting stream where Adagrad's step only shrinks).
    learning_rate
        Step size of the fused update.
    init_std
        Standard deviation of the normal initialisation of each (re)assigned row.
    sketch_width, sketch_depth
        Count-min sketch size: ``depth x width`` one-byte counters (default 4 x 2^20 = 4 MiB); see
        `freshrec.embeddings.sketch.CountMinSketch` for its error.
    rank_capacity
        Most rows of this table one trainer rank may hold (None: no limit). Over N ranks
        (`freshrec.training.distributed`) a rank holds ``(capacity + 1) / N`` of the rows, so a table
        larger than one rank's memory trains over enough ranks; a trainer with too few is refused.

    >>> TableConfig(capacity=1000).embedding(dim=8, seed=3).capacity
    1000
    """

    capacity: int = DEFAULT_CAPACITY
    admit_after: int = 1
    ttl_seconds: float | None = None
    eviction: Literal["lru", "lfu", "none"] = "lru"
    optimizer: Literal["rowwise_adagrad", "sgd"] = "rowwise_adagrad"
    learning_rate: float = 0.05
    init_std: float = 0.01
    sketch_width: int = 1 << 20
    sketch_depth: int = 4
    rank_capacity: int | None = None

    def __post_init__(self) -> None:
        if self.rank_capacity is not None and self.rank_capacity < 1:
            raise ConfigError(f"rank_capacity must be a positive integer or None, got {self.rank_capacity!r}")
        if not isinstance(self.capacity, int) or self.capacity < 1:
            raise ConfigError(f"capacity must be a positive integer, got {self.capacity!r}")
        if not 1 <= self.admit_after <= MAX_COUNT:
            raise ConfigError(f"admit_after must be in [1, {MAX_COUNT}], got {self.admit_after}")
        if self.ttl_seconds is not None and not self.ttl_seconds > 0:
            raise ConfigError(f"ttl_seconds must be > 0 or None, got {self.ttl_seconds}")
        if self.eviction not in ("lru", "lfu", "none"):
            raise ConfigError(f"eviction must be 'lru', 'lfu' or 'none', got {self.eviction!r}")
        if self.optimizer not in ("rowwise_adagrad", "sgd"):
            raise ConfigError(f"optimizer must be 'rowwise_adagrad' or 'sgd', got {self.optimizer!r}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.init_std >= 0:
            raise ConfigError(f"init_std must be >= 0, got {self.init_std}")

    def embedding(self, dim: int, seed: int) -> EmbeddingTableConfig:
        """The configuration of a table of these settings with rows `dim` wide, seeded with `seed`."""
        return EmbeddingTableConfig(**dataclasses.asdict(self), dim=dim, seed=seed)


@dataclass
class EmbeddingTableConfig(TableConfig):
    """How one `DynamicEmbeddingTable` behaves: a `TableConfig` plus the row width and seed.

    Parameters
    ----------
    dim
        Width of each row; fbgemm's table-batched kernels need a multiple of 4.
    eps
        Adagrad's denominator guard.
    seed
        Seeds row initialisation and the sketch's hashes.

    >>> EmbeddingTableConfig(dim=8, capacity=100).admit_after
    1
    """

    dim: int = 64
    eps: float = 1e-8
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or self.dim < 4 or self.dim % 4:
            raise ConfigError(
                f"dim must be a positive multiple of 4 (fbgemm kernels), got {self.dim}; e.g. 64"
            )
        super().__post_init__()
