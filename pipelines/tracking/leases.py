"""Who is running a RUNNING run: the lease a training process holds on its MLflow run, and
`--resume` taking an interrupted run over.

A run that dies hard (SIGKILL, the OOM killer, a power cut, or a tracking server that went
away so that its end could not be recorded) stays RUNNING in the store. To tell such a run
from one still training, the process tags its run with its host, pid and process start time
(`lease.host`, `lease.pid`, `lease.process_started`) and renews `lease.heartbeat` (Unix
seconds) every HEARTBEAT_SECONDS from a background thread. `--resume` takes over a RUNNING
run only when its process is provably gone: on the same host, no live process has that pid
and start time; on another host, the heartbeat is older than LEASE_SECONDS.

"The same host" is the same host name and the same machine and process namespace
(`lease.machine`: /etc/machine-id and the pid namespace), so two containers or machines that
share a host name do not judge each other's pids. Heartbeats are compared with the resuming
host's clock: the hosts sharing a tracking server are assumed to keep their clocks within a
minute of each other (NTP); a heartbeat from the future is never taken for an old one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import psutil
import requests
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.errors import SetupError
from pipelines.tracking.stores import connect, redact, store_database, store_lock

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30.0
LEASE_SECONDS = 120.0  # four missed heartbeats: the process on another host is gone
HOST, PID, PROCESS_STARTED, HEARTBEAT = ("lease.host", "lease.pid", "lease.process_started",
                                         "lease.heartbeat")
MACHINE = "lease.machine"


@functools.cache
def machine() -> str:
    """This process's machine and pid namespace: /etc/machine-id and the namespace's inode
    (either empty where the system has none)."""
    try:
        machine_id = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine_id = ""
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = ""
    return f"{machine_id}:{namespace}"


def process_started(pid: int) -> float | None:
    """When process `pid` started (Unix seconds), or None when no such process exists."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def holder_tags() -> dict[str, str]:
    """This process's lease: its host, pid and start time, and a fresh heartbeat."""
    return {HOST: socket.gethostname(), MACHINE: machine(), PID: str(os.getpid()),
            PROCESS_STARTED: repr(process_started(os.getpid())), HEARTBEAT: repr(time.time())}


def why_holder_is_gone(run_id: str, tags: Mapping[str, str], now: float | None = None) -> str:
    """Why the process holding RUNNING run `run_id` is known to be gone (for the message
    that the run is taken over).

    Raises:
        SetupError: The process is alive (or may be: a lease on another host renewed within
            LEASE_SECONDS), or the run has no lease to tell.
    """
    if HOST not in tags or PID not in tags:
        raise SetupError(f"--resume {run_id}: the run is RUNNING and holds no lease (host, "
                         "pid) to tell whether its process is alive; only KILLED or FAILED "
                         "runs, or RUNNING runs whose process is gone, can be resumed")
    host, pid = tags[HOST], int(tags[PID])
    if host == socket.gethostname() and tags.get(MACHINE, machine()) == machine():
        started = process_started(pid)
        if started is not None and abs(started - float(tags.get(PROCESS_STARTED, "nan"))) < 1:
            raise SetupError(f"--resume {run_id}: the run is RUNNING and its process (pid "
                             f"{pid} on this host) is alive; stop it first (Ctrl-C or kill "
                             f"{pid} ends the run KILLED)")
        return f"its process (pid {pid} on this host) no longer exists"
    age = (time.time() if now is None else now) - float(tags.get(HEARTBEAT, "0"))
    if age < 0:
        raise SetupError(f"--resume {run_id}: the run is RUNNING on {host} (pid {pid}), whose "
                         f"lease was renewed {-age:.0f} s ahead of this host's clock; set "
                         "the hosts' clocks (NTP), and resume once its lease has expired")
    if age < LEASE_SECONDS:
        raise SetupError(f"--resume {run_id}: the run is RUNNING on {host} (pid {pid}), whose "
                         f"lease was renewed {age:.0f} s ago; if that process is gone, resume "
                         f"after its lease expires ({LEASE_SECONDS - age:.0f} s)")
    return f"its process (pid {pid} on {host}) has not renewed its lease for {age:.0f} s"


def holder_alive(run_id: str, tags: Mapping[str, str]) -> bool:
    """Whether the process holding RUNNING run `run_id` is alive, or may be
    (`why_holder_is_gone` cannot say it is gone)."""
    try:
        why_holder_is_gone(run_id, tags)
    except SetupError:
        return True
    return False


