"""webhook-dispatcher: publish events with SQL, deliver them as signed HTTP POSTs."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("webhook-dispatcher")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
