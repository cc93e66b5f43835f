"""Recommender models: popularity, item-to-item co-occurrence, matrix factorisation; one protocol."""

from freshrec.models.base import LearnStats, Recommender

__all__ = ["LearnStats", "Recommender"]
