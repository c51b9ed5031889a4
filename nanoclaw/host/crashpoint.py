"""Named points where a test can make the process die as if the machine lost power.

`NANOCLAW_CRASHPOINT=<name>` ends the process with os._exit at that point: no cleanup,
no flushing, exactly what a crash looks like to the store and the homeserver. The crash
tests use it to hit the narrow windows (a reply sent but not yet marked) on purpose.
"""

import os

CRASH_EXIT_STATUS = 70


def crashpoint(name: str) -> None:
    if os.environ.get("NANOCLAW_CRASHPOINT") == name:
        os._exit(CRASH_EXIT_STATUS)
