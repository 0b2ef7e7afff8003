"""The one error a user program fails with: which program, a short reason (the label of
podsnoop_program_errors_total), what happened and the fix. The manager logs it as one line
and counts it; nothing a user program does may end podsnoop or print a traceback."""
from __future__ import annotations

from ..errors import PodsnoopError

# spec: the YAML, or a file of the pair missing; compile: clang (bcc C); object: a .bpf.o
# libbpf cannot open; verifier: the kernel refused a program; maps: a map missing, of
# another layout than the spec, or refused by the kernel; name_conflict: a metric podsnoop
# exports; attach: a program could not be attached.
REASONS = ("spec", "compile", "object", "verifier", "maps", "name_conflict", "attach",
           "internal")


class ProgramError(PodsnoopError):
    def __init__(self, program: str, reason: str, message: str, fix: str):
        super().__init__(message, fix)
        self.program = program
        self.reason = reason
