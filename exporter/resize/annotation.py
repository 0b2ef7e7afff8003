"""Parse and strictly validate the podsnoop.io/resize-on-exec annotation.

    podsnoop.io/resize-on-exec: |
      {"container": "build",
       "commands": ["make", "cc1", "ld"],
       "up":   {"requests": {"cpu": "4", "memory": "6Gi"}, "limits": {"cpu": "4", "memory": "6Gi"}},
       "down": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
       "holdSeconds": 30}

`down` and `holdSeconds` are optional: without `down` the container returns to the
resources it had before the resize up. Anything else is an error with a reason (the metric
label) and a message saying what to write instead: a bad annotation never resizes anything.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping

COMM_MAX = 15          # TASK_COMM_LEN - 1: the kernel keeps this much of the file name
MAX_COMMANDS = 32
KINDS = ("requests", "limits")
RESOURCES = ("cpu", "memory")
FIELDS = {"container", "commands", "up", "down", "holdSeconds"}

# Kubernetes resource.Quantity: a number, then a binary or decimal SI suffix or an exponent.
_QUANTITY = re.compile(r"^(\+?[0-9]+(?:\.[0-9]*)?|\+?\.[0-9]+)"
                       r"(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$")
_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
           "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), None: 1,
           "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


class AnnotationError(ValueError):
    """A rejected annotation: `reason` is the metric label, the text says what to fix."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def parse_quantity(text: Any) -> Decimal:
    """A Kubernetes quantity ("500m", "2Gi", "1.5", "1e3") as a number; ValueError if not."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a quantity string (write it in quotes, e.g. \"2\")")
    m = _QUANTITY.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 500m, 2, 1Gi, 512Mi)")
    number, suffix = m.groups()
    try:
        value = Decimal(number)
        if suffix and suffix[0] in "eE":
            return value * Decimal(10) ** int(suffix[1:])
        return value * Decimal(_SUFFIX[suffix])
    except (InvalidOperation, OverflowError):
        raise ValueError(f"{text!r} is not a Kubernetes quantity") from None


Resources = Mapping[str, Mapping[str, str]]   # {"requests": {"cpu": "4"}, "limits": {...}}


@dataclass(frozen=True)
class Rule:
    container: str
    commands: tuple[str, ...]
    up: Resources
    down: Resources | None     # None: back to what the container had before the resize up
    hold_seconds: float | None  # None: the exporter's --resize-hold-seconds


def _resources(value: Any, field: str) -> dict[str, dict[str, str]]:
    if not isinstance(value, dict):
        raise AnnotationError("invalid_value", f'"{field}" must be an object like '
                              '{"requests": {"cpu": "2"}, "limits": {"cpu": "4"}}')
    unknown = sorted(set(value) - set(KINDS))
    if unknown:
        raise AnnotationError("unknown_field", f'"{field}" has {", ".join(map(repr, unknown))}: '
                              'only "requests" and "limits"')
    out: dict[str, dict[str, str]] = {}
    for kind in KINDS:
        if kind not in value:
            continue
        part = value[kind]
        if not isinstance(part, dict):
            raise AnnotationError("invalid_value", f'"{field}.{kind}" must be an object like '
                                  '{"cpu": "2", "memory": "4Gi"}')
        bad = sorted(set(part) - set(RESOURCES))
        if bad:
            raise AnnotationError("unknown_field", f'"{field}.{kind}" has '
                                  f'{", ".join(map(repr, bad))}: only "cpu" and "memory" can '
                                  'be resized in place')
        for res, qty in part.items():
            try:
                number = parse_quantity(qty)
            except ValueError as e:
                raise AnnotationError("invalid_quantity", f'"{field}.{kind}.{res}": {e}') from None
            if number <= 0:
                raise AnnotationError("invalid_quantity",
                                      f'"{field}.{kind}.{res}": {qty!r} must be more than 0')
        if part:
            out[kind] = {res: str(qty).strip() for res, qty in part.items()}
    if not out:
        raise AnnotationError("missing_field", f'"{field}" names no resource: give requests '
                              'and/or limits of cpu and/or memory')
    for res in RESOURCES:
        req, lim = out.get("requests", {}).get(res), out.get("limits", {}).get(res)
        if req and lim and parse_quantity(req) > parse_quantity(lim):
            raise AnnotationError("invalid_value", f'"{field}": requests.{res} {req} is above '
                                  f'limits.{res} {lim}')
    return out


def _commands(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise AnnotationError("missing_field" if value in (None, []) else "invalid_value",
                              '"commands" must be a non-empty list of program names, e.g. '
                              '["make", "cc1"]')
    if len(value) > MAX_COMMANDS:
        raise AnnotationError("invalid_value", f'"commands" has {len(value)} names, at most '
                              f"{MAX_COMMANDS}")
    out = []
    for c in value:
        if not isinstance(c, str) or not c:
            raise AnnotationError("invalid_value", f'"commands": {c!r} is not a program name')
        if "/" in c or "\0" in c:
            raise AnnotationError("invalid_value", f'"commands": {c!r} is a path; name the '
                                  "program as the kernel does: the file's basename")
        size = len(c.encode())
        if size > COMM_MAX:
            short = c.encode()[:COMM_MAX].decode(errors="ignore")
            raise AnnotationError("comm_too_long", f'"commands": {c!r} is {size} bytes; the '
                                  f"kernel names a process by the first {COMM_MAX} bytes of "
                                  f"its file name, so write {short!r}")
        out.append(c)
    return tuple(dict.fromkeys(out))


def parse(text: str, containers: set[str] | None = None) -> Rule:
    """The annotation's Rule, or AnnotationError. `containers`: the pod's container names."""
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, TypeError) as e:
        raise AnnotationError("invalid_json", f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise AnnotationError("invalid_json", "must be a JSON object")
    unknown = sorted(set(doc) - FIELDS)
    if unknown:
        raise AnnotationError("unknown_field", f"unknown field(s) {', '.join(map(repr, unknown))}"
                              f"; known: {', '.join(sorted(FIELDS))}")
    missing = [f for f in ("container", "commands", "up") if f not in doc]
    if missing:
        raise AnnotationError("missing_field", f"missing field(s) {', '.join(map(repr, missing))}"
                              ' (needed: "container", "commands", "up")')
    container = doc["container"]
    if not isinstance(container, str) or not container:
        raise AnnotationError("invalid_value", '"container" must be a container name')
    if containers is not None and container not in containers:
        have = ", ".join(sorted(containers)) or "none"
        raise AnnotationError("unknown_container", f"the pod has no container {container!r} "
                              f"(containers: {have})")
    commands = _commands(doc["commands"])
    up = _resources(doc["up"], "up")
    down = _resources(doc["down"], "down") if doc.get("down") is not None else None
    hold = doc.get("holdSeconds")
    if hold is not None and (isinstance(hold, bool) or not isinstance(hold, (int, float))
                             or not 0 <= hold <= 86400):
        raise AnnotationError("invalid_value", '"holdSeconds" must be a number of seconds, '
                              "0..86400")
    return Rule(container, commands, up, down, None if hold is None else float(hold))
