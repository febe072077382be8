"""What checkpoint integrity costs: a save plus a load of the fashion-mnist-mlp checkpoint, now vs before.

"before" is `ember/callbacks/checkpoint.py` as it was at a git revision (`--baseline`, default the commit before
the integrity check), run in this same process; "now" is this tree's `Checkpoint`, which also checks every
record's CRC-32, the structure, counters, RNG states and finiteness on load. Both save the recipe's objects
(model, SGD optimizer, trainer) with the RNG states through `Checkpoint.save` (temp file, fsync, verified,
renamed) into `--dir` and load them back with `Checkpoint.load`; interleaved repeats (the order alternates),
medians with min..max. Run from the repository root:

    .venv/bin/python benchmarks/checkpoint_integrity.py [--repeats 40] [--dir bench-ckpt] [--same-rng] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # run as a script: import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks._report import add_json_option, markdown_table, publish, spread  # noqa: E402
from ember.callbacks import Checkpoint  # noqa: E402
from ember.recipes.fashion_mnist_mlp import NeuralNetwork  # noqa: E402
from ember.steps import create_trainer  # noqa: E402

BASELINE = "8020d78"  # the last commit before checkpoint integrity checks
PARTS = ("save", "load", "total")  # the timings of a round, in the table's order


def _module_at(revision: str, path: str, name: str) -> types.ModuleType:
    source = subprocess.run(["git", "show", f"{revision}:{path}"], capture_output=True, text=True, check=True).stdout
    module = types.ModuleType(name)
    module.__file__ = f"<{revision}:{path}>"
    sys.modules[name] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def baseline_checkpoint(revision: str, same_rng: bool = False) -> type:
    """The Checkpoint class of ember/callbacks/checkpoint.py at `revision`, with the RNG capture of
    ember/callbacks/rng.py at `revision` (lists of Mersenne Twister words): the code as it was. With
    `same_rng`, this tree's RNG capture instead, so that only the checks on load differ."""
    module = _module_at(revision, "ember/callbacks/checkpoint.py", "ember_checkpoint_baseline")
    if not same_rng:
        rng = _module_at(revision, "ember/callbacks/rng.py", "ember_rng_baseline")
        module.get_rng_state, module.set_rng_state = rng.get_rng_state, rng.set_rng_state
    return module.Checkpoint


def setup() -> dict[str, Any]:
    torch.manual_seed(0)
    model = NeuralNetwork()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    trainer = create_trainer(model, optimizer, nn.CrossEntropyLoss())
    trainer.run([(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)))], max_epochs=1)
    trainer.state.epoch_length, trainer.state.max_epochs = 938, 10  # the recipe's counters, mid-run
    return {"model": model, "optimizer": optimizer, "trainer": trainer}


def one_round(ckpt: Any, objects: dict[str, Any], step: int) -> tuple[float, float]:
    """Seconds for one save (at iteration `step`, replacing the previous file) and one load of that file."""
    objects["trainer"].state.iteration = step
    start = time.perf_counter()
    path = ckpt.save(objects["trainer"])
    saved = time.perf_counter()
    type(ckpt).load(path, objects)
    return saved - start, time.perf_counter() - saved


def measure(repeats: int, folder: str, revision: str, same_rng: bool) -> dict[str, Any]:
    impls = {"before": baseline_checkpoint(revision, same_rng), "now": Checkpoint}
    times: dict[str, dict[str, list[float]]] = {name: {part: [] for part in PARTS} for name in impls}
    objects = setup()
    ckpts = {name: cls(objects, os.path.join(folder, name), keep_last=1) for name, cls in impls.items()}
    for ckpt in ckpts.values():  # warm-up: page cache, allocator, lazy imports
        one_round(ckpt, objects, 2)
    for repeat in range(repeats):
        order = list(impls) if repeat % 2 == 0 else list(reversed(impls))
        for name in order:
            save, load = one_round(ckpts[name], objects, repeat + 3)
            for key, value in (("save", save), ("load", load), ("total", save + load)):
                times[name][key].append(value * 1e3)
    size = os.path.getsize(Checkpoint.latest(os.path.join(folder, "now")))
    report: dict[str, Any] = {"repeats": repeats, "baseline": revision, "same_rng": same_rng, "checkpoint_bytes": size,
                              "folder": os.path.abspath(folder), "python": platform.python_version(),
                              "torch": torch.__version__, "machine": platform.platform(), "ms": {}}
    for name, parts in times.items():
        report["ms"][name] = {key: spread(v) for key, v in parts.items()}
    before, now = report["ms"]["before"]["total"]["median"], report["ms"]["now"]["total"]["median"]
    report["total_ratio"] = now / before
    ratios = sorted(n / b for n, b in zip(times["now"]["total"], times["before"]["total"]))
    report["paired_ratio_median"] = statistics.median(ratios)
    return report


def table(report: dict[str, Any]) -> str:
    rng = ", 'before' with this tree's RNG capture" if report["same_rng"] else ""
    lines = [f"fashion-mnist-mlp checkpoint, {report['checkpoint_bytes']:,} bytes, {report['repeats']} interleaved "
             f"repeats, in {report['folder']}{rng}", ""]
    cells = [[name, *(f"{p['median']:.2f} ({p['min']:.2f}..{p['max']:.2f})" for p in map(parts.get, PARTS))]
             for name, parts in report["ms"].items()]
    lines += markdown_table(["code", "save ms", "load ms", "save + load ms"], cells, "llll")
    lines += ["", f"now / before (save + load, medians): {report['total_ratio']:.3f}; median of the paired "
                  f"ratios: {report['paired_ratio_median']:.3f}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40, help="interleaved save + load rounds per version")
    parser.add_argument("--dir", default="bench-ckpt", help="scratch folder for the files (removed at the end)")
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the code to compare with")
    parser.add_argument("--same-rng", action="store_true",
                        help="give 'before' this tree's RNG capture (tensors), to time only the checks on load")
    add_json_option(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        report = measure(args.repeats, args.dir, args.baseline, args.same_rng)
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
    publish(table(report), report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
