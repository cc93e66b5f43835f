"""Where events come from: file replay, the synthetic generator, dataset loaders, the embedded event log,
broker streams (Kafka, Redis Streams).

Every source follows `Source`: raw batches (columns not yet validated) with the offset to resume after
each one, and `commit(offset)` once a batch is safe. Sources split records into fields; judging values
is `freshrec.preprocess.validate`'s job.
"""

from freshrec.sources.base import EVENT_COLUMNS, RawBatch, Rejection, Source
from freshrec.sources.eventlog import EventLog, EventLogConfig, EventLogReader
from freshrec.sources.files import ColumnMapping, FileReplaySource, parse_column_mapping
from freshrec.sources.movielens import MovieLensSource, load_movielens_100k, load_movielens_100k_items
from freshrec.sources.streams import ConsumerSpec, StreamAddress, StreamSource, open_sink, open_stream
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream

__all__ = [
    "EVENT_COLUMNS",
    "ColumnMapping",
    "ConsumerSpec",
    "EventLog",
    "EventLogConfig",
    "EventLogReader",
    "FileReplaySource",
    "MovieLensSource",
    "RawBatch",
    "Rejection",
    "Source",
    "StreamAddress",
    "StreamSource",
    "SyntheticConfig",
    "SyntheticStream",
    "load_movielens_100k",
    "load_movielens_100k_items",
    "open_sink",
    "open_stream",
    "parse_column_mapping",
]
