"""A scripted Anthropic-compatible Messages API server for tests.

The real Claude Code CLI (bundled with the Agent SDK) is pointed at it through
ANTHROPIC_BASE_URL. Each reply is chosen by a test's script from the request's content,
never from a request counter: the CLI may slip in extra requests of its own. The server
runs in its own thread and event loop, so it serves sync tests, async tests and hosts
started as subprocesses alike.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToolCall:
    """A tool_use block; `name` is the full name the model sees, e.g. mcp__t__add."""

    name: str
    input: dict[str, Any]


@dataclass(frozen=True)
class ModelError:
    """Answer the request with this HTTP error, as the real API would (529, 500, 400...)."""

    status: int
    message: str


Reply = str | ToolCall | list[str | ToolCall] | ModelError
# A script may be async: it can then hold its reply without blocking other requests.
Script = Callable[["ModelRequest"], Reply | Awaitable[Reply]]

# The error types of the real API, so the CLI reacts as it would in production.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


OAUTH_BETA = "oauth-2025-04-20"
OAUTH_EXPIRED = "OAuth token has expired. Please obtain a new token or refresh your existing token."


def _text_of(content: Any) -> list[str]:
    """The text parts of a message's or tool result's content (a string or blocks)."""
    if isinstance(content, str):
        return [content]
    return [block["text"] for block in content or [] if block.get("type") == "text"]


@dataclass(frozen=True)
class ModelRequest:
    """One /v1/messages request as the CLI sent it."""

    body: dict[str, Any]
    headers: dict[str, str]  # names lower-cased
    path: str

    @property
    def _last_user_content(self) -> Any:
        users = [m for m in self.body.get("messages", []) if m.get("role") == "user"]
        return users[-1]["content"] if users else []

    @property
    def last_user_text(self) -> str:
        """The text blocks of the last user message, joined by newlines (tool results left out)."""
        return "\n".join(_text_of(self._last_user_content))

    @property
    def tool_results(self) -> list[dict[str, Any]]:
        """The tool_result blocks of the last user message, their content as plain text."""
        content = self._last_user_content
        if isinstance(content, str):
            return []
        return [
            {
                "tool_use_id": block["tool_use_id"],
                "content": "\n".join(_text_of(block.get("content"))),
                "is_error": bool(block.get("is_error", False)),
            }
            for block in content
            if block.get("type") == "tool_result"
        ]

    @property
    def system_text(self) -> str:
        return "\n".join(_text_of(self.body.get("system", [])))

    @property
    def tool_names(self) -> list[str]:
        """The tools the model can call in this request.

        Deferred tools (`defer_loading`) are left out: the model cannot call them unless a
        ToolSearch tool, itself listed here, loads them. The CLI adds such a stub,
        DeferredToolPlaceholder, whenever MCP tools are present.
        """
        return [t["name"] for t in self.body.get("tools", []) if not t.get("defer_loading")]

    @property
    def all_text(self) -> str:
        """Every text of every message, tool results included: all the model was shown."""
        parts: list[str] = []
        for message in self.body.get("messages", []):
            content = message.get("content")
            parts += _text_of(content)
            if not isinstance(content, str):
                for block in content:
                    if block.get("type") == "tool_result":
                        parts += _text_of(block.get("content"))
        return "\n".join(parts)


def echo(request: ModelRequest) -> Reply:
    """The default script."""
    return "echo: " + request.last_user_text


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _chunks(text: str, size: int = 16) -> Iterator[str]:
    # Several deltas per block, as the real API streams them, so the CLI's reassembly is exercised.
    for start in range(0, len(text), size):
        yield text[start : start + size]


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class ScriptError(Exception):
    """The test's script raised; reported when the model is stopped."""


