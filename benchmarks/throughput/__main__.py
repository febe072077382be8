"""`python -m benchmarks.throughput` and `python benchmarks/throughput`: the throughput benchmark's command line."""

import sys
from pathlib import Path

if not __package__:  # run as `python benchmarks/throughput`: import the package from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from benchmarks.throughput.cli import main  # noqa: E402

raise SystemExit(main())
