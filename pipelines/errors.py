"""Errors a run reports to the user as `error: ...` with no traceback (exit status 2 for a run
that cannot start, 75 for a multi-worker run that lost a worker)."""

from __future__ import annotations


class SetupError(RuntimeError):
    """The run cannot start: an unreachable tracking server, a folder that cannot be
    written, a run that cannot be resumed. Raised before any data or feature work."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that a run ends KILLED."""


class WorkerLost(RuntimeError):
    """A multi-worker run lost a worker (it stopped, crashed or became unreachable) while
    training; the run ends FAILED and nothing is registered."""
