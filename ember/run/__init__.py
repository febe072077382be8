"""Runs: `fit` (a trainer with checkpoints, resume, NaN guard, TensorBoard and a graceful stop), the run's record
saved in its checkpoints, and its folder."""

from ember.run.fit import fit
from ember.run.folder import latest_run_dir, make_run_dir, new_run_id, run_record, saved_run
from ember.run.record import MAY_DIFFER, RUN_KEY, RunError, RunRecord, RunResult, differing, epoch_of, finished

__all__ = [
    "MAY_DIFFER",
    "RUN_KEY",
    "RunError",
    "RunRecord",
    "RunResult",
    "differing",
    "epoch_of",
    "finished",
    "fit",
    "latest_run_dir",
    "make_run_dir",
    "new_run_id",
    "run_record",
    "saved_run",
]
