"""What a group's worker answers next, from its pending messages: a pure function.

Commands (/new, /status) are answered in their place in the room's order: one at the
front is answered before anything else, and chat after a command waits until it is
answered. Chat before a command is one batch, answered if any message of it triggers
the agent (the last such message is the one the reply is threaded to); a batch that
triggers nothing leaves its chat pending and lets a later command be answered. Messages
of senders not allowed here are passed over, and their commands dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nanoclaw.host.records import InboundMessage, StoredMessage


@dataclass
class Batch:
    messages: list[StoredMessage]
    trigger: StoredMessage


@dataclass
class Command:
    message: StoredMessage


@dataclass(frozen=True)
class Choice:
    work: Batch | Command | None
    dropped: tuple[StoredMessage, ...]  # commands of senders not allowed: mark them handled


def next_work(
    pending: Sequence[StoredMessage],
    allowed: Callable[[InboundMessage], bool],
    triggers: Callable[[StoredMessage], bool],
) -> Choice:
    items = [item for item in pending if allowed(item.message)]
    dropped = tuple(
        item for item in pending if not allowed(item.message) and item.message.kind == "command"
    )
    if not items:
        return Choice(None, dropped)
    if items[0].message.kind == "command":
        return Choice(Command(items[0]), dropped)
    chat: list[StoredMessage] = []
    for item in items:
        if item.message.kind == "command":
            break
        chat.append(item)
    triggering = [item for item in chat if triggers(item)]
    if triggering:
        return Choice(Batch(chat, triggering[-1]), dropped)
    later = next((item for item in items if item.message.kind == "command"), None)
    return Choice(Command(later) if later else None, dropped)
