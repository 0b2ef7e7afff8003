"""Errors an operator can act on.

Anything raised as PodsnoopError reaches the user as two plain lines (what happened, how to
fix it) and a non-zero exit code, never as a traceback.
"""


class PodsnoopError(Exception):
    def __init__(self, message: str, fix: str = ""):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message


class CollectorUnavailable(PodsnoopError):
    """A collector this kernel cannot run (a missing feature, a verifier rejection).

    With its flag at the default the collector is turned off and the rest serve (app.py);
    set explicitly, it is a hard error like any other. `reason` is the short label of
    podsnoop_collector_disabled: one of names.DISABLED_REASONS or "kernel<X.Y: feature",
    so its values stay few.
    """

    def __init__(self, message: str, fix: str = "", reason: str = "load failed"):
        super().__init__(message, fix)
        self.reason = reason
