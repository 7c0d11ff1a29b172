"""The errors the data, feature and model code raise for a problem the user can fix: an
option's value, a data folder, a split, a file. The command line reports each as
`error: ...` (exit status 2) without a traceback; any other exception is a bug and shows its
traceback (see pipelines.cli).
"""

from __future__ import annotations

import contextlib
import errno
import math
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # no space, file-size limit, quota


class PipelineError(Exception):
    """A problem the user can fix; its message names the value, file or folder and what was
    expected."""


class ConfigError(PipelineError, ValueError):
    """An option value outside what it accepts, or options that cannot be combined."""


def require_at_least(config: Any, minimums: Mapping[str, float]) -> None:
    """Raises ConfigError naming the first of `config`'s options below its minimum, or not a
    finite number."""
    for name, low in minimums.items():
        value = getattr(config, name)
        if not ((isinstance(value, int) or math.isfinite(value)) and value >= low):
            raise ConfigError(f"{name} must be a number >= {low:g}, got {value}")


def require_positive(config: Any, names: Sequence[str]) -> None:
    """Raises ConfigError naming the first of `config`'s options that is not a finite
    number > 0."""
    for name in names:
        value = getattr(config, name)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be a number > 0, got {value}")


def require_fraction(config: Any, names: Sequence[str]) -> None:
    """Raises ConfigError naming the first of `config`'s options not within [0, 1) (a rate
    such as dropout, where 1 would leave nothing)."""
    for name in names:
        value = getattr(config, name)
        if not 0 <= value < 1:
            raise ConfigError(f"{name} must be within [0, 1), got {value}")


def require_seed(config: Any, names: Sequence[str]) -> None:
    """Raises ConfigError naming the first of `config`'s options that is not a seed NumPy
    takes (an integer in [0, 2**32))."""
    for name in names:
        value = getattr(config, name)
        if not 0 <= value < 2**32:
            raise ConfigError(f"{name} must be a seed in [0, 2**32), got {value}")


class DataError(PipelineError, ValueError):
    """Data that cannot be used as given: a folder's layout, a split too small, a label."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data folder or file that does not exist."""


def require_folder(path: str | Path, what: str, hint: str = "") -> Path:
    """`path` as a Path when it is a folder.

    Raises:
        DataNotFoundError: naming `what` and `path`, whether it is missing or a file, then
            `hint` (what to pass or what layout is expected).
    """
    path = Path(path)
    if not path.is_dir():
        problem = f"{what} {path} is not a folder" if path.exists() else \
            f"{what} not found: {path}"
        raise DataNotFoundError(problem + (f" ({hint})" if hint else ""))
    return path


def utf8_name(name: str) -> bool:
    """Whether a file name read from the file system is UTF-8 (Python keeps other bytes of a
    name as surrogates, which no digest, log or MLflow record can encode)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_name(name: str) -> str:
    """A file name as text that can be printed and logged: bytes that are not UTF-8 as
    `\\xNN`."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def require_data_dir(data_dir: str | None, env: str, dataset: str) -> Path:
    """The data folder given by `--data-dir` or the variable `env`, checked before any work.

    Raises:
        ConfigError: No folder given.
        DataNotFoundError: The folder is missing or not a folder.
    """
    if not data_dir:
        raise ConfigError(f"no data folder: pass --data-dir or set {env}")
    return require_folder(data_dir, f"{dataset} data folder")


class DiskFullError(PipelineError, OSError):
    """The disk holding a folder the run writes (or the process's file-size limit) ran out."""


@contextlib.contextmanager
def disk_space_errors(folder: Path, partial: Path) -> Iterator[None]:
    """Turns a full disk, quota or file-size limit while writing `partial` (a file or folder
    under `folder`) into a DiskFullError naming the folder, with `partial` removed."""
    try:
        yield
    except OSError as error:
        if error.errno not in DISK_FULL_ERRNOS:
            raise
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
        raise DiskFullError(f"no space left to write {folder} ({error.strerror}); the "
                            f"partial {partial.name} was removed: free space there or choose "
                            "another folder with its option") from error
