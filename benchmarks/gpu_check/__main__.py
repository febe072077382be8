"""`python -m benchmarks.gpu_check OUTDIR [--cpu-dry-run]`: the GPU check's command line."""

from benchmarks.gpu_check.cli import main

raise SystemExit(main())
