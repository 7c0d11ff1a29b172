"""The errors a run reports to the user as `error: ...` with no traceback (exit status 2 for
a run that cannot start or a model that cannot be used: every `PipelineError`, the data and
model code's own in features.errors; 75 for a multi-worker run that lost a worker)."""

from __future__ import annotations

from features.errors import ConfigError, DataError, DataNotFoundError, PipelineError

__all__ = ["ConfigError", "DataError", "DataNotFoundError", "DivergedError", "ModelError",
           "PipelineError", "SetupError", "Terminated", "WorkerLost"]


class SetupError(PipelineError, RuntimeError):
    """The run cannot start: an unreachable tracking server, a folder that cannot be
    written, a run that cannot be resumed. Raised before any data or feature work."""


class DivergedError(ConfigError):
    """A fit that ends with weights that are not finite: every epoch it could keep (early
    stopping's best, or those averaged) diverged, so the options (a learning rate too high)
    do not train. Nothing is registered; a sweep fails that trial only."""


class ModelError(PipelineError, RuntimeError):
    """A logged or registered model that cannot be used: no such version, or its artifacts
    are missing or damaged. The message names the model and what is wrong."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that a run ends KILLED."""


class WorkerLost(RuntimeError):
    """A multi-worker run lost a worker (it stopped, crashed or became unreachable) while
    training; the run ends FAILED and nothing is registered."""
