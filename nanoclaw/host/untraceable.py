"""Keep the host's memory out of reach of the processes it starts.

The broker starts units for the host's main process alone (nanoclaw.broker.sandboxd says why),
but the CLI the host starts, and whatever the CLI starts, run as the same user: where
the kernel lets a user trace its own processes (Yama's ptrace_scope 0, Debian's default)
they could write into the host's memory through /proc/PID/mem or process_vm_writev (seen
in the VM) and make it ask for any group's sandbox. A process that is not dumpable can
be traced or read only with CAP_SYS_PTRACE, which none of them has. Its children are
dumpable again once they exec, as the CLI must be to run at all.
"""

from __future__ import annotations

import ctypes
import os

PR_SET_DUMPABLE = 4


def forbid_tracing() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_DUMPABLE, 0): {os.strerror(error)}")
