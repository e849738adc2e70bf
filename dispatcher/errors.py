"""The one error family the CLI turns into a one-line message and exit code 1."""

from __future__ import annotations


class DispatcherError(Exception):
    """A problem the user can fix; the message says what it is and what to do."""


class ConfigError(DispatcherError):
    """A configuration value is missing or invalid; the message names the key."""
