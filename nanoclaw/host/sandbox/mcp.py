"""The sandboxed tools as in-process MCP tools, for groups whose host has a broker socket."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

from claude_agent_sdk import SdkMcpTool, tool

from nanoclaw.broker.protocol import RunResult
from nanoclaw.host.config_subagents import SANDBOX_TOOLS
from nanoclaw.host.host_tools import refusal_result, tool_result
from nanoclaw.host.sandbox.client import SandboxError
from nanoclaw.host.sandbox.gateway import SandboxGateway
from nanoclaw.host.sandbox.tools import SandboxTools, ToolInputError
from nanoclaw.host.swarm import CALLER


def _schema(required: Sequence[str], **properties: tuple[str, str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {k: {"type": t, "description": d} for k, (t, d) in properties.items()},
        "required": list(required),
    }


_PATH = ("string", "A path under /workspace; relative paths start at /workspace/group.")
_SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "bash": (
        "Run a shell command in your sandbox (fresh each call; cwd /workspace/group).",
        _schema(["command"], command=("string", "The command for /bin/sh -c.")),
    ),
    "read": (
        "Read a file with line numbers.",
        _schema(
            ["path"],
            path=_PATH,
            offset=("integer", "First line, from 1."),
            limit=("integer", "How many lines."),
        ),
    ),
    "write": (
        "Create or replace a file.",
        _schema(["path", "content"], path=_PATH, content=("string", "The whole file.")),
    ),
    "edit": (
        "Replace one exact, unique occurrence of old_string with new_string.",
        _schema(
            ["path", "old_string", "new_string"],
            path=_PATH,
            old_string=("string", "Text that occurs exactly once."),
            new_string=("string", "Its replacement."),
        ),
    ),
    "glob": (
        "List files matching a pattern such as group/**/*.md (relative to /workspace).",
        _schema(["pattern"], pattern=("string", "A bash glob; ** crosses directories.")),
    ),
    "grep": (
        "Search files for an extended regular expression.",
        _schema(["pattern"], pattern=("string", "The regex."), path=_PATH),
    ),
    "fetch": (
        "Fetch a URL as text, through your group's allowed egress only.",
        _schema(["url"], url=("string", "An http:// or https:// URL.")),
    ),
}


def _call(tools: SandboxTools, name: str, args: dict[str, Any]) -> Awaitable[tuple[str, bool]]:
    if name == "bash":
        return tools.bash(str(args["command"]))
    if name == "read":
        return tools.read(
            str(args["path"]), int(args.get("offset", 1)), int(args.get("limit", 2000))
        )
    if name == "write":
        return tools.write(str(args["path"]), str(args["content"]))
    if name == "edit":
        return tools.edit(str(args["path"]), str(args["old_string"]), str(args["new_string"]))
    if name == "glob":
        return tools.glob(str(args["pattern"]))
    if name == "grep":
        return tools.grep(str(args["pattern"]), str(args.get("path", "/workspace")))
    return tools.fetch(str(args["url"]))


def sandbox_mcp_tools(gateway: SandboxGateway, group: str) -> list[SdkMcpTool[Any]]:
    """The seven tools for `group`, each call one unit through the broker."""

    async def runner(argv: Sequence[str], stdin: bytes) -> RunResult:
        # A subagent's calls name it: the broker narrows the group's sandbox for it.
        return await gateway.run(group, argv, stdin, agent=CALLER.get())

    tools = SandboxTools(runner)

    async def handle(name: str, args: dict[str, Any]) -> dict[str, Any]:
        try:
            text, error = await _call(tools, name, args)
        except (ToolInputError, SandboxError, KeyError, ValueError) as exc:
            return refusal_result(f"{name} refused: {exc}")
        return tool_result(text, error)

    made: list[SdkMcpTool[Any]] = []
    for name in SANDBOX_TOOLS:
        description, schema = _SPECS[name]
        handler: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] = partial(handle, name)
        made.append(tool(name, description, schema)(handler))
    return made
