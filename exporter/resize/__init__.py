"""Resize on exec: grow an annotated pod's container in place the moment a named command
starts (a `make`, a JVM's start-up), and shrink it back after the last one ends.

annotation.py  parse and validate podsnoop.io/resize-on-exec
programs.py    bpf/resize.bpf.c: load, keep its rule map current, read its events
actuator.py    debounce, hold, rate limit; PATCH pods/resize (or the pod, before 1.33)
collector.py   podsnoop_resize_* metrics
"""
