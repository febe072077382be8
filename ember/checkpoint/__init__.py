"""What lies under the `Checkpoint` handler (layer 2: it imports the engine and utils, never the handlers).

`format` (the file, its errors and its integrity check), `folder` (naming, finding, writing and keeping
files), `safety` (the weights_only probe before a file gets its name), `finite` (NaN/Inf checks of weights),
`restore` (loading all or nothing), `handler_states` (the state of the engine's stateful handlers) and
`async_writer` (the host snapshot and the background writer of `Checkpoint(async_save=True)`).
"""
