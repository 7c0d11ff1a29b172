"""`python benchmarks/run.py [options]`: the same as `python -m benchmarks`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.suite import main  # noqa: E402

sys.exit(main())
