"""Dynamic, collisionless embedding tables: a row per admitted id, frequency filter, expiry, capacity bound,
fused row-wise optimizer state (fbgemm), and tracking of the rows that changed."""

from freshrec.embeddings.config import EmbeddingTableConfig
from freshrec.embeddings.sketch import CountMinSketch
from freshrec.embeddings.table import COLD_ROW, DynamicEmbeddingTable, RowChanges, TableStats

__all__ = [
    "COLD_ROW",
    "CountMinSketch",
    "DynamicEmbeddingTable",
    "EmbeddingTableConfig",
    "RowChanges",
    "TableStats",
]
