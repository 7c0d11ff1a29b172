"""The codebase's boundaries: MLflow behind one package, training without it, short modules."""

from __future__ import annotations

import ast
import subprocess
import sys
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


def test_training_loads_no_mlflow():
    """`pipelines.training` and everything it imports run without MLflow."""
    probe = ("import sys, pipelines.training; "
             "print('mlflow' in sys.modules, 'keras' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["False", "True"]


def test_no_module_is_longer_than_the_limit():
    long = {path.relative_to(REPO).as_posix(): lines for path in PRODUCT
            if (lines := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
