"""Evaluate and compare pipeline configs on a labelled collection (BEIR layout)."""
