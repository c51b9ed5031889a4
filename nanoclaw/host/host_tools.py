"""The agent's host tools: in-process MCP tools that act on Matrix, never on the host's files.

Each group gets its own server instance bound to its folder, so a tool always knows
which group is calling and authorization cannot be talked around by the model.
"""

from __future__ import annotations

from typing import Any, Protocol

from claude_agent_sdk import SdkMcpTool, tool

from nanoclaw.host import audit_call
from nanoclaw.host.config import FOLDER_PATTERN


class ToolRefused(Exception):
    """A tool call the caller may not make; the message is shown to the model."""


class HostActions(Protocol):
    async def send_message(self, source: str, text: str, target: str | None) -> str: ...

    async def register_group(self, source: str, folder: str, definition: dict[str, Any]) -> str: ...

    async def write_memory(self, source: str, scope: str, content: str) -> str: ...

    async def send_file(
        self, source: str, path: str, caption: str | None, target: str | None
    ) -> str: ...


_SEND_SCHEMA = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "description": "Markdown text to post."},
        "target_group": {
            "type": "string",
            "description": "Folder of another registered group (main group only). "
            "Omit to post in your own room.",
        },
    },
    "required": ["text"],
}

_FILE_SCHEMA = {
    "type": "object",
    "properties": {
        "path": {
            "type": "string",
            "description": "The file's absolute path in your sandbox, e.g. "
            "/workspace/group/chart.png.",
        },
        "caption": {"type": "string", "description": "Text shown with it."},
        "target_group": _SEND_SCHEMA["properties"]["target_group"],  # type: ignore[index]
    },
    "required": ["path"],
}

_REGISTER_SCHEMA = {
    "type": "object",
    "properties": {
        "folder": {
            "type": "string",
            "description": f"New group's folder: {FOLDER_PATTERN}",
        },
        "room_id": {"type": "string", "description": "Matrix room ID, e.g. !abc:example.org"},
        "trigger": {"type": "string", "description": "Prefix that wakes the agent there."},
        "requires_trigger": {"type": "boolean"},
        "allowed_senders": {"type": "array", "items": {"type": "string"}},
        "model": {"type": "string"},
    },
    "required": ["folder", "room_id"],
}


_MEMORY_SCHEMA = {
    "type": "object",
    "properties": {
        "scope": {
            "type": "string",
            "enum": ["group", "global"],
            "description": "group: this group's CLAUDE.md; global: shared by all groups "
            "(main group only).",
        },
        "content": {"type": "string", "description": "The whole new file, Markdown."},
    },
    "required": ["scope", "content"],
}


def tool_result(text: str, error: bool = False) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "is_error": error}


def refusal_result(reason: str) -> dict[str, Any]:
    """A refused call's answer to the model; the audit trail records it as refused."""
    audit_call.refused(reason)
    return tool_result(reason, error=True)


def host_mcp_tools(source: str, actions: HostActions) -> list[SdkMcpTool[Any]]:
    """The host tools for group `source`."""

    @tool(
        "send_message",
        "Post a message now, in your room or (main only) another group's.",
        _SEND_SCHEMA,
    )
    async def send_message(args: dict[str, Any]) -> dict[str, Any]:
        try:
            return tool_result(
                await actions.send_message(source, str(args["text"]), args.get("target_group"))
            )
        except ToolRefused as refusal:
            return refusal_result(str(refusal))

    @tool("register_group", "Main group only: start serving another Matrix room.", _REGISTER_SCHEMA)
    async def register_group(args: dict[str, Any]) -> dict[str, Any]:
        definition = {k: v for k, v in args.items() if k != "folder"}
        try:
            return tool_result(
                await actions.register_group(source, str(args.get("folder")), definition)
            )
        except ToolRefused as refusal:
            return refusal_result(str(refusal))

    @tool("write_memory", "Replace a memory file that later sessions start with.", _MEMORY_SCHEMA)
    async def write_memory(args: dict[str, Any]) -> dict[str, Any]:
        try:
            scope, content = str(args.get("scope")), str(args.get("content", ""))
            return tool_result(await actions.write_memory(source, scope, content))
        except ToolRefused as refusal:
            return refusal_result(str(refusal))

    @tool(
        "send_file",
        "Post a file from your sandbox (an image is shown as one) to your room, or, main "
        "group only, to another group's.",
        _FILE_SCHEMA,
    )
    async def send_file(args: dict[str, Any]) -> dict[str, Any]:
        try:
            caption = args.get("caption")
            sent = await actions.send_file(
                source,
                str(args.get("path", "")),
                str(caption) if caption else None,
                args.get("target_group"),
            )
        except ToolRefused as refusal:
            return refusal_result(str(refusal))
        return tool_result(sent)

    return [send_message, register_group, write_memory, send_file]
