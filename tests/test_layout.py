"""The codebase's boundaries: MLflow behind one package, training without it, short modules."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCT = [path for folder in ("features", "models", "pipelines", "benchmarks")
           for path in sorted((REPO / folder).rglob("*.py"))]
MAX_LINES = 400


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_tracking_package_imports_mlflow():
    tracking = REPO / "pipelines" / "tracking"
    importers = [path.relative_to(REPO).as_posix() for path in PRODUCT
                 if "mlflow" in imported_modules(path) and tracking not in path.parents
                 and path.parent.name != "benchmarks"]
    assert importers == []
    assert "mlflow" in imported_modules(tracking / "runs.py")  # the check looks at imports


def project_imports(path: Path) -> set[Path]:
    """The project's modules `path` imports (features, models, pipelines), as files."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        modules = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:  # a module, or its submodules
            modules = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for module in modules:
            parts = module.split(".")
            if parts[0] not in ("features", "models", "pipelines"):
                continue
            candidates = [REPO.joinpath(*parts).with_suffix(".py"),
                          REPO.joinpath(*parts, "__init__.py")]
            found |= {candidate for candidate in candidates if candidate.is_file()}
    return found


def test_training_imports_no_mlflow():
    """`pipelines.training` and every project module it imports, directly or not, import no
    MLflow (the third-party packages they import, Keras and TensorFlow, do not either)."""
    seen, todo = set(), [REPO / "pipelines" / "training.py"]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += project_imports(path)
    assert REPO / "pipelines" / "distribute.py" in seen  # the walk follows imports
    assert [path.name for path in seen if "mlflow" in imported_modules(path)] == []


def test_no_module_is_longer_than_the_limit():
    long = {path.relative_to(REPO).as_posix(): lines for path in PRODUCT
            if (lines := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def distribution_key(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): `scikit_learn` is `scikit-learn`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The distribution a requirement (`keras>=3.6,<3.16`, `psycopg[binary]`) names."""
    return distribution_key(re.match(r"[A-Za-z0-9._-]+", requirement).group())


def test_every_imported_third_party_package_is_a_declared_dependency():
    """The packages the product imports are in pyproject's `dependencies`, not installed only
    because something else pulls them in."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {requirement_name(requirement) for requirement in project["dependencies"]}
    packages = [path for path in PRODUCT if path.parent.name != "benchmarks"]
    modules = set().union(*map(imported_modules, packages)) - set(sys.stdlib_module_names) \
        - {"features", "models", "pipelines"}
    assert {"sklearn", "keras", "mlflow"} <= modules  # the scan sees the imports
    providers = importlib.metadata.packages_distributions()
    undeclared = {module: providers.get(module) for module in sorted(modules)
                  if not declared & {distribution_key(name) for name in providers.get(module, [])}}
    assert undeclared == {}
