"""ember's benchmark programs; run them from the repository root (benchmarks/README.md lists them)."""
