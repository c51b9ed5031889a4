"""Files people send, put into the group's workspace (`inbox/`) for the agent to use.

The host downloads the file (and, in an encrypted room, decrypts it; the hash is checked),
measures it against `max_attachment_bytes`, and writes it through the broker: a tool unit
of the group copies its stdin to /workspace/group/inbox/NAME, refusing to write over
anything there. The host never opens a path in the workspace (it is the tool user's: the
one-way rule). NAME is the sent name, cleaned to letters, digits, '.', '-' and '_', after
a random prefix: a tool cannot plant a file where a later upload will land, nor is one
file ever written over another. What happened is kept with the message, so a retried run
neither writes the file again nor loses why it was refused.

An image (m.image) also reaches the model as an image block, made from the bytes the host
downloaded, never read back from the workspace. With `image_scaler_python` set, every image
is first made into a JPEG the model takes by a tool unit (nanoclaw.host.image_scale): any
size, any type Pillow reads, turned upright, without metadata. Without it, an image goes as
sent only if the model takes it: PNG, JPEG, GIF or WebP, with the magic bytes of its stated
type, at most MAX_IMAGE_BYTES and, as its sender's client states, 8000 pixels a side. An
image that cannot be shown is still in the inbox; the room and the model are told why.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nanoclaw.broker.workspace_usage import size
from nanoclaw.host.attachment import Attachment
from nanoclaw.host.image_scale import MAX_IMAGE_BYTES, NotScaled, RunTool, scale
from nanoclaw.host.sandbox.client import SandboxError

log = logging.getLogger(__name__)

INBOX = "/workspace/group/inbox"
MAX_NAME = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")
# In a tool unit: make the inbox, then copy stdin to a new file (set -C: never over one).
_WRITE = 'mkdir -p "$1" && set -C && cat > "$1/$2"'

# What the model API takes as an image block, by the bytes each type starts with.
IMAGE_MAGIC = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),  # then the size, then "WEBP"
}
MAX_IMAGE_SIDE = 8000

Download = Callable[[Attachment], Awaitable[bytes]]


@dataclass(frozen=True)
class Image:
    """An image for the model to see, with the type its sender's client claimed."""

    media_type: str
    data: bytes


class DownloadFailed(Exception):
    """The homeserver did not give the file, or it did not decrypt; the text says why."""


class NotReceived(Exception):
    """Why a file is not in the inbox: what the agent and the room are told."""


class NotShown(Exception):
    """Why an image in the inbox does not reach the model as one: for the room and the model."""


def inbox_name(name: str) -> str:
    """A fresh, safe file name for `name`, as sent."""
    # No '/' (the unsafe runs become '_'), no "..", and no leading dot (no hidden files).
    cleaned = _DOTS.sub(".", _UNSAFE.sub("_", name)).lstrip(".")[-MAX_NAME:] or "file"
    return f"{secrets.token_hex(4)}-{cleaned}"


class Inbox:
    def __init__(
        self,
        download: Download,
        run_tool: RunTool | None,
        max_bytes: int,
        scaler_python: str | None = None,
    ) -> None:
        self._download = download
        self._run_tool = run_tool  # None: no broker, so no workspace to put files in
        self._max_bytes = max_bytes
        self._scaler_python = scaler_python  # None: images go as sent, or not at all
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
        if attachment.msgtype == "m.image":
            self._images[attachment.url] = data
        return dataclasses.replace(attachment, size=len(data), saved=path)

    async def image(self, group: str, attachment: Attachment) -> Image | None:
        """The image block for a received image, None for any other file; NotShown says why
        an image cannot be one."""
        if attachment.saved is None or attachment.msgtype != "m.image":
            return None
        data = self._images.pop(attachment.url, None)
        if data is None:  # received in an earlier try: fetched again, not read back
            try:
                data = await self._download(attachment)
            except DownloadFailed as error:
                raise NotShown(f"could not download it again: {error}") from None
        if self._scaler_python is None or self._run_tool is None:
            _check_showable(attachment, data)
            return Image(attachment.mimetype, data)
        try:
            scaled = await scale(self._run_tool, group, self._scaler_python, data)
        except NotScaled as why:
            raise NotShown(str(why)) from None
        return Image("image/jpeg", scaled)

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


def _check_showable(attachment: Attachment, data: bytes) -> None:
    """Raise NotShown unless the model takes `data` as sent."""
    unscaled = "; images are not scaled here (image_scaler_python is not set)"
    magic = IMAGE_MAGIC.get(attachment.mimetype)
    if magic is None:
        raise NotShown(f"the model does not take {attachment.mimetype} images{unscaled}")
    if not data.startswith(magic):
        raise NotShown(f"it is not the {attachment.mimetype} image its type says")
    if len(data) > MAX_IMAGE_BYTES:
        raise NotShown(
            f"too large to show ({size(len(data))}; the model takes {size(MAX_IMAGE_BYTES)})"
            + unscaled
        )
    if max(attachment.width or 0, attachment.height or 0) > MAX_IMAGE_SIDE:
        raise NotShown(f"more than {MAX_IMAGE_SIDE} pixels a side{unscaled}")
