"""Sample weights of an `Interactions` batch (an event's weight by its kind) in a gradient model's loss.

One function, so that every softmax model weighs events the same way; counting models multiply their
increments by `Interactions.weights` directly. Weights None must give exactly the unweighted loss. The
blend's weight step (`BlendedModel._learn_weights`) has no autograd graph: it writes the gradient of this
same loss out by hand.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["cross_entropy"]


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: np.ndarray | None) -> torch.Tensor:
    """Mean over events of ``weight * cross-entropy``; plain `F.cross_entropy` when `weights` is None.

    The mean is over the batch's events, not over its weights: a batch of purchases pushes harder than a
    batch of views, as their weights say (dividing by the weights' sum would undo that between batches).

    >>> logits, targets = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0])
    >>> float(cross_entropy(logits, targets, None)) == float(F.cross_entropy(logits, targets))
    True
    >>> round(float(cross_entropy(logits, targets, np.array([0.0, 1.0], np.float32))), 4)  # only the miss
    1.0635
    """
    if weights is None:
        return F.cross_entropy(logits, targets)
    per_event = F.cross_entropy(logits, targets, reduction="none")
    return (per_event * torch.from_numpy(np.asarray(weights, dtype=np.float32))).mean()
