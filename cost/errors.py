"""Errors a user can act on.

Every failure caused by bad input raises `PipeplanError` (or a subclass) with a message
that fits on one line and names the file, field or value at fault. The CLI prints
`error: <message>` and exits with `exit_code`: 2 for bad input, 3 for a model that cannot
fit the cluster. Anything else reaching the CLI is a bug in pipeplan.
"""

from __future__ import annotations


class PipeplanError(Exception):
    """Bad input: one clear line, exit code 2."""

    exit_code = 2


class DoesNotFitError(PipeplanError):
    """The model cannot fit the given devices: exit code 3."""

    exit_code = 3
