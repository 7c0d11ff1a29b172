"""Ctrl-C and SIGTERM: both end a run as an interruption (KeyboardInterrupt), at a safe point.

Raising from a signal handler while TensorFlow is inside a step can run Python code that the
runtime called back into (a tf.data generator, a NumPy function) and corrupt its state; so
while a Keras fit, evaluate or predict runs, the handler only records the signal and
`InterruptCallback` raises it at the end of the current batch, in plain Python.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import keras

from pipelines.errors import Terminated

T = TypeVar("T")

_deferring = 0
_installed = 0
_pending: KeyboardInterrupt | None = None


def _handle(signum, frame):
    global _pending
    error = Terminated(f"signal {signum}") if signum == signal.SIGTERM else KeyboardInterrupt()
    if _deferring and _pending is None:
        _pending = error
        return
    raise error  # outside Keras, or a second signal: at once


@contextlib.contextmanager
def handle_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated and Ctrl-C KeyboardInterrupt, deferred to a
    batch end during Keras loops; the previous handlers are restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _installed
    previous = {signum: signal.signal(signum, _handle)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    _installed += 1
    try:
        yield
    finally:
        _installed -= 1
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def blocking_call() -> Iterator[None]:
    """Around a call that blocks in TensorFlow without returning to Python (making a
    MultiWorkerMirroredStrategy waits there for every worker of the cluster): Ctrl-C ends the
    process at once (nothing was started yet), since Python's handler could not run before the
    call returns. After the call this module's handlers are installed again, also for SIGTERM,
    which the strategy's coordination service takes over with its own C-level handler (for
    TensorFlow's preemption notices) so that Python's would never run."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_DFL) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
            if _installed:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(signum, _handle)


def raise_pending() -> None:
    """Raises the signal recorded while deferred, if any, and forgets it."""
    global _pending
    if _pending is not None:
        error, _pending = _pending, None
        raise error


class InterruptCallback(keras.callbacks.Callback):
    """Raises a signal recorded by `handle_interrupts` at the next batch end."""

    def _raise_pending(self, *args, **kwargs):
        raise_pending()

    on_train_batch_end = on_test_batch_end = on_predict_batch_end = _raise_pending
    on_epoch_end = _raise_pending


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Defers signals to InterruptCallback while a Keras loop runs; a signal recorded but not
    yet raised when the loop ends is raised on leaving the block, also when the loop ended
    with another error (which it then carries as its context), so none is lost or raised
    later in another loop."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring:
            raise_pending()


def at_batch_end(loop: Callable[..., T], *args, callbacks=(), **kwargs) -> T:
    """Runs a Keras loop (a model's `fit`, `evaluate` or `predict`) with signals deferred to
    the end of a batch: InterruptCallback before `callbacks`."""
    with deferred():
        return loop(*args, callbacks=[InterruptCallback(), *callbacks], **kwargs)


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """The shell's status for a process ended by the interrupt's signal: 128 + its number."""
    return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)


INTERRUPTED = (128 + signal.SIGINT, 128 + signal.SIGTERM)  # the statuses exit_status gives
# a multi-worker run lost a worker (errors.WorkerLost): sysexits' EX_TEMPFAIL, "try again"
WORKER_LOST = 75


def exit_process(status: int) -> None:
    """Exits a command-line process with `status`.

    After an interruption the process exits at once, without the interpreter's teardown: a
    tf.data pipeline stopped mid-epoch holds a prefetch thread waiting to run Python (a
    generator), and destroying its iterator at teardown, with the interpreter lock held,
    waits for that thread forever. So does a process that lost a worker of its cluster, whose
    aborted collective ops also leave TensorFlow's thread pools failing at teardown. The run
    was ended and the output flushed before. The temporary module files TensorFlow's
    autograph writes, which it removes at exit, are removed here.
    """
    if status in (*INTERRUPTED, WORKER_LOST):
        remove_autograph_modules()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


AUTOGRAPH_MODULES = "__autograph_generated_file"  # autograph's prefix for its module files


def remove_autograph_modules() -> None:
    """Removes the files of the modules autograph wrote for the functions it converted (in the
    temporary folder; TensorFlow removes them in an `atexit` handler, which `os._exit` skips)."""
    for name, module in list(sys.modules.items()):
        if name.startswith(AUTOGRAPH_MODULES) and getattr(module, "__file__", None):
            with contextlib.suppress(FileNotFoundError):
                os.remove(module.__file__)
