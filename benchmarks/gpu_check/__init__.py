"""The GPU check: ember's CUDA paths tested and timed in one time-boxed command (`benchmarks/gpu_check.sh`).

`python -m benchmarks.gpu_check OUTDIR [--cpu-dry-run]` runs the parts below in this order, each in a worker
process of its own (a crash, a CUDA error or an overrun ends that part only), each with a time limit, and
writes OUTDIR/<part>.json, OUTDIR/report.md and OUTDIR/logs/. `--cpu-dry-run` runs the same parts on the CPU
with tiny sizes in one worker, every CUDA-only check reporting "skipped: no CUDA device": the test suite runs
it so the script cannot rot while no GPU is lent.

Modules: cli (the runner: workers, time limits, report; standard library only, so a broken environment
still gets a report), worker (runs parts inside a worker), parts (the registry, the sizes, the context),
correctness, speed and machine (the parts), report (the markdown report and the issue's goals).
"""
