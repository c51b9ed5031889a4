"""The credential proxy between the CLI and the model endpoint, with real HTTP both sides.

The key arrives upstream only through the proxy, and a subscription token as the CLI
itself sends one; wrong, revoked and missing placeholders and paths outside the Messages
API are refused before anything goes upstream; answers stream through unbuffered; logs
never show the key or the token. The last two tests run the real host and CLI: they
search the CLI process's environment and files for the key, and see an expired token
reported in the room.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from nanoclaw.appliance.homeserver import EmbeddedHomeserver
from nanoclaw.host.credential_proxy import REDACTED, CredentialProxy
from nanoclaw.host.model_credential import ModelCredential
from tests.support.host_process import HostProcess, write_secret
from tests.support.scripted_model import ModelError, ScriptedModel
from tests.support.world import API_KEY, World, echo

KEY = "sk-ant-real-key-abcdef0123456789"
TOKEN = "sk-ant-oat01-real-token-abcdef0123456789"
TURN = {"model": "claude-test", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
# Betas the CLI sends of its own (seen in its requests), one of them the OAuth beta.
CLI_BETAS = "claude-code-20250219,oauth-2025-04-20, interleaved-thinking-2025-05-14"


async def started(credential: ModelCredential) -> CredentialProxy:
    proxy = CredentialProxy(credential)
    await proxy.start()
    return proxy


@pytest.fixture
async def proxy() -> AsyncIterator[CredentialProxy]:
    proxy = await started(ModelCredential(KEY, subscription=False))
    yield proxy
    await proxy.close()


@pytest.fixture
async def token_proxy() -> AsyncIterator[CredentialProxy]:
    proxy = await started(ModelCredential(TOKEN, subscription=True))
    yield proxy
    await proxy.close()


class Upstream:
    """An endpoint that records every request and streams its answer in two parts, the
    second only once `release` is set."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.release = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path_qs, dict(request.headers)))
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"event: ping\ndata: {}\n\n")
        await asyncio.wait_for(self.release.wait(), 10)
        await response.write(b"event: message_stop\ndata: {}\n\n")
        await response.write_eof()
        return response


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    endpoint = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", endpoint.handle)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    endpoint.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield endpoint
    endpoint.release.set()
    await runner.cleanup()


async def post(
    proxy: CredentialProxy, key: str | None, path: str = "/v1/messages?beta=true", **extra: str
) -> tuple[int, dict[str, object]]:
    headers = {"anthropic-version": "2023-06-01", **extra}
    if key is not None:
        headers["x-api-key"] = key
    async with (
        aiohttp.ClientSession() as session,
        session.post(URL(proxy.url + path, encoded=True), json=TURN, headers=headers) as reply,
    ):
        return reply.status, json.loads(await reply.read())


async def test_the_real_key_arrives_upstream_in_place_of_the_placeholder(
    proxy: CredentialProxy, scripted_model: ScriptedModel
) -> None:
    scripted_model.api_key = KEY
    placeholder = proxy.issue("family", scripted_model.url)
    assert KEY not in placeholder
    status, body = await post(
        proxy, placeholder, authorization="Bearer " + placeholder, **{"anthropic-beta": CLI_BETAS}
    )
    assert status == 200 and body["type"] == "message"
    request = scripted_model.requests[-1]
    assert request.headers["x-api-key"] == KEY
    assert "authorization" not in request.headers, "the client's own credentials stay behind"
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["anthropic-beta"] == CLI_BETAS, "with a key, the betas pass as sent"
    status, body = await post(proxy, placeholder, "/v1/messages/count_tokens")
    assert status == 200 and "input_tokens" in body


@pytest.mark.parametrize(
    ("sent", "arrives"),
    [
        ({}, "oauth-2025-04-20"),
        (
            {"anthropic-beta": CLI_BETAS},
            "claude-code-20250219,oauth-2025-04-20,interleaved-thinking-2025-05-14",
        ),
        ({"anthropic-beta": "claude-code-20250219"}, "claude-code-20250219,oauth-2025-04-20"),
    ],
)
async def test_a_subscription_token_arrives_as_the_cli_would_send_it(
    token_proxy: CredentialProxy, scripted_model: ScriptedModel, sent: dict[str, str], arrives: str
) -> None:
    """A Bearer token with the OAuth beta merged into the CLI's own, and no x-api-key."""
    scripted_model.oauth_token = TOKEN
    placeholder = token_proxy.issue("family", scripted_model.url)
    status, body = await post(
        token_proxy, placeholder, authorization="Bearer " + placeholder, **sent
    )
    assert status == 200 and body["type"] == "message", body
    request = scripted_model.requests[-1]
    assert request.headers["authorization"] == "Bearer " + TOKEN
    assert request.headers["anthropic-beta"] == arrives
    assert "x-api-key" not in request.headers, "the placeholder stays behind"
    assert placeholder not in str(request.headers)
    status, body = await post(token_proxy, placeholder, "/v1/messages/count_tokens", **sent)
    assert status == 200 and "input_tokens" in body, "count_tokens takes it too"


