"""Ctrl-C that is not lost. Python runs a SIGINT handler between two bytecodes of whatever is running then; when
that is a garbage-collection or weakref callback (torch and transformers make many), the KeyboardInterrupt it raises
is printed as "Exception ignored in: ..." and dropped, and the command goes on to its end (a whole seed of `compare
--seeds`) and exits 0. So `cli.main` runs the command under `recording()`, whose handler remembers the interrupt
before raising KeyboardInterrupt as Python's does, and the long loops (methods, seeds, benchmarks, training steps)
call `check()`, which raises it again where it was swallowed. Imports nothing of the package: every module may use
it."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

_seen = threading.Event()


def interrupted() -> bool:
    """Whether a Ctrl-C came while the command ran (whether or not its KeyboardInterrupt got through)."""
    return _seen.is_set()


def check() -> None:
    """Raise KeyboardInterrupt when a Ctrl-C came: one swallowed somewhere stops the command here instead."""
    if _seen.is_set():
        raise KeyboardInterrupt


def mark() -> None:
    """Record a Ctrl-C (what the handler does; tests use it)."""
    _seen.set()


@contextmanager
def recording():
    """Record each SIGINT while the block runs, then hand it to the handler there before (Python's own raises
    KeyboardInterrupt); that handler is put back at the end, as a test or notebook calling `main` expects. A SIGINT
    that is ignored (a command started in the background by a shell) or not handled in Python is left as it is, as
    is one outside the main thread, where no handler can be set."""
    _seen.clear()  # main may run more than once in a process
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if not callable(previous):
        try:
            yield
        finally:
            _seen.clear()
        return

    def handler(signum, frame):
        _seen.set()
        previous(signum, frame)

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _seen.clear()  # read inside the block (main): an API call after it in the process must not find it set
