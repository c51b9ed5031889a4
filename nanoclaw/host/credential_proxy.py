"""The credential proxy: the CLI's way to the model API, so that only the host holds the key.

Each CLI process is started with ANTHROPIC_BASE_URL pointing here (loopback, a free port)
and a random placeholder as its ANTHROPIC_API_KEY, issued for that process and revoked
when it ends. A request passes only with a live placeholder and only to the Messages
API's paths; the proxy swaps the placeholder for the real credential (an API key, or a
Claude subscription's token: nanoclaw.host.model_credential), sends the request to the
group's endpoint, and streams the answer back as it arrives (the API answers in SSE).
The real credential never enters the CLI's environment or files, and no log line carries
it: while the proxy runs, a filter on every log handler blanks it and the placeholders.

Loopback rather than a Unix socket: ANTHROPIC_BASE_URL is the CLI's documented way to an
endpoint, while its ANTHROPIC_UNIX_SOCKET is undocumented and covers only some requests.
Anyone who can reach the port still needs a live placeholder. A CLI in an agent unit has
no loopback of the host's: its base URL is the model relay on its own namespace's loopback
(nanoclaw.broker.relay), which leads to this proxy's Unix socket.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import ClientError, ClientSession, ClientTimeout, web
from multidict import CIMultiDict

from nanoclaw.host.model_credential import ModelCredential
from nanoclaw.host.relay_socket import RelaySocket

log = logging.getLogger("nanoclaw.credentials")

ANTHROPIC_API = "https://api.anthropic.com"
# What the CLI sends (POST, with ?beta=true): a turn, and token counting.
ALLOWED_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})
MAX_REQUEST_BYTES = 64 * 1024 * 1024  # long conversations with images
CONNECT_TIMEOUT_SECONDS = 30.0
# Hop-by-hop headers, and the credentials the client sent, never go further.
_REQUEST_DROPPED = frozenset(
    {
        "host",
        "x-api-key",
        "authorization",
        "content-length",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_RESPONSE_DROPPED = frozenset(
    {"content-length", "connection", "keep-alive", "transfer-encoding", "trailer", "upgrade"}
)
REDACTED = "[redacted]"


def default_endpoint(env: Mapping[str, str] = os.environ) -> str:
    """Where groups without a configured base_url go: the environment's, or Anthropic's."""
    return (env.get("ANTHROPIC_BASE_URL") or ANTHROPIC_API).rstrip("/")


@dataclass(frozen=True)
class Grant:
    group: str
    endpoint: str


class RedactSecrets(logging.Filter):
    """Blanks the given secrets in a record's message and traceback, whoever logged it."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = self.redact(message), None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


class CredentialProxy:
    def __init__(self, credential: ModelCredential | None, default: str = ANTHROPIC_API) -> None:
        self._credential = credential  # None: endpoints without keys (a local model server)
        self._default = default
        self._grants: dict[str, Grant] = {}
        self._redact = RedactSecrets()
        if credential is not None:
            self._redact.secrets.add(credential.secret)
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None
        self._relay_socket: RelaySocket | None = None
        self.url = ""

    def needs_key(self, endpoint: str | None) -> bool:
        """Whether a CLI for `endpoint` would reach Anthropic's API without a key to give it."""
        return not self._credential and (endpoint or self._default).rstrip("/") == ANTHROPIC_API

    @property
    def subscription(self) -> bool:
        """Whether requests carry a Claude subscription's token rather than an API key."""
        return self._credential is not None and self._credential.subscription

    def issue(self, group: str, endpoint: str | None) -> str:
        """A fresh placeholder for one CLI process of `group`, valid until revoked."""
        placeholder = "sk-nanoclaw-" + secrets.token_urlsafe(32)
        self._grants[placeholder] = Grant(group, (endpoint or self._default).rstrip("/"))
        self._redact.secrets.add(placeholder)
        return placeholder

    def revoke(self, placeholder: str) -> None:
        self._grants.pop(placeholder, None)
        self._redact.secrets.discard(placeholder)

    async def start(self, relay_socket: str | None = None) -> str:
        """Listen on a free loopback port (for a local CLI), and at `relay_socket` when
        given (where the model relays of agent units lead); returns the loopback URL."""
        for handler in logging.getLogger().handlers:
            handler.addFilter(self._redact)
        # No total timeout: a turn may stream for as long as the host's run timeout allows.
        timeout = ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_SECONDS)
        # auto_decompress off: bytes pass through as the endpoint encoded them.
        self._session = ClientSession(timeout=timeout, auto_decompress=False)
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        log.info("credential proxy listening on %s", self.url)
        if relay_socket is not None:
            self._relay_socket = RelaySocket(relay_socket)
            await web.SockSite(self._runner, await self._relay_socket.bind()).start()
            log.info("credential proxy listening on %s", relay_socket)
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._relay_socket is not None:
            self._relay_socket.unlink()
        if self._session is not None:
            await self._session.close()
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self._redact)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        grant = self._grants.get(request.headers.get("x-api-key", ""))
        path = request.rel_url.raw_path
        if grant is None:
            log.warning("refused %s %s: unknown or revoked placeholder", request.method, path)
            return _error(401, "authentication_error", "unknown or revoked placeholder key")
        if request.method != "POST" or path not in ALLOWED_PATHS:
            log.warning(
                "refused %s %s: not a model API path", request.method, path, extra=_ctx(grant)
            )
            return _error(404, "not_found_error", f"{request.method} {path} is not forwarded")
        return await self._forward(request, grant)

    async def _forward(self, request: web.Request, grant: Grant) -> web.StreamResponse:
        assert self._session is not None
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _REQUEST_DROPPED
        )
        if self._credential is not None:
            self._credential.put_on(headers)
        query = request.rel_url.raw_query_string
        target = grant.endpoint + request.rel_url.raw_path + (f"?{query}" if query else "")
        started = time.monotonic()
        try:
            upstream = await self._session.post(
                target, data=await request.read(), headers=headers, allow_redirects=False
            )
        except (ClientError, TimeoutError) as exc:
            log.warning("model endpoint unreachable: %s", type(exc).__name__, extra=_ctx(grant))
            return _error(502, "api_error", f"the model endpoint is unreachable ({exc})")
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in _RESPONSE_DROPPED:
                    response.headers.add(name, value)
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():  # as it arrives: no buffering
                    await response.write(chunk)
                await response.write_eof()
            except (ClientError, ConnectionError) as exc:
                log.warning("stream broken: %s", type(exc).__name__, extra=_ctx(grant))
        elapsed = int((time.monotonic() - started) * 1000)
        log.debug(
            "%s %s -> %d in %d ms",
            request.method,
            request.rel_url.raw_path,
            upstream.status,
            elapsed,
            extra={**_ctx(grant), "duration_ms": elapsed},
        )
        return response


def _ctx(grant: Grant) -> dict[str, str]:
    return {"group": grant.group}


def _error(status: int, kind: str, message: str) -> web.Response:
    # The API's own error shape, so the CLI reports it as it would the real endpoint's.
    body = {"type": "error", "error": {"type": kind, "message": "nanoclaw proxy: " + message}}
    return web.json_response(body, status=status)
