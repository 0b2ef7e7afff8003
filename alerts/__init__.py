"""Prometheus alerting rules for podsnoop, generated from Python (see generate.py)."""
