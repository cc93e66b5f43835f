"""Serving: retrieval over item vectors (exact or ANN); the HTTP server comes with issue 3."""
