"""The configuration tree: files, --set overrides and options in that order; one line per mistake, naming
the file, the key and what is allowed; TOML that reads back to the same settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.config import parse, parse_assignment
from freshrec.errors import ConfigError
from freshrec.models.mf import MFConfig
from freshrec.models.registry import ModelSpec
from freshrec.settings import Settings, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "freshrec.toml"
    path.write_text(text)
    return path


def test_file_then_set_then_options(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[model]
name = "bpr-mf"
dim = 32
[model.items]
capacity = 5000
[trainer]
batch_size = 128
negatives = 2
""",
    )
    effective = load_settings(path, ["trainer.batch_size=64", "model.users.capacity=700"], {"trainer.k": 20})
    assert effective.model.name == "bpr-mf" and effective.model.config.dim == 32
    assert effective.model.config.items.capacity == 5000 and effective.model.config.users.capacity == 700
    # A partial section keeps this model's own defaults for the rest (user rows start at 0).
    assert effective.model.config.users.init_std == 0.0 and effective.model.config.items.init_std == 0.1
    assert (effective.trainer.batch_size, effective.trainer.negatives, effective.trainer.k) == (64, 2, 20)
    # An option not given (None) leaves the file's value.
    assert load_settings(path, [], {"trainer.batch_size": None}).trainer.batch_size == 128


def test_the_command_default_model_applies_only_when_nothing_names_one(tmp_path: Path) -> None:
    assert load_settings(default_model="blend").model.name == "blend"
    assert (
        load_settings(write(tmp_path, '[model]\nname = "sasrec"\n'), default_model="blend").model.name
        == "sasrec"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[trainer]\nbatch_sz = 3\n",
            "freshrec.toml: trainer.batch_sz: unknown key; the keys of this section are batch_size",
        ),
        (
            '[trainer]\nbatch_size = "x"\n',
            "freshrec.toml: trainer.batch_size: input should be a valid integer",
        ),
        (
            "[trainer]\nbatch_size = 0\n",
            "freshrec.toml: trainer: batch_size must be a positive number of events",
        ),
        (
            '[model]\nname = "nope"\n',
            "freshrec.toml: model.name: unknown model 'nope'; choose one of popularity",
        ),
        (
            '[model]\nname = "two-tower"\n[model.items]\neviction = "fifo"\n',
            "model.items.eviction: 'fifo' is not allowed; use one of 'lru', 'lfu', 'none'",
        ),
        (
            "[nonsense]\nx = 1\n",
            "freshrec.toml: nonsense: unknown section; the sections are source, pipeline, model",
        ),
        ("trainer = 5\n", "freshrec.toml: trainer: expected a section"),
        ('[model]\nname = "bpr-mf"\nitems = 3\n', "freshrec.toml: model.items: expected a section"),
        ("[trainer\n", "freshrec.toml: not valid TOML"),
        (
            '[source]\nname = "kafka"\n',
            "source: name 'kafka' is not a built-in source; use one of movielens-100k, synthetic",
        ),
    ],
)
def test_every_mistake_is_one_line_naming_the_file_and_the_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert expected in message and "\n" not in message
    assert message.startswith(str(path)), message


def test_set_mistakes_name_the_option() -> None:
    with pytest.raises(ConfigError, match=r"^--set: trainer.negative: unknown key"):
        load_settings(assignments=["trainer.negative=3"])
    with pytest.raises(ConfigError, match=r"expected section.key=value"):
        load_settings(assignments=["trainer.batch_size"])
    with pytest.raises(ConfigError, match=r"'batch_size' is a value, not a section"):
        load_settings(assignments=["trainer.batch_size=3", "trainer.batch_size.x=3"])


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_settings(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    "model",
    [
        "popularity",
        "popularity-decayed",
        "cooccurrence",
        "bpr-mf",
        "rating-mf",
        "two-tower",
        "sasrec",
        "blend",
    ],
)
def test_written_settings_read_back_to_the_same(tmp_path: Path, model: str) -> None:
    original = load_settings(
        options={"model.name": model, "trainer.batch_size": 64, "publishing.every_events": 5000},
        assignments=["model.two-tower.dim=32"] if model == "blend" else [],
    )
    path = write(tmp_path, original.as_toml())
    assert load_settings(path) == original
    assert Settings.from_dict(original.as_dict()) == original


def test_none_is_written_as_the_string_none_and_read_back() -> None:
    spec = ModelSpec.of("cooccurrence", {"half_life_days": None})
    assert spec.as_dict()["half_life_days"] == "none"
    assert ModelSpec.from_dict(spec.as_dict()).config.half_life_days is None
    # Where "none" is itself a choice, it stays that choice.
    table = ModelSpec.of("bpr-mf", {"items": {"eviction": "none"}}).config.items
    assert table.eviction == "none" and table.ttl_seconds is None


def test_flat_names_of_earlier_versions_still_read() -> None:
    config = parse(MFConfig, {"user_capacity": 10, "item_capacity": 20, "admit_after": 2}, "stored")
    assert (config.users.capacity, config.items.capacity) == (10, 20)
    assert config.users.admit_after == config.items.admit_after == 2
    # A version published before specs: a name and its flat config.
    old = ModelSpec.from_metadata({"model": "two-tower", "model_config": {"item_capacity": 64, "dim": 16}})
    assert old.config.items.capacity == 64 and old.config.dim == 16


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=40))
def test_any_assignment_text_parses_or_is_one_clear_error(text: str) -> None:
    try:
        path, _ = parse_assignment(text)
    except ConfigError as error:
        assert "section.key=value" in str(error)
        return
    assert all(part for part in path)


def test_the_kind_map_and_the_kind_weights_are_keys_of_the_file(tmp_path: Path) -> None:
    text = '[pipeline.kinds]\nadd_to_cart = "click"\n[trainer.kind_weights]\npurchase = 5.0\n'
    path = write(tmp_path, text)
    settings = load_settings(path, ["trainer.kind_weights.view=0.25"])
    assert settings.pipeline.kinds == {"add_to_cart": "click"}
    weights = settings.trainer.kind_weights
    assert (weights.purchase, weights.view, weights.click) == (5.0, 0.25, 2.0)  # the others keep defaults
    assert load_settings(path).as_dict()["trainer"]["kind_weights"]["purchase"] == 5.0
    for assignment, message in [
        ("pipeline.kinds.add_to_cart=buy", "kinds.add_to_cart: 'buy' is not a kind"),
        ("trainer.kind_weights.purchase=-1", "purchase must be a finite number >= 0"),
        ("trainer.kind_weights.refund=1", "trainer.kind_weights.refund: unknown key"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_settings(assignments=[assignment])
