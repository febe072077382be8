"""Training and evaluation throughput of a recipe's set-up: the seed's own loop, ignite, Lightning and ember.

One runner per framework: seed_loop.py (the plain PyTorch loops), ignite_loop.py, lightning_loop.py and
ember_loop.py, each given a Job (job.py) over the data of setups.py; cli.py measures and reports them.
Run: python -m benchmarks.throughput --device cpu --recipe fashion-mnist-mlp [--epochs 1] [--repeats 3]
     [--warmup-epochs 0] [--limit-samples N] [--loops seed,ember] [--json out.json]
     (or python benchmarks/throughput ...)
"""
