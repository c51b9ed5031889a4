"""Turn raw Matrix room events into stored messages, or decide to skip them.

Pure: a function of the event, the bot's user ID and when the bot joined the room.
Everything that must never start a run is decided here: the bot's own messages (kept as
context), edits, notices from other bots, and events from before the bot joined.
"""

from __future__ import annotations

import re
from typing import Any

from nanoclaw.host.attachment import attachment_of
from nanoclaw.host.records import InboundMessage

COMMANDS = frozenset({"/new", "/status"})
_CHAT_MSGTYPES = frozenset({"m.text", "m.emote"})


def classify(
    event: dict[str, Any],
    room_id: str,
    bot_user_id: str,
    sender_name: str,
    joined_ts: int | None,
) -> InboundMessage | None:
    """Return the message to store, or None for events that are not chat at all."""
    if event.get("type") != "m.room.message":
        return None
    content = event.get("content")
    event_id, sender, ts = event.get("event_id"), event.get("sender"), event.get("origin_server_ts")
    if not isinstance(content, dict) or not isinstance(event_id, str):
        return None
    if not isinstance(sender, str) or not isinstance(ts, int):
        return None
    body = content.get("body")
    if not isinstance(body, str):
        return None  # redacted events keep their type but lose their content
    relates = content.get("m.relates_to")
    relates = relates if isinstance(relates, dict) else {}
    if relates.get("rel_type") == "m.replace":
        return None  # an edit: the original already ran
    msgtype = content.get("msgtype")
    attachment = attachment_of(content)
    if sender != bot_user_id and msgtype not in _CHAT_MSGTYPES and attachment is None:
        return None  # m.notice is how other bots speak; answering them makes loops
    reply_to = _reply_target(relates)
    if reply_to is not None:
        body = strip_reply_fallback(body)
    thread_root = relates.get("event_id") if relates.get("rel_type") == "m.thread" else None
    return InboundMessage(
        event_id=event_id,
        room_id=room_id,
        sender=sender,
        sender_name=sender_name,
        ts=ts,
        body=body,
        kind=_kind(sender, ts, body, bot_user_id, joined_ts),
        reply_to=reply_to,
        thread_root=thread_root if isinstance(thread_root, str) else None,
        mentions_bot=mentions(content, bot_user_id),
        attachment=attachment,
    )


def _kind(sender: str, ts: int, body: str, bot_user_id: str, joined_ts: int | None) -> str:
    if sender == bot_user_id:
        return "own"
    if joined_ts is None or ts < joined_ts:
        return "history"
    if body.strip().lower() in COMMANDS:
        return "command"
    return "chat"


def _reply_target(relates: dict[str, Any]) -> str | None:
    in_reply_to = relates.get("m.in_reply_to")
    if isinstance(in_reply_to, dict) and isinstance(in_reply_to.get("event_id"), str):
        return str(in_reply_to["event_id"])
    return None


def mentions(content: dict[str, Any], bot_user_id: str) -> bool:
    """True when the message mentions the bot: intentional mentions, a pill or the raw ID."""
    intentional = content.get("m.mentions")
    if isinstance(intentional, dict):
        user_ids = intentional.get("user_ids")
        if isinstance(user_ids, list) and bot_user_id in user_ids:
            return True
    body = content.get("body")
    formatted = content.get("formatted_body")
    if isinstance(body, str) and bot_user_id in body:
        return True
    return isinstance(formatted, str) and f"matrix.to/#/{bot_user_id}" in formatted


_FALLBACK = re.compile(r"\A(?:> ?[^\n]*\n)+\n?")


def strip_reply_fallback(body: str) -> str:
    """Drop the '> <@user> quoted text' lines clients prepend to replies."""
    return _FALLBACK.sub("", body, count=1) if body.startswith(">") else body