class Heartbeat:
    """Renews the lease of run `run_id` every `interval` seconds until stopped (a context
    manager). A renewal that fails (the server is briefly away) is logged and retried at the
    next beat; the lease then simply ages."""

    def __init__(self, run_id: str, interval: float = HEARTBEAT_SECONDS):
        self.run_id = run_id
        self.interval = interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.beat, name=f"lease {run_id}", daemon=True)
        self.client = MlflowClient()

    def __enter__(self) -> Heartbeat:
        self.client.log_batch(self.run_id, tags=[RunTag(key, value)
                                                 for key, value in holder_tags().items()])
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopped.set()
        # a renewal stuck in the client's retries (a server gone away) must not hold up the
        # end of the run; the daemon thread ends with the process
        self.thread.join(timeout=5)

    def beat(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.client.set_tag(self.run_id, HEARTBEAT, repr(time.time()))
            except (MlflowException, requests.RequestException) as error:
                log.warning("could not renew the lease of run %s: %s", self.run_id, error)


def interrupted_run(run_id: str, tracking_uri: str | None, store_dir: str | Path):
    """The run `--resume` continues: its logged parameters and tags.

    A RUNNING run is taken over only when the process holding it is gone (see
    pipelines.tracking.leases); the takeover is logged with the reason.

    Returns:
        (params, tags) of the run.

    Raises:
        SetupError: No such run, it is deleted, RUNNING with a live (or unknown) process, or
            already FINISHED.
    """
    connect(tracking_uri, store_dir)
    run, why = resumable_run(run_id, tracking_uri, store_dir)
    if why:
        log.warning("--resume %s: taking over a dead run that is still marked RUNNING: %s",
                    run_id, why)
    return dict(run.data.params), dict(run.data.tags)


def resumable_run(run_id: str, tracking_uri: str | None, store_dir: str | Path):
    """Run `run_id` of the connected store, if `--resume` may continue it, and why its holder
    is gone when it is RUNNING (else "").

    Raises:
        SetupError: As `interrupted_run`.
    """
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException as error:
        raise SetupError(redact(f"--resume {run_id}: no such run in "
                                f"{tracking_uri or store_dir} ({error.message})")) from error
    if run.info.lifecycle_stage == "deleted":
        raise SetupError(f"--resume {run_id}: the run is deleted; `mlflow runs restore "
                         f"--run-id {run_id}` (with MLFLOW_TRACKING_URI set to its store) "
                         "brings it back to be resumed")
    if run.info.status == "RUNNING":
        return run, why_holder_is_gone(run_id, dict(run.data.tags))
    if run.info.status not in ("KILLED", "FAILED"):
        raise SetupError(f"--resume {run_id}: the run is {run.info.status}; only KILLED or "
                         "FAILED runs, or RUNNING runs whose process is gone, can be resumed")
    return run, ""


def take_over(run_id: str, tracking_uri: str | None, store_dir: str | Path) -> Any:
    """Reopens interrupted run `run_id` for this process, if it is still resumable: checked
    again and marked as this process's (its lease) in one step, under the store's lock for a
    local store, so that of two `--resume` of one run started together the second is refused
    (it had been checked before either did its data work). The note of an earlier failure
    goes.

    Returns:
        The active run.

    Raises:
        SetupError: The run can no longer be resumed (`resumable_run`).
    """
    database = store_database(tracking_uri, store_dir)
    with store_lock(database) if database is not None else contextlib.nullcontext():
        run, _ = resumable_run(run_id, tracking_uri, store_dir)
        started = mlflow.start_run(run_id=run_id)
        MlflowClient().log_batch(run_id, tags=[RunTag(key, value) for key, value
                                               in holder_tags().items()])
    if "error" in run.data.tags:  # an earlier failure's note (note_failure): the run goes on
        for key in ("error", "mlflow.note.content"):  # the second: its description
            if key in run.data.tags:
                MlflowClient().delete_tag(run_id, key)
    return started


def running_elsewhere(runs: Sequence[tuple[str, str, dict]]) -> list[str]:
    """Of `runs` (`find_runs`), those RUNNING in another live process, by their lease (a run
    without one, killed before it took it or older than leases, is not counted)."""
    own = {HOST: socket.gethostname(), MACHINE: machine(), PID: str(os.getpid())}
    return [run_id for run_id, status, tags in runs
            if status == "RUNNING" and HOST in tags and PID in tags
            and {key: tags.get(key) for key in own} != own and holder_alive(run_id, tags)]
