"""A group's subagents in the configuration: what the main agent may start, declared by
the owner and never by the model.

Each has a description (how the main agent chooses it), a prompt (its system prompt), an
optional model, and the tools it gets: a subset of its group's, by their short names. Its
sandbox is the group's, narrowed where the policy file says (nanoclaw.broker.policy).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nanoclaw.broker.config_reader import ConfigError, Table, describe, key_part
from nanoclaw.broker.policy import RESERVED_SUBAGENTS, SUBAGENT_PATTERN
from nanoclaw.host.config_values import is_line, is_model_id

# Every group's tools, by the names the model sees after mcp__nanoclaw__; the sandboxed
# ones only where the host has a broker (sandbox_socket).
HOST_TOOLS = ("send_message", "register_group", "write_memory", "send_file")
TASK_TOOLS = (
    "schedule_task",
    "list_tasks",
    "update_task",
    "pause_task",
    "resume_task",
    "cancel_task",
)
SANDBOX_TOOLS = ("bash", "read", "write", "edit", "glob", "grep", "fetch")
_KEYS = ("description", "prompt", "model", "tools")
_MAX_PROMPT = 64 * 1024


@dataclass(frozen=True)
class SubagentConfig:
    name: str
    description: str
    prompt: str
    model: str | None
    tools: tuple[str, ...]  # short names, each one of its group's

    def definition(self) -> dict[str, Any]:
        """In the configuration's own keys, as the store keeps it."""
        data: dict[str, Any] = {"description": self.description, "prompt": self.prompt}
        if self.model is not None:
            data["model"] = self.model
        return data | {"tools": list(self.tools)}


def parse_subagents(group: Table) -> tuple[SubagentConfig, ...]:
    """`subagents` of a group's table; absent, none."""
    tables = group.data.get("subagents", {})
    if not isinstance(tables, Mapping):
        raise ConfigError(
            group.at("subagents"), f"must be a table of subagents by name, not {describe(tables)}"
        )
    found = []
    for name, data in tables.items():
        key = f"{group.at('subagents')}.{key_part(name)}"
        if not _is_name(name):
            raise ConfigError(
                key,
                f"a subagent's name must match {SUBAGENT_PATTERN} and not be one of "
                + ", ".join(sorted(RESERVED_SUBAGENTS)),
            )
        table = Table(data, key, _KEYS)
        found.append(
            SubagentConfig(
                name=name,
                description=table.require("description", "a non-empty text on one line", is_line),
                prompt=table.require("prompt", "a non-empty text up to 64 KiB", _is_prompt),
                model=table.string("model", "a model id like claude-sonnet-4-5", is_model_id),
                tools=_tools(table),
            )
        )
    return tuple(found)


def check_sandbox_tools(key: str, subagents: Sequence[SubagentConfig], sandbox: bool) -> None:
    """The sandboxed tools exist only with a broker: a subagent may not be given one without."""
    if sandbox:
        return
    for sub in subagents:
        for index, name in enumerate(sub.tools):
            if name in SANDBOX_TOOLS:
                raise ConfigError(
                    f"{key}.subagents.{sub.name}.tools[{index}]",
                    f"{name} is a sandboxed tool, which this host's groups have only with "
                    "sandbox_socket set",
                )


def _tools(table: Table) -> tuple[str, ...]:
    values: Any = table.data.get("tools")
    if not isinstance(values, list) or not values:
        raise ConfigError(
            table.at("tools"), 'is required: a list of the group\'s tools, like ["bash", "read"]'
        )
    known = (*HOST_TOOLS, *TASK_TOOLS, *SANDBOX_TOOLS)
    for index, value in enumerate(values):
        at = f"{table.at('tools')}[{index}]"
        if value not in known:
            raise ConfigError(
                at, f"{describe(value)} is not one of its group's tools: {', '.join(known)}"
            )
        if value in values[:index]:
            raise ConfigError(at, f"{value} is listed twice")
    return tuple(values)


def _is_name(name: str) -> bool:
    return re.fullmatch(SUBAGENT_PATTERN, name) is not None and name not in RESERVED_SUBAGENTS


def _is_prompt(value: str) -> bool:
    return bool(value.strip()) and len(value.encode()) <= _MAX_PROMPT and "\0" not in value
