"""Files people send, put into the group's workspace (`inbox/`) for the agent to use.

The host downloads the file (and, in an encrypted room, decrypts it; the hash is checked),
measures it against `max_attachment_bytes`, and writes it through the broker: a tool unit
of the group copies its stdin to /workspace/group/inbox/NAME, refusing to write over
anything there. The host never opens a path in the workspace (it is the tool user's: the
one-way rule). NAME is the sent name, cleaned to letters, digits, '.', '-' and '_', after
a random prefix: a tool cannot plant a file where a later upload will land, nor is one
file ever written over another. What happened is kept with the message, so a retried run
neither writes the file again nor loses why it was refused.

An image the model can take (PNG, JPEG, GIF or WebP, at most 5 MiB: the API's bound) also
reaches it as an image block, from the bytes the host downloaded, never read back from the
workspace. Larger ones are not scaled down (that would need an image library): they are in
the inbox for the agent's tools.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from nanoclaw.broker.protocol import RunResult
from nanoclaw.broker.workspace_usage import size
from nanoclaw.host.attachment import Attachment
from nanoclaw.host.sandbox.client import SandboxError

log = logging.getLogger(__name__)

INBOX = "/workspace/group/inbox"
MAX_NAME = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")
# In a tool unit: make the inbox, then copy stdin to a new file (set -C: never over one).
_WRITE = 'mkdir -p "$1" && set -C && cat > "$1/$2"'

# What the model API takes as an image block, and at most how large.
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
MAX_IMAGE_BYTES = 5 * 1024 * 1024

Download = Callable[[Attachment], Awaitable[bytes]]
RunTool = Callable[[str, Sequence[str], bytes], Awaitable[RunResult]]


@dataclass(frozen=True)
class Image:
    """An image for the model to see, with the type its sender's client claimed."""

    media_type: str
    data: bytes


class DownloadFailed(Exception):
    """The homeserver did not give the file, or it did not decrypt; the text says why."""


class NotReceived(Exception):
    """Why a file is not in the inbox: what the agent and the room are told."""


def inbox_name(name: str) -> str:
    """A fresh, safe file name for `name`, as sent."""
    # No '/' (the unsafe runs become '_'), no "..", and no leading dot (no hidden files).
    cleaned = _DOTS.sub(".", _UNSAFE.sub("_", name)).lstrip(".")[-MAX_NAME:] or "file"
    return f"{secrets.token_hex(4)}-{cleaned}"


class Inbox:
    def __init__(self, download: Download, run_tool: RunTool | None, max_bytes: int) -> None:
        self._download = download
        self._run_tool = run_tool  # None: no broker, so no workspace to put files in
        self._max_bytes = max_bytes
        self._images: dict[str, bytes] = {}  # received in this run, by their mxc:// URL

    async def receive(self, group: str, attachment: Attachment) -> Attachment:
        """The attachment with where it was put, or why it was not."""
        if attachment.saved or attachment.refused:
            return attachment  # done in an earlier try of this run
        try:
            data = await self._fetch(attachment)
            path = await self._put(group, attachment.name, data)
        except NotReceived as why:
            log.warning("file %r not received: %s", attachment.name, why, extra={"group": group})
            return dataclasses.replace(attachment, refused=str(why))
        if _showable(attachment, len(data)):
            self._images[attachment.url] = data
        return dataclasses.replace(attachment, size=len(data), saved=path)

    async def image(self, attachment: Attachment) -> Image | None:
        """The image block for a received attachment the model can take, or None."""
        if attachment.saved is None or not _showable(attachment, attachment.size or 0):
            return None
        data = self._images.pop(attachment.url, None)
        if data is None:  # received in an earlier try: fetched again, not read back
            try:
                data = await self._download(attachment)
            except DownloadFailed as error:
                log.warning("image %r not shown: %s", attachment.name, error)
                return None
        return Image(attachment.mimetype, data) if _showable(attachment, len(data)) else None

    async def _fetch(self, attachment: Attachment) -> bytes:
        self._check_size(attachment.size)  # as claimed: no download of what is too large
        if self._run_tool is None:
            raise NotReceived("files need the sandbox broker (sandbox_socket), which is not set")
        try:
            data = await self._download(attachment)
        except DownloadFailed as error:
            raise NotReceived(f"could not download it: {error}") from None
        self._check_size(len(data))
        return data

    def _check_size(self, count: int | None) -> None:
        if count is not None and count > self._max_bytes:
            raise NotReceived(f"too large ({size(count)}; the limit is {size(self._max_bytes)})")

    async def _put(self, group: str, name: str, data: bytes) -> str:
        assert self._run_tool is not None
        fresh = inbox_name(name)
        try:
            result = await self._run_tool(
                group, ("/bin/sh", "-c", _WRITE, "sh", INBOX, fresh), data
            )
        except SandboxError as error:
            raise NotReceived(f"could not store it: {error}") from None
        if result.exit_status != 0:
            why = result.stderr.decode(errors="replace").strip()[:200]
            raise NotReceived(f"could not store it: {why or result.result}")
        return f"{INBOX}/{fresh}"


def _showable(attachment: Attachment, size: int) -> bool:
    return (
        attachment.msgtype == "m.image"
        and attachment.mimetype in IMAGE_TYPES
        and size <= MAX_IMAGE_BYTES
    )
