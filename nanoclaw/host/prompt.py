"""The prompts the agent sees: a batch of chat messages, or a scheduled task's run.

Messages are wrapped in XML-like elements so the model sees who said what, when, and in reply
to what. Everything that came from the room -- bodies, display names, quotes, even IDs -- is
escaped, so no message can forge an element or an attribute (say, pose as another sender).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

from nanoclaw.host.attachment import Attachment
from nanoclaw.host.records import InboundMessage

QUOTE_LIMIT = 500  # characters of a quoted message kept, ellipsis included

TIME_FORMAT = "%Y-%m-%d %H:%M %Z"

# Control characters (except newline and tab), plus what XML cannot carry at all: lone
# surrogates and the noncharacters U+FFFE/U+FFFF.
_UNWANTED = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")

# Inside attributes, quotes would end the value, and literal newlines and tabs would be
# normalised to spaces by an XML reader.
_ATTRIBUTE_ENTITIES = {'"': "&quot;", "\n": "&#10;", "\t": "&#9;"}


@dataclass(frozen=True)
class PromptMessage:
    event_id: str
    sender_id: str  # "@alice:example.org"
    sender_name: str  # display name, may be anything a user typed
    timestamp_ms: int  # origin_server_ts
    body: str
    quoted_sender: str | None = None  # display name of the author of the message replied to
    quoted_body: str | None = None  # its text
    thread_root: str | None = None
    attachment: Attachment | None = None  # a file sent with it, where it was put or why not


def prompt_message(message: InboundMessage, quoted: InboundMessage | None) -> PromptMessage:
    """A stored message as the prompt shows it, with the one it replies to, if known."""
    return PromptMessage(
        event_id=message.event_id,
        sender_id=message.sender,
        sender_name=message.sender_name,
        timestamp_ms=message.ts,
        body=message.body,
        quoted_sender=quoted.sender_name if quoted else None,
        quoted_body=quoted.body if quoted else None,
        thread_root=message.thread_root,
        attachment=message.attachment,
    )


def build_prompt(
    messages: Sequence[PromptMessage], tz: ZoneInfo, room_name: str | None = None
) -> str:
    """Render `messages`, in the given order, as a <messages> element; times are local to tz."""
    if not messages:
        raise ValueError("build_prompt needs at least one message")
    room = "" if room_name is None else _attribute("room", room_name)
    lines = [f"<messages{room}>"]
    for message in messages:
        lines.extend(_message(message, tz))
    lines.append("</messages>")
    return "\n".join(lines)


def task_prompt(task_id: str, slot_ms: int, text: str, tz: ZoneInfo) -> str:
    """The prompt of a scheduled task's run: the task's own text, marked as such."""
    due = datetime.fromtimestamp(slot_ms / 1000, tz).strftime(TIME_FORMAT)
    return (
        f"<scheduled-task{_attribute('id', task_id)}{_attribute('due', due)}>\n"
        f"{escape(_clean(text))}\n</scheduled-task>\n"
        "This is a scheduled task, not a chat message: do what it asks now. "
        "Your final answer is posted to the room."
    )


def _message(message: PromptMessage, tz: ZoneInfo) -> list[str]:
    time = datetime.fromtimestamp(message.timestamp_ms / 1000, tz).strftime(TIME_FORMAT)
    attributes = (
        _attribute("id", message.event_id)
        + _attribute("sender", message.sender_id)
        + _attribute("name", message.sender_name)
        + _attribute("time", time)
    )
    if message.thread_root is not None:
        attributes += _attribute("thread", message.thread_root)
    lines = [f"<message{attributes}>"]
    if message.quoted_sender is not None or message.quoted_body is not None:
        name = "" if message.quoted_sender is None else _attribute("name", message.quoted_sender)
        quoted = _truncate(_clean(message.quoted_body or ""))
        lines.append(f"<quote{name}>{escape(quoted)}</quote>")
    lines.append(escape(_clean(message.body)))
    if message.attachment is not None:
        lines.append(_attachment(message.attachment))
    lines.append("</message>")
    return lines


def _attachment(attachment: Attachment) -> str:
    """<attachment> with the file's name, type and size, and its path in the sandbox or why
    it is not there."""
    attributes = (
        _attribute("kind", attachment.msgtype.removeprefix("m."))
        + _attribute("name", attachment.name)
        + _attribute("type", attachment.mimetype)
    )
    if attachment.size is not None:
        attributes += _attribute("size", f"{attachment.size} bytes")
    if attachment.saved is not None:
        attributes += _attribute("path", attachment.saved)
        if attachment.not_shown is not None:
            attributes += _attribute("image-not-shown", attachment.not_shown)
    else:
        attributes += _attribute("not-received", attachment.refused or "not fetched")
    return f"<attachment{attributes}/>"


def _attribute(name: str, value: str) -> str:
    return f' {name}="{escape(_clean(value), _ATTRIBUTE_ENTITIES)}"'


def _clean(text: str) -> str:
    return _UNWANTED.sub("", text)


def _truncate(text: str) -> str:
    return text if len(text) <= QUOTE_LIMIT else text[: QUOTE_LIMIT - 1] + "…"
