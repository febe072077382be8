"""Layer 0: helpers with no knowledge of engines or handlers, shared by every layer above.

`atomic` (crash-safe file writes), `rng` (every global random generator's state), `files` (process and disk
questions) and `checks` (argument checks with messages that name the argument).
"""
