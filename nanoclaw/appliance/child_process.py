"""Children that die with the process that started them (the nspawn machine, QEMU).

PR_SET_PDEATHSIG is set between fork and exec, where other threads may hold locks: the
code that runs there makes system calls only, nothing that imports, logs or locks.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)


def dies_with_parent(then: Callable[[], None] | None = None) -> Callable[[], None]:
    """A `preexec_fn` giving the child SIGKILL when the *thread* that starts it ends (or
    exiting at once if that already happened), then running `then`."""
    parent = os.getpid()
    prctl = _LIBC.prctl

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
        if then is not None:
            then()

    return in_child
