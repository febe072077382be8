"""What lies under the `Checkpoint` handler: the file format and its integrity check (`format`), and the checks
that make loading all-or-nothing (`restore`)."""
