"""A file, image, sound or video someone sent: what its event says about it.

Only what the event states is kept (the name as sent, the type and size the sender's
client claims, where to download it and, in an encrypted room, how to decrypt it); the
bytes are fetched and checked when the agent is about to see the message
(nanoclaw.host.inbox).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

FILE_MSGTYPES = frozenset({"m.image", "m.file", "m.audio", "m.video"})
_MXC = "mxc://"


@dataclass(frozen=True)
class Attachment:
    msgtype: str
    name: str
    mimetype: str
    size: int | None  # as claimed; the download is measured again
    url: str  # mxc://
    encryption: dict[str, Any] | None = None  # the event's "file": key, iv, hashes
    width: int | None = None  # of an image, as claimed
    height: int | None = None
    saved: str | None = None  # where the agent finds it (nanoclaw.host.inbox)
    refused: str | None = None  # or why it is not there
    not_shown: str | None = None  # an image in the inbox: why the model does not see it

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Attachment:
        return cls(**json.loads(text))


def attachment_of(content: dict[str, Any]) -> Attachment | None:
    """The attachment of a message's content, or None when it has no usable one."""
    msgtype = content.get("msgtype")
    if msgtype not in FILE_MSGTYPES:
        return None
    encrypted = content.get("file")
    url = encrypted.get("url") if isinstance(encrypted, dict) else content.get("url")
    if not isinstance(url, str) or not url.startswith(_MXC):
        return None
    stated = content.get("info")
    info: dict[str, Any] = stated if isinstance(stated, dict) else {}
    name = content.get("filename") or content.get("body")
    return Attachment(
        msgtype=str(msgtype),
        name=name if isinstance(name, str) and name else "file",
        mimetype=str(info.get("mimetype") or "application/octet-stream"),
        size=_count(info.get("size")),
        url=url,
        encryption=encrypted if isinstance(encrypted, dict) else None,
        width=_count(info.get("w")),
        height=_count(info.get("h")),
    )


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