class ScriptedModel:
    """Runs an aiohttp server on 127.0.0.1 in its own thread with its own event loop, so it
    serves both sync and async tests and host processes started as subprocesses."""

    def __init__(self, script: Script | None = None) -> None:
        self.script: Script = script or echo
        self.url = ""
        # When set, requests with another x-api-key are refused as the real API would.
        self.api_key: str | None = None
        # When set, requests must carry this subscription token as the CLI sends one; any
        # other is refused as the real API refuses an expired one.
        self.oauth_token: str | None = None
        self._requests: list[ModelRequest] = []
        self._lock = threading.Lock()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def requests(self) -> list[ModelRequest]:
        """A snapshot of every /v1/messages request received so far."""
        with self._lock:
            return list(self._requests)

    def start(self) -> ScriptedModel:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name="scripted-model", daemon=True
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("scripted model did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop, self._thread = None, None
        if self._failure is not None:
            raise ScriptError("the model script raised") from self._failure

    def __enter__(self) -> ScriptedModel:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self, ready: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._listen())
        ready.set()
        self._loop.run_forever()
        assert self._runner is not None
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    async def _listen(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        app.router.add_route("*", "/{tail:.*}", self._other)
        # A short shutdown: a CLI killed mid-stream must not hold up a test's teardown.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def _other(self, request: web.Request) -> web.Response:
        # HEAD /api/hello is the CLI's connectivity probe; anything else is only logged.
        if request.path != "/api/hello":
            log.warning("scripted model: unexpected %s %s", request.method, request.path)
        return web.json_response({})

    def _refused(self, request: web.Request) -> web.Response | None:
        if self.oauth_token is not None:
            return _oauth_refusal(request, self.oauth_token)
        if self.api_key is None or request.headers.get("x-api-key") == self.api_key:
            return None
        return _unauthorized("invalid x-api-key")

    async def _count_tokens(self, request: web.Request) -> web.Response:
        return self._refused(request) or web.json_response(
            {"input_tokens": _tokens(await request.text())}
        )

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        refused = self._refused(request)
        if refused is not None:
            return refused
        raw = await request.text()
        headers = {name.lower(): value for name, value in request.headers.items()}
        model_request = ModelRequest(json.loads(raw), headers, request.path)
        with self._lock:
            self._requests.append(model_request)
        try:
            reply = self.script(model_request)
            if inspect.isawaitable(reply):  # async scripts hold a reply without blocking others
                reply = await reply
        except Exception as error:
            log.exception("scripted model: the script raised")
            self._failure = self._failure or error
            reply = ModelError(400, f"the test's model script raised {error!r}")
        if isinstance(reply, ModelError):
            return web.json_response(
                {
                    "type": "error",
                    "error": {
                        "type": ERROR_TYPES.get(reply.status, "api_error"),
                        "message": reply.message,
                    },
                },
                status=reply.status,
                headers={"request-id": "req_" + uuid.uuid4().hex[:24]},
            )
        blocks = _blocks(reply)
        model = str(model_request.body.get("model", "claude-scripted"))
        usage = {
            "input_tokens": _tokens(raw),
            "output_tokens": sum(_tokens(json.dumps(b)) for b in blocks),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
        message = {
            "id": "msg_" + uuid.uuid4().hex[:24],
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": blocks,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        if not model_request.body.get("stream"):
            return web.json_response(message)
        response = web.StreamResponse(
            headers={
                "content-type": "text/event-stream",
                "cache-control": "no-cache",
                "request-id": "req_" + uuid.uuid4().hex[:24],
            }
        )
        await response.prepare(request)
        async for event in _events(message):
            await response.write(event)
        await response.write_eof()
        return response


def _unauthorized(message: str) -> web.Response:
    error = {"type": "authentication_error", "message": message}
    return web.json_response({"type": "error", "error": error}, status=401)


def _oauth_refusal(request: web.Request, token: str) -> web.Response | None:
    """A refusal, in the real API's words, of a request that does not carry `token` the way
    the CLI sends a subscription token (the beta is pinned here, not taken from nanoclaw)."""
    if "x-api-key" in request.headers:
        return _unauthorized("invalid x-api-key")
    betas = {b.strip() for v in request.headers.getall("anthropic-beta", []) for b in v.split(",")}
    if OAUTH_BETA not in betas:
        return _unauthorized("OAuth authentication is currently not supported.")
    if request.headers.get("authorization") != f"Bearer {token}":
        return _unauthorized(OAUTH_EXPIRED)
    return None


def _blocks(reply: str | ToolCall | list[str | ToolCall]) -> list[dict[str, Any]]:
    """The content blocks of the assistant message for a non-error reply."""
    blocks: list[dict[str, Any]] = []
    for part in reply if isinstance(reply, list) else [reply]:
        if isinstance(part, ToolCall):
            blocks.append(
                {
                    "type": "tool_use",
                    "id": "toolu_" + uuid.uuid4().hex[:24],
                    "name": part.name,
                    "input": part.input,
                }
            )
        else:
            blocks.append({"type": "text", "text": part})
    return blocks


async def _events(message: dict[str, Any]) -> AsyncIterator[bytes]:
    """The SSE event stream of a finished message, as the real API sends it."""
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": {**message["usage"], "output_tokens": 1},
    }
    yield _sse("message_start", {"type": "message_start", "message": start})
    yield _sse("ping", {"type": "ping"})
    for index, block in enumerate(message["content"]):
        opening: dict[str, Any]
        if block["type"] == "text":
            opening = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": c} for c in _chunks(block["text"])]
        else:
            opening = {**block, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": c}
                for c in _chunks(json.dumps(block["input"]))
            ]
        yield _sse(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": opening},
        )
        for delta in deltas:
            yield _sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
    yield _sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": message["usage"]["output_tokens"]},
        },
    )
    yield _sse("message_stop", {"type": "message_stop"})
