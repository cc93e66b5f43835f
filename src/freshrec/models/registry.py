"""Models by name: each registered model is a config dataclass and a `freshrec.models.base.Model` class, with
the defaults every benchmark and the CLI use (the same on every data set).

A `ModelSpec` is a registry name with its full, typed configuration (and, for a blend, its components'
specs). It is what a configuration file's ``[model]`` section becomes, what a published version stores
(`ModelSpec.as_dict`), and what a server rebuilds the trainer's exact model from (`ModelSpec.from_dict`,
then `ModelSpec.build`).

Adding a model is one file and one `register` call (here for the built-in ones, or anywhere before the
model is asked for by name); a package can also list a `ModelEntry` under the ``freshrec.models`` entry
point group. Nothing here imports a model module until that model is built: ``import freshrec`` stays
free of torch.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from freshrec.config import as_plain, parse
from freshrec.errors import ConfigError
from freshrec.models.base import Model

__all__ = [
    "BEST_MODEL",
    "LIVE_MODEL",
    "MODEL_FACTORIES",
    "ModelEntry",
    "ModelSpec",
    "create_model",
    "model_names",
    "model_spec",
    "register",
]

#: The model `freshrec replay` uses without `--model`: the winner of `bench/quality.py` on MovieLens-100K
#: (see BENCHMARKS.md for the run that decided it).
BEST_MODEL = "blend"
#: The default of `freshrec train`, `demo` and `study`: the best model that keeps up with a live stream on
#: two cores shared with the server, and whose daily retrains in the cadence study take seconds, not
#: hours (BENCHMARKS.md has both speeds).
LIVE_MODEL = "cooccurrence"


@dataclass(frozen=True)
class ModelEntry:
    """How to build one registered model.

    Attributes
    ----------
    name
        The registry name (``--model NAME``, ``[model] name = NAME``).
    config
        ``"module:ConfigClass"``: the model's config dataclass.
    model
        ``"module:ModelClass"``: built as ``ModelClass(config)``, or ``ModelClass(components, config)``
        for a composite.
    defaults
        Config fields this entry sets differently from the config class (``popularity-decayed``: a
        half-life).
    summary
        One line for ``--help`` and the README's model table.
    composite
        The model blends others: its config's ``components`` names them, each configured in its own
        sub-section.
    """

    name: str
    config: str
    model: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""
    composite: bool = False

    @property
    def config_class(self) -> type:
        return _resolve(self.config)

    @property
    def model_class(self) -> type[Model]:
        return _resolve(self.model)


_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    """Make `entry` buildable by name (a later entry of the same name replaces the earlier one)."""
    _REGISTRY[entry.name] = entry
    return entry


def model_names() -> list[str]:
    """The registered names, built-in ones first."""
    _load_entry_points()
    return list(_REGISTRY)


def entry(name: str, where: str = "model") -> ModelEntry:
    """The entry of `name`; an unknown name is a `ConfigError` naming `where` it was asked for and the
    known names."""
    if name not in _REGISTRY:
        _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(model_names())
        raise ConfigError(f"{where}: unknown model {name!r}; choose one of {known}") from None


@dataclass
class ModelSpec:
    """A registered model's name and complete configuration.

    Attributes
    ----------
    name
        Registry name.
    config
        The model's config dataclass, every field set.
    components
        For a composite (the blend): each component's spec, by name, in the order of
        ``config.components``.

    >>> spec = ModelSpec.of("cooccurrence", {"max_neighbors": 8})
    >>> spec.config.max_neighbors, spec.as_dict()["name"]
    (8, 'cooccurrence')
    >>> ModelSpec.from_dict(spec.as_dict()) == spec
    True
    """

    name: str
    config: Any
    components: dict[str, ModelSpec] = field(default_factory=dict)

    @classmethod
    def of(
        cls, name: str, overrides: Mapping[str, Any] | None = None, where: str = "", section: str = "model"
    ) -> ModelSpec:
        """The spec of model `name` with `overrides` (its config's fields; a composite's component
        sections under their names) replacing the defaults. `where` and `section` locate the settings in
        errors (see `freshrec.config.parse`)."""
        known = entry(name, ": ".join(part for part in (where, f"{section}.name") if part))
        data = {**as_plain(dict(known.defaults)), **dict(overrides or {})}
        sections: dict[str, Mapping[str, Any]] = {}
        if known.composite:
            default_names = [
                f.default for f in dataclasses.fields(known.config_class) if f.name == "components"
            ]
            names = list(data.get("components", default_names[0] if default_names else ()))
            for component in names:
                part = data.pop(component, {})
                if not isinstance(part, Mapping):
                    located = ": ".join(p for p in (where, f"{section}.{component}") if p)
                    raise ConfigError(f"{located}: expected a section of that model's settings")
                sections[component] = part
        config = parse(known.config_class, data, where, section)
        components = {
            component: cls.of(component, part, where, f"{section}.{component}")
            for component, part in sections.items()
        }
        return cls(name, config, components)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], where: str = "", section: str = "model", default: str | None = None
    ) -> ModelSpec:
        """The spec `as_dict` wrote (``name`` plus the settings); `default` names the model when the
        data does not."""
        settings = dict(data)
        name = settings.pop("name", default)
        if not isinstance(name, str):
            located = ": ".join(part for part in (where, f"{section}.name") if part)
            raise ConfigError(f"{located}: missing; name a model, one of {', '.join(model_names())}")
        return cls.of(name, settings, where, section)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> ModelSpec:
        """The spec a published version's metadata records: ``model`` as `as_dict` output, or (versions
        published before specs) a name with its flat ``model_config``."""
        model = metadata.get("model", "cooccurrence")
        if isinstance(model, Mapping):
            return cls.from_dict(model, "version metadata")
        return cls.of(str(model), metadata.get("model_config") or {}, "version metadata")

    def as_dict(self) -> dict[str, Any]:
        """Plain, TOML/JSON-able data: ``name``, the config's fields, and each component's section."""
        data: dict[str, Any] = {"name": self.name, **as_plain(self.config)}
        for component, spec in self.components.items():
            section = spec.as_dict()
            section.pop("name")
            data[component] = section
        return data

    def build(self) -> Model:
        """A fresh model of this spec."""
        known = entry(self.name)
        if known.composite:
            parts = [spec.build() for spec in self.components.values()]
            return known.model_class(parts, self.config)  # type: ignore[call-arg]
        return known.model_class(self.config)  # type: ignore[call-arg]


def create_model(name: str | ModelSpec, config: Mapping[str, Any] | None = None) -> Model:
    """A fresh model with its documented defaults, or with the fields of `config` replacing them.

    >>> create_model("popularity").name
    'popularity'
    >>> create_model("cooccurrence", {"max_neighbors": 8}).config.max_neighbors
    8
    >>> create_model("bpr-mf", {"items": {"capacity": 500}}).items.config.capacity
    500
    """
    spec = name if isinstance(name, ModelSpec) else ModelSpec.of(name, config)
    return spec.build()


def model_spec(name: str, model: Model) -> dict[str, Any]:
    """What a published version records so a server can rebuild `model`, a model of registry entry `name`
    built from its config alone (not a composite: record a composite's `ModelSpec` instead)."""
    return {"model": ModelSpec(name, model.config).as_dict()}  # type: ignore[attr-defined]


def _resolve(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


_ENTRY_POINTS_LOADED = False


def _load_entry_points() -> None:
    """Register the `ModelEntry` objects other packages list under the ``freshrec.models`` group."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for point in entry_points(group="freshrec.models"):
        loaded = point.load()
        if not isinstance(loaded, ModelEntry):
            raise ConfigError(f"entry point {point.name!r} of group freshrec.models is not a ModelEntry")
        _REGISTRY.setdefault(loaded.name, loaded)


# -- the built-in models ------------------------------------------------------------------------------
_M = "freshrec.models."
register(
    ModelEntry(
        "popularity",
        f"{_M}popularity:PopularityConfig",
        f"{_M}popularity:PopularityModel",
        summary="global counts so far",
    )
)
register(
    ModelEntry(
        "popularity-decayed",
        f"{_M}popularity:PopularityConfig",
        f"{_M}popularity:PopularityModel",
        defaults={"half_life_days": 7.0},
        summary="counts with a 7-day half-life in event time",
    )
)
register(
    ModelEntry(
        "cooccurrence",
        f"{_M}cooccurrence:CooccurrenceConfig",
        f"{_M}cooccurrence:CooccurrenceModel",
        summary="incremental item-to-item co-occurrence with the user's recent items",
    )
)
register(
    ModelEntry(
        "bpr-mf",
        f"{_M}mf:MFConfig",
        f"{_M}mf:BPRMatrixFactorization",
        summary="matrix factorisation with BPR loss on dynamic embedding tables",
    )
)
register(
    ModelEntry(
        "rating-mf",
        f"{_M}rating:RatingConfig",
        f"{_M}rating:RatingModel",
        summary="explicit ratings: biased MF with drifting biases",
    )
)
register(
    ModelEntry(
        "two-tower",
        f"{_M}twotower:TwoTowerConfig",
        f"{_M}twotower:TwoTowerModel",
        summary="user and item towers with sampled softmax and logQ correction",
    )
)
register(
    ModelEntry(
        "sasrec",
        f"{_M}sasrec:SASRecConfig",
        f"{_M}sasrec:SASRecModel",
        summary="causal self-attention over the user's last items (Transformer)",
    )
)
register(
    ModelEntry(
        "blend",
        f"{_M}blend:BlendConfig",
        f"{_M}blend:BlendedModel",
        composite=True,
        summary="components' scores combined by weights learned online",
    )
)


class _Factories(Mapping[str, Any]):
    """`MODEL_FACTORIES` of earlier versions: name -> ``factory(overrides)``, over the live registry."""

    def __getitem__(self, name: str) -> Any:
        return lambda overrides=None: create_model(entry(name).name, overrides)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(model_names())

    def __len__(self) -> int:
        return len(model_names())


#: Registered names -> ``factory(overrides)``; kept for callers of earlier versions (prefer `create_model`).
MODEL_FACTORIES: Mapping[str, Any] = _Factories()
