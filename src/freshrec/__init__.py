"""freshrec: recommender models that learn from every user event as it happens.

The package layout is the pipeline, read top to bottom:
sources -> preprocess -> features -> embeddings -> models -> training -> evaluation -> publishing -> serving.
"""

import os

# fbgemm's CPU kernels spin-wait in OpenMP by default: when another process holds a core (a server, a
# second worker), a training step then takes ~50x longer (measured: 62-77 ms instead of ~1.3 ms). Passive
# waiting only takes effect if chosen before torch is first imported, hence here; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from freshrec.events import EVENT_KINDS, Event, EventBatch  # noqa: E402

__all__ = ["EVENT_KINDS", "Event", "EventBatch", "Recommender", "__version__"]


def __getattr__(name: str) -> object:
    # The library API is imported on first use: `import freshrec` (every command, every child process)
    # stays light.
    if name == "Recommender":
        from freshrec.recommender import Recommender

        return Recommender
    raise AttributeError(f"module 'freshrec' has no attribute {name!r}")
