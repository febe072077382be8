"""Checkpoint files: loading one all-or-nothing, finding the newest good one, resuming from it (layer 2: it
imports the engine and utils, never the handlers; the `Checkpoint` handler that saves them is in
`ember.callbacks`, with these same functions as `Checkpoint.load`, `.latest` and `.resume_latest`).

- `load(path, objects)` restores `objects` from one file, checking everything before anything changes.
- `latest(dirname)` is the newest complete file of a folder, by the iteration recorded inside it.
- `resume_latest(dirname, objects)` loads the newest file that can be resumed from, falling back past bad ones.
- `CheckpointError` (a file that cannot be saved or loaded) and `CorruptCheckpointError` (a damaged one).
- `HandlerStates`: the state of an engine's stateful handlers, which a checkpoint holds as "handlers".

The modules under it: `format` (the file, its errors and its integrity check), `folder` (naming, finding,
writing and keeping files), `safety` (the weights_only probe before a file gets its name), `finite` (NaN/Inf
checks of weights), `restore` (loading all or nothing), `handler_states` (handler states, and
`implicit_objects`, what a checkpoint holds without being asked), `async_writer` (the host snapshot and the
background writer of `Checkpoint(async_save=True)`) and `sharded` (checkpoint folders written by every rank
through torch.distributed.checkpoint, committed by a manifest).
"""

from ember.checkpoint.folder import latest
from ember.checkpoint.format import CheckpointError, CorruptCheckpointError
from ember.checkpoint.handler_states import HandlerStates
from ember.checkpoint.restore import load, resume_latest

__all__ = ["CheckpointError", "CorruptCheckpointError", "HandlerStates", "latest", "load", "resume_latest"]
