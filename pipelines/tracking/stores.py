"""Which MLflow store a command talks to, and connecting to it: the SQLite store of a folder
(`--store-dir`), a `sqlite:///` URI, or a tracking server (checked before any work), with the
passwords of a server's URI kept out of MLflow's messages and the project's; where the
experiments a run creates keep their artifacts."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.store.db.db_types import DATABASE_ENGINES
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request

from pipelines.errors import SetupError

DB_NAME = "mlflow.db"
SERVER_PROBE = "/api/2.0/mlflow/experiments/search"  # what check_tracking asks a server
SEARCH_ANSWER_KEYS = {"experiments", "next_page_token"}  # each left out when empty
URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database

# a URI's `user:password@` (a database URI's password may hold a "/", which an HTTP one must
# escape, and ends at its first "@" as SQLAlchemy reads it; an HTTP one at the host's "@", the
# last before the path, as urllib reads it), and the password a database URI may pass in its
# query instead (`?password=...`, SQLAlchemy hands it to the driver)
CREDENTIALS = re.compile(
    r"(?P<scheme>(?<![a-zA-Z0-9+.-])"
    r"(?:(?P<database>(?:postgresql|mysql|mariadb|mssql|oracle)(?:\+\w+)?)|"
    r"[a-zA-Z][a-zA-Z0-9+.-]*)://)(?P<user>[^:/@\s]*):"
    r"(?P<password>(?(database)[^@\s]{1,256}?|[^/\s?#]+?(?=@[^@/\s?#]*(?:[/?#\s]|$))))@")
QUERY_PASSWORD = re.compile(r"(?P<key>[?&](?:ssl)?password=)[^&\s]+", re.IGNORECASE)
CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
NAMED_STORES = ("databricks", "databricks-uc", "uc")  # URIs without "://" that are no path
# a server's HOST:PORT typed without its scheme (`localhost:5000`, `127.0.0.1:5000/`)
SCHEMELESS_SERVER = re.compile(r"(?:[\w.-]{2,}|\[[0-9a-fA-F:.]+\]):\d{1,5}/?")
# the schemes MLflow has a tracking store for, besides files (plugins add theirs by entry point)
TRACKING_SCHEMES = ("http", "https", *NAMED_STORES, *DATABASE_ENGINES)


def redact(text: str) -> str:
    """`text` with the password of every URI in it (`scheme://user:password@host`, or a
    `password=` query parameter) replaced by `***`: what is logged, tagged or printed about a
    tracking URI."""
    return QUERY_PASSWORD.sub(r"\g<key>***", CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", text))


class RedactingFilter(logging.Filter):
    """Redacts URI passwords from every record a handler writes (`redact`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def move_credentials_to_env(uri: str) -> str:
    """An HTTP tracking URI without its `user:password@`, which MLflow then sends from
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (set here unless the user set them):
    MLflow prints the URI of an HTTP store (its run links), so it must not hold the password.
    Other URIs (a database's) are returned as they are; only their logged forms are
    redacted."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or parts.password is None:
        return uri
    for name, value in zip(CREDENTIAL_VARIABLES, (parts.username, parts.password),
                           strict=True):
        os.environ.setdefault(name, unquote(value or ""))
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


def local_store_uri(store_dir: str | Path) -> str:
    """The SQLite tracking URI of a local store folder (`<store_dir>/mlflow.db`). SQLAlchemy
    reads a `?` as the start of options and decodes `%XX`, so the path's `%` and `?` are
    percent-encoded (a folder `a?b` would otherwise be the file `a`, and `a%20b` the folder
    `a b`); `sqlite_database` reads it back. (MLflow makes the database's folder from the
    encoded path too: such a folder name leaves an empty folder of the encoded name beside.)"""
    path = str(Path(store_dir).resolve() / DB_NAME)
    return f"sqlite:///{path.replace('%', '%25').replace('?', '%3F')}"


def connect(tracking_uri: str | None, store_dir: str | Path) -> str:
    """Points MLflow at `tracking_uri`, or at the local SQLite store in `store_dir`.

    MLflow also writes the URI into os.environ (for subprocesses); that is undone, so the
    process environment keeps meaning what the user set.

    An HTTP URI's credentials are passed to MLflow through its credential variables
    (`move_credentials_to_env`), so that MLflow never prints them.

    Returns:
        The tracking URI in use (redacted: `redact`).
    """
    if tracking_uri:
        uri = move_credentials_to_env(tracking_uri)
    else:
        Path(store_dir).mkdir(parents=True, exist_ok=True)
        uri = local_store_uri(store_dir)
    saved = {name: os.environ.get(name) for name in URI_VARIABLES}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    database = store_database(tracking_uri, store_dir)
    if database is not None:
        with store_lock(database):  # MLflow keeps the store it builds, once per process
            MlflowClient(uri).search_experiments(max_results=1)
    return redact(uri)


@contextlib.contextmanager
def store_lock(database: Path) -> Iterator[None]:
    """Holds an exclusive lock on `<database>.lock` beside a SQLite store while MLflow builds
    its tables: two processes migrating one new file at once both fail (duplicate columns,
    alembic's own table), as two runs started together on a new `--store-dir` would. Without
    POSIX file locks (Windows), none is taken."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        lock = open(database.with_name(f"{database.name}.lock"), "a")  # noqa: SIM115
    except OSError:  # a folder this process cannot write holds a store it can only read
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def is_file_store(tracking_uri: str | None) -> bool:
    """Whether MLflow would take `tracking_uri` for a file store: a `file:` URI, or anything
    without a scheme (`/...`, `mlruns`, `sub/dir`, `C:/...`) but the names of Databricks'
    stores."""
    if not tracking_uri:
        return False
    try:
        scheme = urlsplit(tracking_uri).scheme
    except ValueError:  # a URI that does not parse (check_tracking names a server's)
        scheme = tracking_uri.partition("://")[0] if "://" in tracking_uri else ""
    return (scheme == "file" or len(scheme) == 1  # a Windows drive: a path too
            or (scheme == "" and tracking_uri not in NAMED_STORES))


def server_uri_parts(uri: str):
    """`urlsplit(uri)` of a tracking server's URI.

    Raises:
        SetupError: `uri` is not a URI (an unclosed `[`, a port that is no number; the
            parser's own message is left out, as it may quote part of a password).
    """
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 (parsed on use: an invalid port raises here)
    except ValueError:  # shown without anything before its last @ (a password that broke it)
        shown = re.sub(r"://[^\s]*@", "://***@", uri)
        raise SetupError(f"{shown} is not a valid tracking URI: its host or port cannot be "
                         "read (a password holding / ? # @ must be %-escaped)") from None
    return parts


def require_database(tracking_uri: str, timeout: float) -> None:
    """Opens and closes one connection to a PostgreSQL tracking store through psycopg
    (MLflow would retry for minutes, after the data and features were prepared).

    Raises:
        SetupError: No connection within `timeout` seconds, or no driver for it.
    """
    import sqlalchemy  # on use: a server's database only
    from sqlalchemy.pool import NullPool

    try:
        engine = sqlalchemy.create_engine(tracking_uri, poolclass=NullPool, connect_args={
            "connect_timeout": max(1, round(timeout))})
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except ImportError as error:
        raise SetupError(redact(f"{tracking_uri}: the database driver is not installed "
                                f"({error}): install it")) from None
    except sqlalchemy.exc.SQLAlchemyError as error:
        cause = getattr(error, "orig", None) or error
        reason = " ".join(str(cause).split())[:300]
        raise SetupError(redact(f"cannot connect to the tracking database at "
                                f"{tracking_uri} ({type(cause).__name__}: {reason}); start it, "
                                "or unset MLFLOW_TRACKING_URI / --tracking-uri to use the "
                                "local store")) from None


def check_tracking(tracking_uri: str | None, timeout: float = 5.0) -> None:
    """Fails fast when the tracking store cannot be used, instead of MLflow's retries
    (minutes), or its refusal, after the data and features were prepared: an HTTP server must
    answer (`require_server`), a PostgreSQL database accept a connection (`require_database`),
    each within `timeout` seconds.

    A file store (a `file:` URI or a folder's path) is refused at once too: MLflow 3 refuses
    them unless MLFLOW_ALLOW_FILE_STORE=true.

    Raises:
        SetupError: A server or database that cannot be used; a server's address without
            `http://` (`127.0.0.1:5000`); a file store MLflow would refuse; a scheme MLflow has
            no store for.
    """
    if tracking_uri and SCHEMELESS_SERVER.fullmatch(tracking_uri):  # MLflow: a path, a scheme
        raise SetupError(f"{tracking_uri}: a tracking server's URI starts with its scheme: "
                         f"http://{tracking_uri} (or https://)")
    if is_file_store(tracking_uri):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
            raise SetupError(f"{redact(tracking_uri)} is a file store, which this MLflow "
                             "refuses: pass a database such as sqlite:///PATH/mlflow.db (`mlflow "
                             "migrate-filestore` moves a file store into one), or set "
                             "MLFLOW_ALLOW_FILE_STORE=true")
        return
    if not tracking_uri:
        return
    scheme, _, driver = tracking_uri.partition(":")[0].partition("+")  # postgresql+psycopg
    if scheme.lower() in DATABASE_ENGINES and scheme != scheme.lower():
        raise SetupError(f"{redact(tracking_uri)}: write the scheme in lower case, as the "
                         f"database layer reads it ({scheme.lower()}:)")
    scheme, driver = scheme.lower(), driver.lower()
    if scheme == "sqlite" and not tracking_uri.startswith("sqlite://"):
        raise SetupError(f"{redact(tracking_uri)}: an SQLite store's URI is sqlite:///PATH "
                         "(three slashes, then the path; four for an absolute one)")
    plugins = {entry.name for entry in entry_points(group="mlflow.tracking_store")}
    if scheme not in (*TRACKING_SCHEMES, *plugins):
        raise SetupError(f"{redact(tracking_uri)}: MLflow has no tracking store for "
                         f"'{scheme}:' URIs; give a server as http://HOST:PORT, or a database "
                         "as sqlite:///PATH, postgresql://..., mysql://...")
    if scheme == "postgresql" and driver in ("", "psycopg", "psycopg2"):  # connect_timeout
        require_database(tracking_uri, timeout)
    if scheme in ("http", "https"):
        require_server(tracking_uri, timeout)


def require_server(tracking_uri: str, timeout: float) -> None:
    """Sends an MLflow tracking server one request of its REST API (a search for one
    experiment), as MLflow sends requests: with the URI's or MLflow's credential variables and
    MLflow's TLS settings (MLFLOW_TRACKING_SERVER_CERT_PATH, ...). A server that refuses this
    client (HTTP 401 or 403: credentials, or a host name the server's `--allowed-hosts` does
    not list) is named with what to check.

    Raises:
        SetupError: No connection, no answer within `timeout` seconds, a refusal, or an answer
            that is not an MLflow server's.
    """
    shown = redact(tracking_uri)
    parts = server_uri_parts(tracking_uri)
    creds = get_default_host_creds(urlunsplit(parts._replace(
        netloc=parts.netloc.rpartition("@")[2])))
    if parts.password is not None:  # as connect passes them on: a variable set wins
        username, password = CREDENTIAL_VARIABLES
        if os.environ.get(username) is None:
            creds.username = unquote(parts.username or "")
        if os.environ.get(password) is None:
            creds.password = unquote(parts.password)
    try:
        answer = http_request(creds, SERVER_PROBE, "GET", max_retries=0, timeout=timeout,
                              raise_on_status=False, params={"max_results": 1})
    except (requests.RequestException, MlflowException) as error:
        raise SetupError(redact(  # the message may hold the URL too
            f"cannot reach the MLflow tracking server at {shown} "
            f"({type(error).__name__}: {error}); start it, or unset MLFLOW_TRACKING_URI / "
            "--tracking-uri to use the local store")) from None
    if answer.status_code in (401, 403):
        raise SetupError(f"the MLflow tracking server at {shown} refused this client (HTTP "
                         f"{answer.status_code}: {' '.join(answer.text.split())[:200]}): check the "
                         "credentials (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD), and "
                         "that the server's --allowed-hosts lists the host name used here")
    if answer.status_code >= 500:  # a server that is there, with a problem of its own
        raise SetupError(f"the MLflow tracking server at {shown} answered HTTP "
                         f"{answer.status_code} ({' '.join(answer.text.split())[:300]}): see "
                         "its log (its database may be down)")
    try:
        found = answer.json()  # an MLflow server's search answer holds only these keys
        valid = answer.ok and isinstance(found, dict) and set(found) <= SEARCH_ANSWER_KEYS
    except ValueError:  # not JSON: a proxy's page, another service
        valid = False
    if not valid:
        raise SetupError(f"{shown} is not an MLflow tracking server: {SERVER_PROBE} answered "
                         f"HTTP {answer.status_code} without MLflow's JSON; check "
                         "MLFLOW_TRACKING_URI / --tracking-uri")


def artifact_root(tracking_uri: str | None, store_dir: str | Path) -> Path | None:
    """Where the experiments a run creates keep their artifacts: `artifacts/` beside the SQLite
    database (`<store_dir>/artifacts` for the local store, the folder of the file a
    `sqlite:///` URI names otherwise), never MLflow's default `./mlruns` of the working
    directory; None for any other store (a tracking server has its own artifact root)."""
    if not tracking_uri:
        return Path(store_dir).resolve() / "artifacts"
    database = sqlite_database(tracking_uri)
    return None if database is None else database.resolve().parent / "artifacts"


def store_database(tracking_uri: str | None, store_dir: str | Path) -> Path | None:
    """The SQLite file a command's store is: `<store_dir>/mlflow.db` without a tracking URI,
    the file a `sqlite:///` URI names, None for another store (a server, sqlite:// in
    memory)."""
    return Path(store_dir) / DB_NAME if not tracking_uri else sqlite_database(tracking_uri)


def require_writable_store(tracking_uri: str | None, store_dir: str | Path) -> None:
    """Checks, before any work, that a SQLite store (`store_database`; a server's store is
    the server's) can take a new run: its file, where there is one, is an SQLite database
    this process may write, in a folder it may write (for SQLite's journal).

    Raises:
        SetupError: A folder in the database's place, a file that is not an SQLite database,
            or a database or folder that cannot be written; naming the path.
    """
    database = store_database(tracking_uri, store_dir)
    if database is None:
        return
    shown = redact(str(database))
    if database.is_dir():
        raise SetupError(f"the MLflow store's database {shown} is a folder: name a file "
                         "(sqlite:///PATH/mlflow.db)")
    if database.is_file():
        try:
            with open(database, "rb") as handle:
                header = handle.read(len(SQLITE_HEADER))
        except OSError as error:
            raise SetupError(f"the MLflow store's database {shown} cannot be read "
                             f"({error.strerror or error})") from None
        if header and header != SQLITE_HEADER:  # an empty file is a new database to SQLite
            raise SetupError(f"{shown} is not an SQLite database (it starts {header[:8]!r}): "
                             "name the store's mlflow.db, or a new file")
        if not os.access(database, os.W_OK):
            raise SetupError(f"the MLflow store's database {shown} is read-only: a run could "
                             "not be recorded; use a store you may write")
    if database.parent.is_dir() and not os.access(database.parent, os.W_OK):
        raise SetupError(f"the MLflow store's folder {redact(str(database.parent))} is "
                         "read-only: a run could not be recorded; use a store you may write")


def sqlite_database(tracking_uri: str | None) -> Path | None:
    """The database file a `sqlite:///PATH` tracking URI names (PATH relative to the working
    directory unless absolute), or None for another URI."""
    if not tracking_uri or not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(unquote(tracking_uri.removeprefix("sqlite:///").split("?")[0]))
