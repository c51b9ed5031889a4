"""Subagents through the real CLI and the scripted model, with the host's own hook and tool
server: only declared subagents start, each with its own tools, and every tool call is
known by the agent that made it (the broker's side: tests/test_subagent_policy.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import SdkMcpTool, create_sdk_mcp_server, tool

from nanoclaw.host.agent import MCP_SERVER, AgentSession, AgentSettings
from nanoclaw.host.audit_call import AuditScope
from nanoclaw.host.config_subagents import SubagentConfig
from nanoclaw.host.credential_proxy import CredentialProxy
from nanoclaw.host.model_credential import ModelCredential
from nanoclaw.host.swarm import CALLER
from tests.support.scripted_model import ModelRequest, ScriptedModel, ToolCall

pytestmark = pytest.mark.integration

BASH, WRITE = "mcp__nanoclaw__bash", "mcp__nanoclaw__write"
SUBAGENTS = (
    SubagentConfig("counter", "Counts things.", "You are COUNTER.", None, ("bash",)),
    SubagentConfig("speller", "Spells things.", "You are SPELLER.", None, ("bash",)),
)


def recording_tools(calls: list[tuple[str, str, dict[str, Any]]]) -> list[SdkMcpTool[Any]]:
    def make(name: str) -> SdkMcpTool[Any]:
        @tool(name, name, {"command": str})
        async def handler(args: dict[str, Any]) -> dict[str, Any]:
            calls.append((CALLER.get(), name, args))
            return {"content": [{"type": "text", "text": f"{name} ran for {CALLER.get()}"}]}

        return handler

    return [make("bash"), make("write")]


@pytest.fixture
async def credentials(scripted_model: ScriptedModel) -> AsyncIterator[CredentialProxy]:
    proxy = CredentialProxy(ModelCredential("sk-test", subscription=False), scripted_model.url)
    await proxy.start()
    yield proxy
    await proxy.close()


def session(
    tmp_path: Path, credentials: CredentialProxy, calls: list[Any], subagents: Any = SUBAGENTS
) -> AgentSession:
    tools = recording_tools(calls)
    return AgentSession(
        AgentSettings(
            folder="alpha",
            state_dir=tmp_path / "state",
            model=None,
            base_url=None,
            credentials=credentials,
            system_prompt="You are Andy.",
            tools=create_sdk_mcp_server(MCP_SERVER, tools=tools),
            tool_names=tuple(t.name for t in tools),
            audit=AuditScope("alpha"),
            subagents=subagents,
        )
    )


def results(request: ModelRequest) -> str:
    return " | ".join(r["content"] for r in request.tool_results)


def swarm_script(request: ModelRequest) -> str | list[str | ToolCall] | ToolCall:
    for name in ("COUNTER", "SPELLER"):
        if name in request.system_text:  # a subagent's own requests
            if request.tool_results:
                return f"{name} saw: {results(request)}"
            tool = WRITE if "write" in request.last_user_text else BASH
            return ToolCall(tool, {"command": f"echo {name}"})
    if request.tool_results:
        return "all done: " + results(request)
    text = request.last_user_text
    if "undeclared" in text:
        return ToolCall("Agent", {"description": "x", "prompt": "go", "subagent_type": "fork"})
    start = {"description": "x", "prompt": "go", "subagent_type": "counter"}
    if "background" in text:
        return ToolCall("Agent", {**start, "run_in_background": True})
    if "opus" in text:
        return ToolCall("Agent", {**start, "model": "opus"})
    if "main writes" in text:
        return ToolCall(WRITE, {"command": "main"})
    prompt = "please write" if "write" in text else "go"
    return [
        ToolCall("Agent", {"description": "count", "prompt": prompt, "subagent_type": "counter"}),
        ToolCall("Agent", {"description": "spell", "prompt": prompt, "subagent_type": "speller"}),
    ]


async def ask_once(
    scripted_model: ScriptedModel,
    tmp_path: Path,
    credentials: CredentialProxy,
    prompt: str,
    subagents: Any = SUBAGENTS,
) -> tuple[str, list[Any]]:
    """The reply to `prompt` in a fresh session scripted by swarm_script, and the calls made."""
    scripted_model.script = swarm_script
    calls: list[Any] = []
    agent = session(tmp_path, credentials, calls, subagents)
    try:
        reply = await agent.ask(prompt, None, 120)
    finally:
        await agent.close()
    return reply.text, calls


async def test_two_subagents_run_their_tools_as_themselves_and_answer_in_one_reply(
    scripted_model: ScriptedModel, tmp_path: Path, credentials: CredentialProxy
) -> None:
    text, calls = await ask_once(scripted_model, tmp_path, credentials, "start both")
    assert sorted(calls) == [
        ("counter", "bash", {"command": "echo COUNTER"}),
        ("speller", "bash", {"command": "echo SPELLER"}),
    ]
    assert "COUNTER saw: bash ran for counter" in text, text
    assert "SPELLER saw: bash ran for speller" in text, text
    first = scripted_model.requests[0]
    assert first.tool_names == ["Agent", BASH, WRITE]  # the only built-in: Agent
    for request in scripted_model.requests[1:]:
        if "COUNTER" in request.system_text:
            assert request.tool_names == [BASH]  # its own tools only; no Agent


async def test_a_subagent_asking_for_a_tool_it_was_not_given_is_refused(
    scripted_model: ScriptedModel, tmp_path: Path, credentials: CredentialProxy
) -> None:
    scripted_model.script = swarm_script
    calls: list[Any] = []
    agent = session(tmp_path, credentials, calls)
    try:
        reply = await agent.ask("start both to write", None, 120)
        assert calls == []  # neither subagent's write ran
        assert reply.text.count("saw:") == 2, reply.text
        # The control: the main agent has the tool.
        reply = await agent.ask("main writes", None, 120)
    finally:
        await agent.close()
    assert calls == [("main", "write", {"command": "main"})]
    assert reply.text == "all done: write ran for main"


@pytest.mark.parametrize(
    ("prompt", "refusal"),
    [("undeclared", "subagent_type must be one of"), ("opus", "model may not be given")],
)
async def test_only_declared_subagents_start_and_only_as_declared(
    scripted_model: ScriptedModel,
    tmp_path: Path,
    credentials: CredentialProxy,
    prompt: str,
    refusal: str,
) -> None:
    text, calls = await ask_once(scripted_model, tmp_path, credentials, prompt)
    assert calls == []
    assert refusal in text, text


async def test_a_group_without_subagents_is_offered_no_built_in_tool(
    scripted_model: ScriptedModel, tmp_path: Path, credentials: CredentialProxy
) -> None:
    text, calls = await ask_once(scripted_model, tmp_path, credentials, "start both", ())
    assert scripted_model.requests[0].tool_names == [BASH, WRITE]
    assert calls == [] and "all done" in text, text


async def test_a_subagent_asked_into_the_background_still_answers_within_the_turn(
    scripted_model: ScriptedModel, tmp_path: Path, credentials: CredentialProxy
) -> None:
    text, calls = await ask_once(scripted_model, tmp_path, credentials, "background")
    assert calls == [("counter", "bash", {"command": "echo COUNTER"})]
    assert "COUNTER saw: bash ran for counter" in text, text
