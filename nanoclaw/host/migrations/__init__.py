"""The store's schema, one migration a module: each takes the database from the version
before it to its own number (PRAGMA user_version). Never edit a shipped one: add the next.
"""

from __future__ import annotations

from nanoclaw.host.migrations import (
    v001_messages,
    v002_tasks,
    v003_undecrypted,
    v004_attachments,
    v005_audit,
)

MIGRATIONS: tuple[str, ...] = (
    v001_messages.SQL,
    v002_tasks.SQL,
    v003_undecrypted.SQL,
    v004_attachments.SQL,
    v005_audit.SQL,
)
