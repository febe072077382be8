"""`ember` with test-only trainer hooks, for the subprocess tests of tests/reliability/test_reliability_*.py.

    python cli_child.py [--pace S] [--pause-at K --pause S [--stuck]] -- train RECIPE [flags]

prints `ITER k` after each training iteration (after that iteration's checkpoint is written), sleeps S per
iteration (--pace) or only after iteration K (--pause-at: until a stop is asked for, or regardless of it
with --stuck), then exits with ember's exit status.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, which holds harness.py

from harness import hooked_trainers  # noqa: E402

from ember.recipes.cli import main  # noqa: E402

if __name__ == "__main__":
    split = sys.argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("--pace", type=float, default=0.0)
    parser.add_argument("--pause-at", type=int, default=None)
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--stuck", action="store_true")
    args = parser.parse_args(sys.argv[1:split])
    with hooked_trainers(report=True, pace=args.pace, pause_at=args.pause_at, pause=args.pause, stuck=args.stuck):
        code = main(sys.argv[split + 1 :])
    sys.stdout.flush()
    raise SystemExit(code)
