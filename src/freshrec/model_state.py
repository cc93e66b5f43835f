"""How stateful parts of freshrec name, save and ship their state: one naming scheme shared by the embedding
tables, the key indexes, the models, the feature state, the publisher and the server, so it lives above
all of them.

Every stateful part speaks the same four words:

- ``state_dict()``: its whole state as a flat dict of numeric arrays (safetensors-compatible copies);
- ``load_state_dict(state)``: replace its state with `state_dict` output of a part built alike;
- ``drain_changes()``: what changed since the previous call, as `StateChanges` (parts that do not track
  their own changes, such as a `freshrec.keyindex.KeyIndex`, give ``slot_changes(slots)`` instead);
- ``apply_changes(changes)``: apply another instance's drained changes in place.

A part composed of parts names each one's arrays under a prefix (``users.weights``, ``items.index.counts``)
with `state_of_parts` and its three siblings, so that composition is written once.

Private arrays
--------------
An array whose last name component starts with ``_`` (``items._rng``, ``users.index._free``) is state that
only matters to the process that keeps learning: a random generator's position, the order in which free
slots are handed out. It is in `state_dict` (a checkpoint or a saved model continues exactly) but never in
`drain_changes`: a replica that only applies changes never draws random numbers or hands out slots, so its
private arrays may differ from the learner's while every public array is equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np

Value = TypeVar("Value")
State = dict[str, np.ndarray]


def under_prefix(mapping: Mapping[str, Value], prefix: str) -> dict[str, Value]:
    """The entries of a state (or of a change) named ``<prefix><name>``, as ``<name>``: how a model hands
    each part it is composed of (a table, an index, a component) its own state.

    >>> under_prefix({"items.keys": 1, "items.rows": 2, "clock": 3}, "items.")
    {'keys': 1, 'rows': 2}
    """
    n = len(prefix)
    return {name[n:]: value for name, value in mapping.items() if name.startswith(prefix)}


def with_prefix(mapping: Mapping[str, Value], prefix: str) -> dict[str, Value]:
    """The inverse of `under_prefix`: every name of `mapping` with `prefix` in front.

    >>> with_prefix({"weights": 1}, "items.")
    {'items.weights': 1}
    """
    return {prefix + name: value for name, value in mapping.items()}


def is_private(name: str) -> bool:
    """Whether a state array is private (see the module docstring): its last name component starts with
    ``_``.

    >>> is_private("items._rng"), is_private("items.index._free"), is_private("items.weights")
    (True, True, False)
    """
    return name.rsplit(".", 1)[-1].startswith("_")


def public_state(state: Mapping[str, np.ndarray]) -> State:
    """`state` without its private arrays: what two replicas of one model must agree on."""
    return {name: array for name, array in state.items() if not is_private(name)}


@dataclass
class StateChanges:
    """What changed in a part's state since the previous `drain_changes` call.

    A state is a flat dict of numeric arrays (`state_dict`). Arrays whose leading dimension is a row (an
    embedding row, an item slot) change by rows; small or dense arrays are replaced whole. Private arrays
    never travel in changes.

    Attributes
    ----------
    rows
        name -> (row indices int64 [r], new values [r, ...]): apply as ``state[name][rows] = values``.
    replaced
        name -> the whole new array.
    complete
        False when the part could not keep track of every change (more than it bounds): the publisher
        must then publish a full snapshot instead of a delta.
    """

    rows: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    replaced: dict[str, np.ndarray] = field(default_factory=dict)
    complete: bool = True

    def under(self, prefix: str) -> StateChanges:
        """The part of these changes named under `prefix`, with the prefix taken off (see `under_prefix`)."""
        return StateChanges(
            under_prefix(self.rows, prefix), under_prefix(self.replaced, prefix), self.complete
        )

    def add(self, other: StateChanges, prefix: str = "") -> None:
        """Fold `other` (a part's changes) into these, its names under `prefix`."""
        self.rows.update(with_prefix(other.rows, prefix))
        self.replaced.update(with_prefix(other.replaced, prefix))
        self.complete = self.complete and other.complete

    @property
    def changed_rows(self) -> int:
        return max((len(rows) for rows, _ in self.rows.values()), default=0)

    @property
    def empty(self) -> bool:
        """True when nothing changed by rows and nothing was replaced."""
        return not self.replaced and all(len(rows) == 0 for rows, _ in self.rows.values())


class Stateful(Protocol):
    """A part with a state under the module's naming scheme."""

    def state_dict(self) -> State: ...

    def load_state_dict(self, state: State) -> None: ...

    def drain_changes(self) -> StateChanges: ...

    def apply_changes(self, changes: StateChanges) -> None: ...


def array_like(state: Mapping[str, np.ndarray], name: str, current: np.ndarray, hint: str) -> np.ndarray:
    """A copy of ``state[name]`` with `current`'s dtype, refused when its shape is not `current`'s: a
    `ConfigError` naming the array, both shapes, and `hint` (what to do, e.g. "build the model with the
    capacity it was saved with").

    >>> array_like({"counts": np.zeros(3)}, "counts", np.zeros(4), "use the saved capacity")
    Traceback (most recent call last):
    ...
    freshrec.errors.ConfigError: state 'counts' has shape (3,), this one's is (4,); use the saved capacity
    """
    from freshrec.errors import ConfigError  # errors is a leaf module: no cycle, only import order

    value = np.array(state[name], dtype=current.dtype)
    if value.shape != tuple(current.shape):
        raise ConfigError(
            f"state {name!r} has shape {value.shape}, this one's is {tuple(current.shape)}; {hint}"
        )
    return value


def apply_rows(arrays: Mapping[str, np.ndarray], changes: StateChanges) -> None:
    """Write the rows `changes` hold for each named array in place (``array[rows] = values``): how a part
    whose arrays change by rows applies another instance's changes.

    >>> counts = np.zeros(4)
    >>> apply_rows({"counts": counts}, StateChanges(rows={"counts": (np.array([2]), np.array([5.0]))}))
    >>> counts.tolist()
    [0.0, 0.0, 5.0, 0.0]
    """
    for name, array in arrays.items():
        if name in changes.rows:
            rows, values = changes.rows[name]
            array[np.asarray(rows, dtype=np.int64)] = values


def state_of_parts(parts: Mapping[str, Stateful]) -> State:
    """The `state_dict` of every part, each under its prefix (the keys of `parts`, e.g. ``"users."``).

    >>> from freshrec.embeddings import DynamicEmbeddingTable, EmbeddingTableConfig
    >>> parts = {"users.": DynamicEmbeddingTable(EmbeddingTableConfig(dim=4, capacity=2))}
    >>> "users.weights" in state_of_parts(parts)
    True
    """
    state: State = {}
    for prefix, part in parts.items():
        state.update(with_prefix(part.state_dict(), prefix))
    return state


def load_parts(parts: Mapping[str, Stateful], state: Mapping[str, np.ndarray]) -> None:
    """Load each part from the arrays of `state` under its prefix."""
    for prefix, part in parts.items():
        part.load_state_dict(under_prefix(state, prefix))


def drain_parts(parts: Mapping[str, Stateful]) -> StateChanges:
    """Every part's `drain_changes`, each under its prefix; complete only if every part's is."""
    changes = StateChanges()
    for prefix, part in parts.items():
        changes.add(part.drain_changes(), prefix)
    return changes


def apply_parts(parts: Mapping[str, Stateful], changes: StateChanges) -> None:
    """Apply to each part the changes named under its prefix."""
    for prefix, part in parts.items():
        part.apply_changes(changes.under(prefix))


def rng_state(rng: np.random.Generator) -> np.ndarray:
    """uint64 [6]: the position of a PCG64 generator (``state`` and ``inc`` as 128-bit halves, then the
    buffered 32-bit draw), as a state array; `load_rng_state` puts it back.

    >>> rng = np.random.default_rng(3)
    >>> saved = rng_state(rng)
    >>> first = rng.integers(0, 100, 5)
    >>> load_rng_state(rng, saved)
    >>> bool((rng.integers(0, 100, 5) == first).all())
    True
    """
    state = rng.bit_generator.state
    if state["bit_generator"] != "PCG64":
        raise TypeError(f"rng_state handles PCG64 generators, got {state['bit_generator']}")
    mask = (1 << 64) - 1
    inner = state["state"]
    words = [inner["state"] >> 64, inner["state"] & mask, inner["inc"] >> 64, inner["inc"] & mask]
    return np.array([*words, state["has_uint32"], state["uinteger"]], dtype=np.uint64)


def load_rng_state(rng: np.random.Generator, array: np.ndarray) -> None:
    """Restore `rng_state` output into `rng` (a PCG64 generator)."""
    words = [int(v) for v in np.asarray(array, dtype=np.uint64).reshape(-1)]
    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": (words[0] << 64) | words[1], "inc": (words[2] << 64) | words[3]},
        "has_uint32": words[4],
        "uinteger": words[5],
    }
