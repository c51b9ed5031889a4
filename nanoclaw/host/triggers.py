"""Who may wake the agent in a group, and with what words. Pure policy."""

from __future__ import annotations

import re

from nanoclaw.host.config import GroupConfig
from nanoclaw.host.records import InboundMessage


def _starts_with_word(body: str, word: str) -> bool:
    if not word:
        return False
    return re.match(re.escape(word) + r"(?!\w)", body.strip(), re.IGNORECASE) is not None


def is_triggered(
    group: GroupConfig,
    message: InboundMessage,
    assistant_name: str,
    replied_to_sender: str | None,
    bot_user_id: str,
) -> bool:
    """Does this (allowed) message start a run in this group?

    Groups without `requires_trigger` answer everything. Others answer a message that
    starts with the trigger or the assistant's name, mentions the bot, or replies to it.
    """
    if not group.requires_trigger:
        return True
    return (
        _starts_with_word(message.body, group.trigger)
        or _starts_with_word(message.body, assistant_name)
        or message.mentions_bot
        or replied_to_sender == bot_user_id
    )
