"""Subagents: the group's main agent may start those its owner declared, and nothing else.

The CLI starts a subagent with its built-in Agent tool (the only built-in a group with
subagents is offered), running it in the same process with its own system prompt and
only the tools its definition names. What keeps it to them here, and not the CLI's own
bookkeeping, is this module:

- The PreToolUse hook sees every tool call first. The CLI adds `agent_id` and
  `agent_type` (the subagent's name) to its input for a call a subagent makes, and
  neither for the main agent's: the one signal that tells parallel subagents apart. A
  call outside the caller's tools is denied; the approved ones are remembered by their
  tool_use_id.
- The MCP server's tools/call handler gets that tool_use_id from the CLI in the
  request's `_meta` ("claudecode/toolUseId") and runs only a call the hook approved,
  with `CALLER` set to the agent that made it. A sandboxed tool names that agent to the
  broker, which gives a subagent's unit the group's sandbox narrowed by the policy file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

from claude_agent_sdk import HookContext
from claude_agent_sdk.types import AgentDefinition, McpSdkServerConfig
from mcp.types import CallToolResult, TextContent

from nanoclaw.broker.agent_unit import SUBAGENT_TOOL
from nanoclaw.broker.protocol import MAIN_AGENT
from nanoclaw.host.config_subagents import SubagentConfig

log = logging.getLogger(__name__)

# The agent whose tool call is running: MAIN_AGENT or a subagent's name.
CALLER: ContextVar[str] = ContextVar("nanoclaw_caller", default=MAIN_AGENT)
TOOL_USE_ID = "claudecode/toolUseId"
# What the main agent may say when it starts one: the model, the effort, a worktree or a
# remote run, and the background (which would outlive the turn) are the owner's or none.
_START_KEYS = frozenset({"description", "prompt", "subagent_type"})


class Swarm:
    """One CLI session's subagents, and which agent made each tool call in it."""

    def __init__(self, subagents: Sequence[SubagentConfig], tool_prefix: str) -> None:
        self._subagents = {sub.name: sub for sub in subagents}
        self._prefix = tool_prefix
        self._approved: dict[str, str] = {}  # tool_use_id -> the agent, until the call

    @property
    def builtin_tools(self) -> list[str]:
        return [SUBAGENT_TOOL] if self._subagents else []

    def definitions(self) -> dict[str, AgentDefinition]:
        return {
            sub.name: AgentDefinition(
                description=sub.description,
                prompt=sub.prompt,
                tools=[self._prefix + name for name in sub.tools],
                model=sub.model,
            )
            for sub in self._subagents.values()
        }

    async def pre_tool_use(
        self, input_data: Any, tool_use_id: str | None, context: HookContext
    ) -> Any:  # the SDK's HookJSONOutput
        """The PreToolUse hook: each call checked against what its caller may do."""
        name = str(input_data.get("tool_name", ""))
        caller = MAIN_AGENT if "agent_id" not in input_data else str(input_data.get("agent_type"))
        why = self._refusal(name, caller, input_data.get("tool_input"))
        if why is not None:
            log.warning("denied %s to %s: %s", name, caller, why)
            return _deny(why)
        if name.startswith(self._prefix):
            self._approved[str(input_data.get("tool_use_id") or tool_use_id)] = caller
        return {}

    def _refusal(self, name: str, caller: str, tool_input: object) -> str | None:
        if name == SUBAGENT_TOOL and self._subagents:
            if caller != MAIN_AGENT:
                return "a subagent cannot start subagents"
            return self._start_refusal(tool_input)
        if not name.startswith(self._prefix):
            return f"{name} is not available in nanoclaw"
        if caller == MAIN_AGENT:
            return None
        sub = self._subagents.get(caller)
        if sub is None:
            return f"{caller} is not a subagent of this group"
        short = name.removeprefix(self._prefix)
        if short not in sub.tools:
            return f"{short} is not one of subagent {caller}'s tools ({', '.join(sub.tools)})"
        return None

    def _start_refusal(self, tool_input: object) -> str | None:
        if not isinstance(tool_input, dict):
            return "the input must be an object"
        extra = sorted(set(tool_input) - _START_KEYS)
        if extra:
            return f"{', '.join(extra)} may not be given: the owner declares each subagent"
        wanted = tool_input.get("subagent_type")
        if wanted not in self._subagents:
            return f"subagent_type must be one of {', '.join(self._subagents)}, not {wanted!r}"
        return None

    def attribute(self, server: McpSdkServerConfig) -> McpSdkServerConfig:
        """`server`, running only calls the hook approved, each with CALLER set."""
        instance = server["instance"]
        entry = instance.get_request_handler("tools/call")
        if entry is None:
            raise RuntimeError("the tool server has no tools/call handler")

        async def call(ctx: Any, params: Any) -> Any:
            meta = params.model_dump(by_alias=True).get("_meta") or {}
            caller = self._approved.pop(str(meta.get(TOOL_USE_ID)), None)
            if caller is None:  # never through the hook: the CLI's bookkeeping failed
                text = f"{params.name} refused: the call was not checked"
                return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)
            token = CALLER.set(caller)
            try:
                return await entry.handler(ctx, params)
            finally:
                CALLER.reset(token)

        instance.add_request_handler("tools/call", entry.params_type, call)
        return server


def _deny(reason: str) -> dict[str, Any]:
    return {
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": "deny",
            "permissionDecisionReason": reason,
        }
    }
