"""send_file: a file from the group's sandbox, posted to a room.

The host never opens a path a unit can write: a tool unit of the group reads the file
(`cat`, its output bounded by the policy's output_bytes) and the host takes the bytes as
data. They are uploaded (encrypted where the room is) and posted as m.image or m.file,
with the type guessed from the name and the size measured.
"""

from __future__ import annotations

import mimetypes
import posixpath
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nanoclaw.broker.protocol import RunResult
from nanoclaw.broker.workspace_usage import size
from nanoclaw.host.host_tools import ToolRefused
from nanoclaw.host.sandbox.client import SandboxError

# In a tool unit: the file's bytes, if it is a regular file.
_READ = 'test -f "$1" || { echo "not a file" >&2; exit 1; }; exec cat -- "$1"'

RunTool = Callable[[str, Sequence[str], bytes], Awaitable[RunResult]]
# (room, name, bytes, type) to the content's "url" or "file" (encrypted rooms).
Upload = Callable[[str, str, bytes, str], Awaitable[dict[str, Any]]]
# (source group, contents, room): posted within the source's run, if it has one.
PostContents = Callable[[str, Sequence[dict[str, Any]], str], Awaitable[None]]


@dataclass(frozen=True)
class FileSender:
    run_tool: RunTool | None  # None: no broker, no sandbox to send from
    upload: Upload
    post: PostContents

    async def send(self, source: str, path: str, caption: str | None, room_id: str) -> str:
        if self.run_tool is None:
            raise ToolRefused("files need the sandbox broker (sandbox_socket), which is not set")
        if not path.startswith("/"):
            raise ToolRefused(f"give the file's absolute path in the sandbox, not {path!r}")
        data = await self._read(source, path)
        name = posixpath.basename(path) or "file"
        mimetype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        content = {
            "msgtype": "m.image" if mimetype.startswith("image/") else "m.file",
            "body": caption or name,
            "filename": name,
            "info": {"mimetype": mimetype, "size": len(data)},
            **await self.upload(room_id, name, data, mimetype),
        }
        await self.post(source, [content], room_id)
        return f"sent {name} ({size(len(data))}, {mimetype})"

    async def _read(self, source: str, path: str) -> bytes:
        assert self.run_tool is not None
        try:
            result = await self.run_tool(source, ("/bin/sh", "-c", _READ, "sh", path), b"")
        except SandboxError as error:
            raise ToolRefused(f"cannot read {path}: {error}") from None
        if result.exit_status != 0:
            why = result.stderr.decode(errors="replace").strip()[:200]
            raise ToolRefused(f"cannot read {path}: {why or result.result}")
        if result.truncated:
            raise ToolRefused(
                f"{path} is larger than a tool call's output may be (the policy's "
                "limits.output_bytes)"
            )
        return result.stdout
