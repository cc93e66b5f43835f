"""Prequential metrics, the catalogue of items seen so far, and the publish gate."""
