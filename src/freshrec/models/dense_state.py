"""Dense torch parameters and their Adam state as flat numeric arrays, for models that publish them.

Two-tower and SASRec keep their id rows on dynamic embedding tables and their dense weights in torch with
Adam; both publish the weights and Adam's moments (``dense.<name>``, ``adam.<name>.*``) whole in every
delta, so a replica that keeps training, or a restarted trainer, continues exactly. Never pickles.
"""

from __future__ import annotations

import numpy as np
import torch

from freshrec.errors import ConfigError


def dense_state(
    parameters: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer
) -> dict[str, np.ndarray]:
    """``dense.<name>`` (weights) and, once Adam has stepped, ``adam.<name>.exp_avg|exp_avg_sq|step``: copies.

    >>> weight = torch.nn.Parameter(torch.ones(2))
    >>> sorted(dense_state({"w": weight}, torch.optim.Adam([weight])))
    ['dense.w']
    """
    state = {f"dense.{name}": p.detach().numpy().copy() for name, p in parameters.items()}
    for name, parameter in parameters.items():
        moments = optimizer.state.get(parameter, {})
        if moments:
            state[f"adam.{name}.exp_avg"] = moments["exp_avg"].numpy().copy()
            state[f"adam.{name}.exp_avg_sq"] = moments["exp_avg_sq"].numpy().copy()
            state[f"adam.{name}.step"] = np.array([float(moments["step"])], dtype=np.float32)
    return state


def load_dense_state(
    parameters: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    state: dict[str, np.ndarray],
    model: str,
) -> None:
    """Restore `dense_state` output in place; a missing or misshapen weight is a `ConfigError` naming it
    and `model` (the kind of model whose config must match)."""
    with torch.no_grad():
        for name, parameter in parameters.items():
            key = f"dense.{name}"
            if key not in state:
                raise ConfigError(f"state lacks {key!r}; load a {model} state saved with the same config")
            value = np.asarray(state[key], dtype=np.float32)
            if value.shape != tuple(parameter.shape):
                raise ConfigError(
                    f"state {key!r} has shape {value.shape}, this {model}'s is {tuple(parameter.shape)}; "
                    "build the model with the config it was saved with"
                )
            parameter.copy_(torch.from_numpy(value))
            if f"adam.{name}.exp_avg" in state:
                optimizer.state[parameter] = {
                    "step": torch.tensor(float(np.asarray(state[f"adam.{name}.step"]).reshape(-1)[0])),
                    "exp_avg": torch.from_numpy(np.array(state[f"adam.{name}.exp_avg"], np.float32)),
                    "exp_avg_sq": torch.from_numpy(np.array(state[f"adam.{name}.exp_avg_sq"], np.float32)),
                }
            else:
                optimizer.state.pop(parameter, None)
