"""The `transferlab-*` commands: each module checks its inputs, calls the library and prints
the closing block; `transferlab.cli.common` holds what they share."""
