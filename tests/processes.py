"""Helpers for tests that start real processes on loopback: a port to give them, and waiting
for what they print or serve."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def free_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(check: Callable[[], bool], what: str, process: subprocess.Popen, log: Path,
               timeout: float = 120, interval: float = 0.5) -> None:
    """Polls `check` until it holds; fails with the end of `log` when `process` ends first or
    `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not check():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {timeout:g} s or at the process's "
                        f"exit (status {process.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(interval)
