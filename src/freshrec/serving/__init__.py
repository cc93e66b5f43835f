"""Serving: what a `freshrec serve` process holds and answers with.

`runtime.ServingRuntime` composes the door (events validated once, appended durably to the event log),
`served.ServedModel` (the published model, following the store version by version; a `VectorModel` is
double-buffered and answered from `retrieval.ItemIndex`, exact or faiss IVF) and `follower.EventFollower`
(the live feature state, following the log through the ingest pipeline). `ranking.top_items` is the exact
top-k of models without item vectors; `app` is the thin FastAPI layer; `config` holds the settings,
importable without torch. Serving never imports the trainer.
"""
