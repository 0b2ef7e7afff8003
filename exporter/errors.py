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
