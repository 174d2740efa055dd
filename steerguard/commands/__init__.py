"""Offline subcommands of the ``steerguard`` CLI."""
