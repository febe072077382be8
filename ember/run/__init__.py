"""Runs: `fit` (a trainer with checkpoints, resume, NaN guard, TensorBoard and a graceful stop), the run's record
saved in its checkpoints, and its folder (`RunFolder`: created or opened, scanned once, locked for the run)."""

from ember.run.fit import fit
from ember.run.folder import RunFolder, latest_run_dir, new_run_id, place
from ember.run.record import MAY_DIFFER, RUN_KEY, RunError, RunRecord, RunResult, differing, epoch_of, finished

__all__ = [
    "MAY_DIFFER",
    "RUN_KEY",
    "RunError",
    "RunFolder",
    "RunRecord",
    "RunResult",
    "differing",
    "epoch_of",
    "finished",
    "fit",
    "latest_run_dir",
    "new_run_id",
    "place",
]
