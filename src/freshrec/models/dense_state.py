"""Dense torch parameters and their Adam state as a stateful part (`freshrec.model_state`), for models that
publish them.

Two-tower and SASRec keep their id rows on dynamic embedding tables and their dense weights in torch with
Adam; both publish the weights and Adam's moments (``dense.<name>``, ``adam.<name>.*``) whole in every
delta after a step, so a replica that keeps training, or a restarted trainer, continues exactly. Never
pickles.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from freshrec.errors import ConfigError
from freshrec.model_state import State, StateChanges


class DenseParameters:
    """Named torch parameters under one Adam optimizer, with the four state methods.

    Parameters
    ----------
    parameters
        Name -> parameter, e.g. ``dict(module.named_parameters())``.
    optimizer
        The Adam optimizer that steps them.
    model
        The kind of model they belong to, named in errors (its config must match a loaded state's).

    >>> weight = torch.nn.Parameter(torch.ones(2))
    >>> dense = DenseParameters({"w": weight}, torch.optim.Adam([weight]), "Example")
    >>> sorted(dense.state_dict())
    ['dense.w']
    >>> sorted(dense.drain_changes().replaced)  # the first drain reports the initial weights
    ['dense.w']
    """

    def __init__(
        self, parameters: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer, model: str
    ) -> None:
        self.parameters = parameters
        self.optimizer = optimizer
        self.model = model
        #: Sums every parameter's gradient over the ranks of a distributed trainer, in place, before each
        #: `step` (None: one process).
        self.synchronise: Callable[[list[torch.nn.Parameter]], None] | None = None
        self._changed = True

    def step(self) -> None:
        """Adam's step over the gradients backward left, summed over the ranks first when `synchronise`
        is set (each rank's loss is its share of the batch's, so the sum is the batch's gradient), and
        recorded for the next drain."""
        if self.synchronise is not None:
            self.synchronise(list(self.parameters.values()))
        self.optimizer.step()
        self._changed = True

    def stepped(self) -> None:
        """Record that the optimizer stepped: the next drain carries every dense array."""
        self._changed = True

    def state_dict(self) -> State:
        """``dense.<name>`` (weights) and, once Adam has stepped, ``adam.<name>.exp_avg|exp_avg_sq|step``:
        copies."""
        state = {f"dense.{name}": p.detach().numpy().copy() for name, p in self.parameters.items()}
        for name, parameter in self.parameters.items():
            moments = self.optimizer.state.get(parameter, {})
            if moments:
                state[f"adam.{name}.exp_avg"] = moments["exp_avg"].numpy().copy()
                state[f"adam.{name}.exp_avg_sq"] = moments["exp_avg_sq"].numpy().copy()
                state[f"adam.{name}.step"] = np.array([float(moments["step"])], dtype=np.float32)
        return state

    def load_state_dict(self, state: State) -> None:
        """Restore `state_dict` output in place; a missing or misshapen weight is a `ConfigError` naming
        it and the model."""
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                key = f"dense.{name}"
                if key not in state:
                    raise ConfigError(
                        f"state lacks {key!r}; load a {self.model} state saved with the same config"
                    )
                value = np.asarray(state[key], dtype=np.float32)
                if value.shape != tuple(parameter.shape):
                    raise ConfigError(
                        f"state {key!r} has shape {value.shape}, this {self.model}'s is "
                        f"{tuple(parameter.shape)}; build the model with the config it was saved with"
                    )
                parameter.copy_(torch.from_numpy(value))
                if f"adam.{name}.exp_avg" in state:
                    step = float(np.asarray(state[f"adam.{name}.step"]).reshape(-1)[0])
                    self.optimizer.state[parameter] = {
                        "step": torch.tensor(step),
                        "exp_avg": torch.from_numpy(np.array(state[f"adam.{name}.exp_avg"], np.float32)),
                        "exp_avg_sq": torch.from_numpy(
                            np.array(state[f"adam.{name}.exp_avg_sq"], np.float32)
                        ),
                    }
                else:
                    self.optimizer.state.pop(parameter, None)
        self._changed = False

    def drain_changes(self) -> StateChanges:
        """Every dense array replaced whole when a step ran since the previous drain; nothing otherwise."""
        if not self._changed:
            return StateChanges()
        self._changed = False
        return StateChanges(replaced=self.state_dict())

    def apply_changes(self, changes: StateChanges) -> None:
        """Load the dense arrays when the changes carry them."""
        if any(name.startswith("dense.") for name in changes.replaced):
            self.load_state_dict(changes.replaced)
