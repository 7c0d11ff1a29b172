"""Errors a run reports to the user as `error: ...` (exit status 2), with no traceback."""

from __future__ import annotations


class SetupError(RuntimeError):
    """The run cannot start: an unreachable tracking server, a folder that cannot be
    written, a run that cannot be resumed. Raised before any data or feature work."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that a run ends KILLED."""
