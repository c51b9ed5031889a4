"""The scripted model, served to the real Claude Agent SDK and its bundled CLI.

These tests also pin the CLI behaviours the host relies on: how a tool call travels, how
an overloaded model is reported and how often it is retried, and how an unknown session
id fails.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import (
    ClaudeAgentOptions,
    ClaudeSDKClient,
    ResultError,
    ResultMessage,
    SystemMessage,
    create_sdk_mcp_server,
    query,
    tool,
)

from tests.support.scripted_model import (
    ModelError,
    ModelRequest,
    ScriptedModel,
    ScriptError,
    ToolCall,
)

pytestmark = pytest.mark.integration

API_KEY = "sk-test"
added: list[dict[str, Any]] = []


@tool("add", "Add two numbers", {"a": float, "b": float})
async def add(args: dict[str, Any]) -> dict[str, Any]:
    added.append(args)
    return {"content": [{"type": "text", "text": str(args["a"] + args["b"])}]}


def options(model: ScriptedModel, root: Path, **overrides: Any) -> ClaudeAgentOptions:
    env = {
        "ANTHROPIC_BASE_URL": model.url,
        "ANTHROPIC_API_KEY": API_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CONFIG_DIR": str(root / "cfg"),
        "HOME": str(root / "home"),
        **overrides.pop("env", {}),
    }
    return ClaudeAgentOptions(
        tools=[],
        mcp_servers={"t": create_sdk_mcp_server("t", tools=[add])},
        allowed_tools=["mcp__t__add"],
        strict_mcp_config=True,
        setting_sources=[],
        cwd=str(root),
        env=env,
        **overrides,
    )


def adder(request: ModelRequest) -> str | ToolCall:
    if request.tool_results:
        return f"sum is {request.tool_results[-1]['content']}"
    return ToolCall("mcp__t__add", {"a": 2, "b": 3})


async def test_a_tool_call_round_trip(scripted_model: ScriptedModel, tmp_path: Path) -> None:
    scripted_model.script = adder
    settings = options(scripted_model, tmp_path)
    results = [
        m
        async for m in query(prompt="add 2 and 3", options=settings)
        if isinstance(m, ResultMessage)
    ]
    assert [r.result for r in results] == ["sum is 5"]
    assert added[-1] == {"a": 2, "b": 3}, "the streamed input_json_delta chunks were reassembled"

    first, second = scripted_model.requests
    assert first.path == "/v1/messages" and first.body["stream"] is True
    assert first.headers["x-api-key"] == API_KEY
    assert first.last_user_text == "add 2 and 3"
    assert first.tool_names == ["mcp__t__add"]
    deferred = [t["name"] for t in first.body["tools"] if t.get("defer_loading")]
    assert deferred in ([], ["DeferredToolPlaceholder"]), "no real tool hides behind deferral"
    assert second.tool_results[0]["content"] == "5" and not second.tool_results[0]["is_error"]
    assert "add 2 and 3" in second.all_text and second.last_user_text == ""


async def test_an_overloaded_model_ends_in_an_error_result(
    scripted_model: ScriptedModel, tmp_path: Path
) -> None:
    scripted_model.script = lambda request: ModelError(529, "Overloaded for this test")
    # Unbounded, the CLI retries a 529 ten times with backoff up to 32 s: about three minutes.
    settings = options(scripted_model, tmp_path, env={"CLAUDE_CODE_MAX_RETRIES": "1"})
    async with ClaudeSDKClient(settings) as client:
        await client.query("hello")
        messages = [m async for m in client.receive_response()]
    retries = [m for m in messages if isinstance(m, SystemMessage) and m.subtype == "api_retry"]
    assert [r.data["error_status"] for r in retries] == [529]
    result = messages[-1]
    assert isinstance(result, ResultMessage)
    assert result.is_error and result.api_error_status == 529
    assert result.terminal_reason == "api_error"
    assert result.result is not None and result.result.startswith("API Error: 529 Overloaded")
    assert len(scripted_model.requests) == 2, "one try and the one retry allowed"


async def test_resuming_an_unknown_session_fails_at_connect(
    scripted_model: ScriptedModel, tmp_path: Path
) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(ResultError) as failure:
        async with ClaudeSDKClient(options(scripted_model, tmp_path, resume=unknown)):
            pass
    assert failure.value.subtype == "error_during_execution"
    assert failure.value.errors == [f"No conversation found with session ID: {unknown}"]
    assert scripted_model.requests == []


def post(model: ScriptedModel, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
    request = urllib.request.Request(
        model.url + path, json.dumps(body).encode(), {"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_plain_http_streaming_json_and_errors() -> None:
    with ScriptedModel() as model:  # the default script echoes the last user turn
        user = {"role": "user", "content": [{"type": "text", "text": "hi"}]}
        status, raw = post(model, "/v1/messages", {"model": "m1", "messages": [user]})
        message = json.loads(raw)
        assert (status, message["model"], message["content"]) == (
            200,
            "m1",
            [{"type": "text", "text": "echo: hi"}],
        )

        model.script = lambda request: ["thinking aloud", ToolCall("x", {"k": "v" * 40})]
        status, raw = post(model, "/v1/messages?beta=true", {"messages": [user], "stream": True})
        events = [
            json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")
        ]
        assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
        partial = "".join(
            e["delta"].get("partial_json", "") for e in events if e["type"] == "content_block_delta"
        )
        assert json.loads(partial) == {"k": "v" * 40}
        assert [e["delta"]["stop_reason"] for e in events if e["type"] == "message_delta"] == [
            "tool_use"
        ]

        async def later(request: ModelRequest) -> str:
            await asyncio.sleep(0.01)
            return "later"

        model.script = later
        status, raw = post(model, "/v1/messages", {"messages": [user]})
        assert json.loads(raw)["content"] == [{"type": "text", "text": "later"}]

        model.script = lambda request: ModelError(500, "boom")
        status, raw = post(model, "/v1/messages", {"messages": [user]})
        assert (status, json.loads(raw)["error"]) == (500, {"type": "api_error", "message": "boom"})
        assert post(model, "/v1/messages/count_tokens", {"messages": [user]})[0] == 200
        assert len(model.requests) == 4, "count_tokens is not a model request"


def test_a_broken_script_fails_the_test_when_the_model_stops() -> None:
    def broken(request: ModelRequest) -> str:
        raise KeyError("no such field")

    model = ScriptedModel(broken).start()
    assert post(model, "/v1/messages", {"messages": []})[0] == 400  # no backoff retries for a 400
    with pytest.raises(ScriptError):
        model.stop()