async def test_a_refused_token_comes_back_as_the_api_said_it(
    token_proxy: CredentialProxy, scripted_model: ScriptedModel
) -> None:
    scripted_model.oauth_token = "sk-ant-oat01-the-renewed-one"
    status, body = await post(token_proxy, token_proxy.issue("family", scripted_model.url))
    assert status == 401
    assert body["error"] == {
        "type": "authentication_error",
        "message": "OAuth token has expired. Please obtain a new token or refresh your "
        "existing token.",
    }


async def test_a_wrong_missing_or_revoked_placeholder_is_refused(
    proxy: CredentialProxy, scripted_model: ScriptedModel
) -> None:
    placeholder = proxy.issue("family", scripted_model.url)
    for key in (None, "sk-nanoclaw-guessed", KEY, placeholder[:-1]):
        status, body = await post(proxy, key)
        assert status == 401, key
        assert body["error"]["type"] == "authentication_error"  # type: ignore[index]
    proxy.revoke(placeholder)
    assert (await post(proxy, placeholder))[0] == 401
    assert scripted_model.requests == [], "nothing went upstream"


async def test_only_the_messages_api_is_forwarded(
    proxy: CredentialProxy, upstream: Upstream
) -> None:
    placeholder = proxy.issue("family", upstream.url)
    for path in (
        "/v1/models",
        "/v1/complete",
        "/v1/messages/batches",
        "/v1/messages/../files",
        "/v1/messages/%2e%2e/files",
        "/api/oauth/profile",
    ):
        status, body = await post(proxy, placeholder, path)
        assert status == 404, path
        assert "is not forwarded" in body["error"]["message"]  # type: ignore[index]
    async with (
        aiohttp.ClientSession() as session,
        session.get(proxy.url + "/v1/messages", headers={"x-api-key": placeholder}) as reply,
    ):
        assert reply.status == 404, "POST only"
    assert upstream.seen == []


async def test_the_answer_streams_through_unbuffered(
    proxy: CredentialProxy, upstream: Upstream
) -> None:
    placeholder = proxy.issue("family", upstream.url)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            proxy.url + "/v1/messages", json=TURN, headers={"x-api-key": placeholder}
        ) as reply,
    ):
        # The upstream holds its last event until we have seen the first: a proxy that
        # buffered would never deliver it, and this would time out.
        first = await asyncio.wait_for(reply.content.readuntil(b"\n\n"), 5)
        assert first == b"event: ping\ndata: {}\n\n"
        upstream.release.set()
        assert await asyncio.wait_for(reply.content.read(), 5) == (
            b"event: message_stop\ndata: {}\n\n"
        )
    assert upstream.seen[0][2]["x-api-key"] == KEY


async def test_an_unreachable_endpoint_is_a_502_in_the_apis_shape(proxy: CredentialProxy) -> None:
    placeholder = proxy.issue("family", "http://127.0.0.1:1")
    status, body = await post(proxy, placeholder)
    assert status == 502 and body["error"]["type"] == "api_error"  # type: ignore[index]


@pytest.mark.parametrize("credential", [KEY, TOKEN])
async def test_logs_never_show_the_key_or_a_placeholder(tmp_path: Path, credential: str) -> None:
    path = tmp_path / "log"
    handler = logging.FileHandler(path)
    logging.getLogger().addHandler(handler)
    proxy = CredentialProxy(ModelCredential(credential, subscription=credential == TOKEN))
    try:
        await proxy.start()
        placeholder = proxy.issue("family", "http://127.0.0.1:1")
        log = logging.getLogger("nanoclaw.test")
        log.warning("a careless line with %s and %s", credential, placeholder)
        try:
            raise ValueError(f"the headers were {{'x-api-key': '{credential}'}}")
        except ValueError:
            log.exception("a traceback")
        await post(proxy, placeholder)  # the proxy's own lines, an unreachable endpoint
    finally:
        await proxy.close()
        logging.getLogger().removeHandler(handler)
        handler.close()
    text = path.read_text()
    assert credential not in text and placeholder not in text
    assert text.count(REDACTED) >= 3 and "ValueError" in text


