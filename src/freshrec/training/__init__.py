"""The online loop (score each micro-batch, then learn it) and the replay pipeline around it."""
