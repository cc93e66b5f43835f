"""Learning from a stream: the online trainer (score each micro-batch, then learn it), the live loop that
composes source, ingest pipeline, trainer and publisher (`loop.TrainingLoop`), the replay of a finite
source, the cadence study, and the trainer over several synchronous ranks (`distributed`)."""
