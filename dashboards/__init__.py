"""Grafana dashboards for podsnoop, generated from Python (see generate.py)."""