def cli_processes(host_pid: int) -> list[int]:
    """The host's child processes that run the bundled claude CLI."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid"))
        if ppid == host_pid and b"claude" in cmdline:
            found.append(int(entry.name))
    return found


async def answering_host(world: World, config_key: str, secret: str) -> HostProcess:
    """The world's host with `secret` as the systemd credential that `config_key` names (as
    under systemd, in $CREDENTIALS_DIRECTORY), once it has answered a first message."""
    await world.setup()
    credentials = world.root / "credentials"
    write_secret(credentials, "model-secret", secret)
    model = {k: v for k, v in world.settings["model"].items() if k != "api_key_file"}
    world.settings["model"] = {**model, config_key: "model-secret"}
    host = await world.start_host(env={"CREDENTIALS_DIRECTORY": str(credentials)})
    await world.alice.send(world.main_room, "hello")
    replies = await world.alice.wait_for_replies(world.bot.user_id, world.main_room)
    assert replies[0]["content"]["body"] == "echo: hello", "the secret reached the model"
    return host


def cli_environ(host: HostProcess) -> dict[bytes, bytes]:
    """The environment of the host's warm CLI."""
    assert host.process is not None
    (cli,) = cli_processes(host.process.pid)
    return dict(
        item.split(b"=", 1)
        for item in Path(f"/proc/{cli}/environ").read_bytes().split(b"\0")
        if b"=" in item
    )


@pytest.mark.integration
async def test_the_cli_holds_only_a_placeholder(
    homeserver, scripted_model: ScriptedModel, tmp_path: Path
) -> None:
    """The key as a systemd credential, as under systemd."""
    scripted_model.script = echo
    scripted_model.api_key = API_KEY
    world = World(homeserver, scripted_model, tmp_path)
    try:
        host = await answering_host(world, "api_key_credential", API_KEY)
        environ = cli_environ(host)
        assert not any(API_KEY.encode() in v for v in environ.values())
        assert environ[b"ANTHROPIC_API_KEY"].startswith(b"sk-nanoclaw-")
        assert environ[b"ANTHROPIC_BASE_URL"].startswith(b"http://127.0.0.1:")
        assert environ[b"CREDENTIALS_DIRECTORY"] == b"", "no way to the credential files"
        state = Path(world.settings["data_dir"]) / "sessions" / "main"
        files = [p for p in state.rglob("*") if p.is_file()]
        assert files, "the CLI wrote its config and transcript here"
        for file in files:
            assert API_KEY.encode() not in file.read_bytes(), file
    finally:
        await world.close()


@pytest.mark.integration
async def test_a_subscription_token_reaches_the_model_and_its_expiry_the_room(
    homeserver: EmbeddedHomeserver, scripted_model: ScriptedModel, tmp_path: Path
) -> None:
    """The real host, SDK and CLI with a token as a systemd credential: the model gets it
    as the CLI itself would send it, the CLI never holds it, and once it has expired the
    room is told what to do, without retries."""
    scripted_model.script = echo
    scripted_model.oauth_token = TOKEN
    world = World(homeserver, scripted_model, tmp_path)
    try:
        host = await answering_host(world, "oauth_token_credential", TOKEN)
        request = scripted_model.requests[-1]
        assert request.headers["authorization"] == "Bearer " + TOKEN
        assert "x-api-key" not in request.headers
        betas = request.headers["anthropic-beta"].split(",")
        assert "oauth-2025-04-20" in betas and len(betas) == len(set(betas)), betas
        assert len(betas) > 1, "the CLI's own betas stay"
        environ = cli_environ(host)
        assert not any(TOKEN.encode() in v for v in environ.values())
        assert environ[b"ANTHROPIC_API_KEY"].startswith(b"sk-nanoclaw-")
        assert environ[b"CLAUDE_CODE_OAUTH_TOKEN"] == b""

        scripted_model.oauth_token = "sk-ant-oat01-a-renewed-one"  # ours has expired
        await world.alice.send(world.main_room, "still there?")
        replies = await world.alice.wait_for_replies(world.bot.user_id, world.main_room, count=2)
        notice = replies[1]["content"]["body"]
        assert notice.startswith("⚠️ I could not answer: Anthropic refused the subscription"), notice
        for said in ("OAuth token has expired", "claude setup-token", "systemctl restart"):
            assert said in notice, notice
        log = host.log_text()
        assert "attempt 1 of 3" in log and "attempt 2 of 3" not in log, "not retried"
        assert TOKEN not in log and TOKEN not in notice

        # Revoked, the API answers 403 and the CLI says so in words of its own.
        scripted_model.oauth_token = TOKEN
        scripted_model.script = lambda r: ModelError(403, "OAuth token has been revoked.")
        await world.alice.send(world.main_room, "and now?")
        replies = await world.alice.wait_for_replies(world.bot.user_id, world.main_room, count=3)
        notice = replies[2]["content"]["body"]
        assert "subscription token (Failed to authenticate: OAuth token revoked" in notice, notice
        assert "claude setup-token" in notice

    finally:
        await world.close()
