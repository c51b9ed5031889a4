"""Subagents in the configuration: declared by the owner, each with a subset of its
group's tools, refused with the key that is wrong."""

from __future__ import annotations

from typing import Any
from unittest.mock import MagicMock

import pytest

from nanoclaw.host.config import parse_config
from nanoclaw.host.config_subagents import HOST_TOOLS, SANDBOX_TOOLS, TASK_TOOLS, SubagentConfig
from nanoclaw.host.groups import definition
from nanoclaw.host.host_tools import host_mcp_tools
from nanoclaw.host.task_tools import task_mcp_tools
from tests.test_config import edited, refused

RESEARCHER = {"description": "Looks things up.", "prompt": "You research.", "tools": ["fetch"]}


def with_subagents(subagents: Any, sandbox: bool = True) -> dict[str, Any]:
    data = edited("groups.family.subagents", subagents)
    if sandbox:
        data["sandbox_socket"] = "/run/nanoclaw/sandbox.sock"
    return data


def test_a_declared_subagent_is_parsed_and_stored_in_the_config_files_keys() -> None:
    sub = {**RESEARCHER, "model": "claude-haiku-4-5", "tools": ["bash", "send_message"]}
    config = parse_config(with_subagents({"researcher": sub}))
    family = next(g for g in config.groups if g.folder == "family")
    assert family.subagents == (
        SubagentConfig(
            "researcher", "Looks things up.", "You research.", "claude-haiku-4-5",
            ("bash", "send_message"),
        ),
    )  # fmt: skip
    assert definition(family)["subagents"] == {"researcher": sub}


@pytest.mark.parametrize(
    ("subagents", "key", "fragment"),
    [
        ({"researcher": {**RESEARCHER, "tools": ["Bash"]}}, ".researcher.tools[0]", "not one of"),
        ({"researcher": {**RESEARCHER, "tools": []}}, ".researcher.tools", "is required"),
        (
            {"researcher": {**RESEARCHER, "tools": ["bash", "bash"]}},
            ".researcher.tools[1]",
            "twice",
        ),
        ({"researcher": {**RESEARCHER, "prompt": " "}}, ".researcher.prompt", "non-empty"),
        ({"researcher": {"prompt": "p", "tools": ["bash"]}}, ".researcher.description", "required"),
        ({"researcher": {**RESEARCHER, "isolation": "remote"}}, ".researcher.isolation", "unknown"),
        ({"fork": RESEARCHER}, ".fork", "must match"),
        ({"main": RESEARCHER}, ".main", "must match"),
        (["researcher"], "", "must be a table"),
    ],
)
def test_a_bad_subagent_is_refused_naming_the_key(subagents: Any, key: str, fragment: str) -> None:
    error = refused(with_subagents(subagents))
    assert error.key == "groups.family.subagents" + key, str(error)
    assert fragment in error.reason, str(error)


def test_a_sandboxed_tool_needs_a_host_with_a_broker() -> None:
    error = refused(with_subagents({"researcher": RESEARCHER}, sandbox=False))
    assert error.key == "groups.family.subagents.researcher.tools[0]"
    assert "sandbox_socket" in error.reason


def test_the_tool_names_are_the_groups_tools() -> None:
    anything = MagicMock()
    made = host_mcp_tools("family", anything) + task_mcp_tools("family", anything)
    assert tuple(t.name for t in made) == HOST_TOOLS + TASK_TOOLS
    assert len(SANDBOX_TOOLS) == 7
