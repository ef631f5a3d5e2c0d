"""Ctrl-C during ``Trainer.fit``: stop after the current step instead of in the middle of it.

:class:`SigintGuard` is the ``with`` block that ``fit`` runs in. While it is active, the first
SIGINT only sets :attr:`SigintGuard.requested` (and says so on stderr); the training loop
checks that flag after every step and stops. The first press also puts the previous handler
back, so a second Ctrl-C raises :class:`KeyboardInterrupt` at once, wherever it lands.

The guard installs its handler only where that is safe and expected: in the main thread (the
only one Python delivers signals to), when the current handler is Python's own
:func:`signal.default_int_handler` (a handler the user installed is left alone), and when
asked to (the Trainer does not ask in distributed mode, where the ranks would have to agree
on the step to stop at).
"""

import signal
import sys
import threading

__all__ = ["SigintGuard", "MESSAGE"]

#: Printed to stderr at the first Ctrl-C.
MESSAGE = ("cnncore: interrupted; stopping after the current step "
           "(press Ctrl-C again to stop at once)\n")


class SigintGuard:
    """Turn the first Ctrl-C into a request to stop (a context manager).

    Parameters
    ----------
    enabled : bool
        False: do nothing (``requested`` stays False; Ctrl-C keeps its default behaviour).

    Attributes
    ----------
    requested : bool
        True once SIGINT arrived while the guard was active.
    installed : bool
        Whether the guard's handler was installed on entry (see the module docstring).
    """

    def __init__(self, enabled=True):
        self.enabled = bool(enabled)
        self.requested = False
        self.installed = False
        self._previous = None
        self._handler = self._handle  # one bound method: compared with `is` on exit

    def __enter__(self):
        if self.enabled and _may_install():
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self.installed = True
        return self

    def __exit__(self, *exc):
        # put the previous handler back, unless something else replaced ours meanwhile
        # (after a first Ctrl-C the previous handler is already back)
        if self.installed and signal.getsignal(signal.SIGINT) is self._handler:
            signal.signal(signal.SIGINT, self._previous)
        return False

    def _handle(self, signum, frame):
        """The first Ctrl-C: ask the loop to stop; the next one goes to the previous handler."""
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)
        try:  # a signal may land while stderr is being written to: never fail here
            sys.stderr.write(MESSAGE)
            sys.stderr.flush()
        except (RuntimeError, OSError, ValueError, AttributeError):
            pass


def _may_install():
    """Main thread, and SIGINT still has Python's default handler."""
    if threading.current_thread() is not threading.main_thread():
        return False
    return signal.getsignal(signal.SIGINT) is signal.default_int_handler
