"""freshrec: recommender models that learn from every user event as it happens.

The package layout is the pipeline, read top to bottom:
sources -> preprocess -> features -> embeddings -> models -> training -> evaluation -> publishing -> serving.
"""

from freshrec.events import EVENT_KINDS, Event, EventBatch

__all__ = ["EVENT_KINDS", "Event", "EventBatch", "__version__"]
__version__ = "0.1.0"
