"""What a logged model ships: the project modules its pyfunc class imports, directly or not
(as `code_paths`), and a pinned requirement for every third-party package they import.

The modules are found by reading their import statements (every import anywhere in a module,
so lazily imported ones too), starting from `pipelines/tracking/pyfunc_models.py`. Each package
on the way ships a one-line `__init__.py`: the project's own package files re-export more than a
served model needs (`pipelines.tracking` the whole tracking package), and a served model
imports its modules by their full names.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the folder holding features/, models/, pipelines/
PACKAGES = ("features", "models", "pipelines")
ENTRY = ROOT / "pipelines" / "tracking" / "pyfunc_models.py"
ALWAYS = ("mlflow", "cloudpickle")  # what loads any pyfunc model


def imports_of(path: Path) -> tuple[set[Path], set[str]]:
    """The project module files `path` imports, and the top-level names of the other modules
    it imports."""
    files, others = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        modules = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for module in modules:
            parts = module.split(".")
            if parts[0] not in PACKAGES:
                others.add(parts[0])
                continue
            candidate = ROOT.joinpath(*parts).with_suffix(".py")
            if candidate.is_file():
                files.add(candidate)
    return files, others


@functools.lru_cache(maxsize=4)
def closure(entry: Path = ENTRY) -> tuple[tuple[Path, ...], frozenset[str]]:
    """Every project module `entry` needs (itself included), and their third-party imports;
    read once per process (a run logs its code and its requirements from the same walk)."""
    seen, todo, others = set(), [entry], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        files, names = imports_of(path)
        todo += files
        others |= names
    others -= set(sys.stdlib_module_names) | {"__future__"}
    return tuple(sorted(seen)), frozenset(others)


def write_code(folder: Path, entry: Path = ENTRY) -> list[str]:
    """Copies the modules `entry` needs into `folder`, in their packages; returns the
    top-level package folders, for `log_model(code_paths=...)`."""
    modules, _ = closure(entry)
    for module in modules:
        relative = module.relative_to(ROOT)
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(module.read_bytes())
        for package in relative.parents:
            if package != Path("."):
                init = folder / package / "__init__.py"
                if not init.exists():
                    init.write_text('"""Shipped with a served model."""\n')
    return sorted(str(folder / package) for package in PACKAGES if (folder / package).is_dir())


def requirements(entry: Path = ENTRY) -> list[str]:
    """`name==version` of the installed distribution of every third-party module the shipped
    code imports, and of what loads a pyfunc model; explicit, so MLflow skips its ~20 s
    requirement inference. Worked out once per process (listing the installed distributions
    takes about 0.3 s)."""
    return list(pinned_requirements(entry))


@functools.lru_cache(maxsize=4)
def pinned_requirements(entry: Path) -> tuple[str, ...]:
    """`requirements`, cached."""
    _, others = closure(entry)
    owners = importlib.metadata.packages_distributions()
    distributions = set(ALWAYS)
    for name in others:
        if name not in owners:
            raise RuntimeError(f"no installed distribution provides module {name!r}, which the "
                               "served model's code imports")
        distributions |= set(owners[name])
    return tuple(sorted(f"{name}=={importlib.metadata.version(name)}"
                        for name in distributions))
