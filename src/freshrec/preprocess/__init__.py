"""From raw records to clean, encoded events: validate (with reasons and a dead-letter file), drop
duplicates within a bounded window, and map raw ids to 64-bit keys, the three composed once in
`pipeline.IngestPipeline`."""

from freshrec.preprocess.dedupe import Deduplicator
from freshrec.preprocess.encode import IdEncoder, decode_int_keys, encode_ids
from freshrec.preprocess.pipeline import IngestedBatch, IngestPipeline, PipelineConfig
from freshrec.preprocess.validate import (
    DeadLetterWriter,
    EventValidator,
    Rejection,
    ValidationResult,
    validate_records,
)

__all__ = [
    "DeadLetterWriter",
    "Deduplicator",
    "EventValidator",
    "IdEncoder",
    "IngestPipeline",
    "IngestedBatch",
    "PipelineConfig",
    "Rejection",
    "ValidationResult",
    "decode_int_keys",
    "encode_ids",
    "validate_records",
]
