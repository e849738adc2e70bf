"""SIGTERM and SIGINT for long-running commands: the first asks for a stop, a second exits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _nothing(name: str) -> None:
    pass


@contextlib.contextmanager
def stop_on_signals(
    stop: asyncio.Event,
    on_stop: Callable[[str], None] = _nothing,
    before_exit: Callable[[str], None] = _nothing,
) -> Iterator[None]:
    """Set `stop` on the first signal; on a second, call `before_exit` and exit at once.

    The callbacks get the signal's name. Handlers go on the running loop and are removed after.
    """
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            before_exit(name)
            os._exit(1)
        on_stop(name)
        stop.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
