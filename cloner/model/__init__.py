"""Pure decisions: no I/O, no clock of their own, no client libraries (see ``cloner``)."""
