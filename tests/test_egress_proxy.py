"""The egress proxy against a real upstream and real clients (curl, as the fetch tool uses,
and Python's TLS), reached the way tool units reach it: through a relay from TCP on
127.0.0.1 to the proxy's Unix socket, a stand-in for the namespace's systemd-socket-proxyd.

The upstream can only live on loopback here, so most tests build the proxy with
allow_private=True and the upstream's ports allowed; the test of the default settings
shows that a domain pointing at loopback is refused. The upstream's name is localhost,
the one name that resolves to 127.0.0.1 without touching the resolver; its TLS site has
a certificate for that name.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import re
import shutil
import socket
import ssl
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from nanoclaw.host.egress_proxy import (
    MAX_HEAD_BYTES,
    MAX_HELLO_BYTES,
    ClientHelloError,
    Decision,
    EgressProxy,
    IncompleteClientHello,
    client_hello_sni,
)
from tests.support.egress import SocketProxy, self_signed_certificate, serve_site
from tests.support.net import free_port


@dataclass(frozen=True)
class Certificate:
    certificate: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """Trusts the upstream's certificate without checking its name, so that when a
        handshake with the wrong SNI fails, the proxy is what failed it."""
        context = ssl.create_default_context(cafile=str(self.certificate))
        context.check_hostname = False
        return context


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return Certificate(*self_signed_certificate("localhost", tmp_path_factory.mktemp("tls")))


@dataclass
class Upstream:
    port: int
    tls_port: int
    seen: list[dict[str, str]] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)  # SNI its TLS site got

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}/page?q=1"

    @property
    def tls_url(self) -> str:
        return f"https://localhost:{self.tls_port}/page?q=1"


@pytest.fixture
async def upstream(certificate: Certificate) -> AsyncIterator[Upstream]:
    """One site on two ports: plain HTTP, and HTTPS with a certificate for localhost."""
    state = Upstream(free_port(), free_port())

    async def page(request: web.Request) -> web.Response:
        state.seen.append(dict(request.headers) | {"path": request.path_qs})
        return web.Response(text="hello from upstream")

    app = web.Application()
    app.router.add_get("/page", page)
    files = (certificate.certificate, certificate.key)
    ports = (state.port, state.tls_port)
    async with serve_site(app, ports, files, on_server_name=state.server_names.append):
        yield state


@pytest.fixture
def socket_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    # Not tmp_path: a parametrized test's name can push it past sun_path's 108 bytes.
    return str(tmp_path_factory.mktemp("egress") / "proxy.sock")


@dataclass
class Running:
    """The proxy on its Unix socket, and the relay a tool unit's client talks to."""

    proxy: EgressProxy
    relay: SocketProxy

    @property
    def port(self) -> int:
        return self.relay.port

    def url(self, user: str, token: str) -> str:
        return f"http://{user}:{token}@127.0.0.1:{self.port}"

    async def close(self) -> None:
        await self.relay.close()
        await self.proxy.close()


async def running(socket_path: str, **settings: object) -> Running:
    proxy = EgressProxy(**settings)  # type: ignore[arg-type]
    await proxy.start(socket_path)
    relay = SocketProxy(socket_path)
    await relay.start()
    return Running(proxy, relay)


@pytest.fixture
async def proxy(upstream: Upstream, socket_path: str) -> AsyncIterator[Running]:
    made = await running(socket_path, ports={upstream.port, upstream.tls_port}, allow_private=True)
    yield made
    await made.close()


async def curl(*args: str, env: dict[str, str] | None = None) -> tuple[str, str]:
    """(status code, body) as curl sees them."""
    binary = shutil.which("curl")
    if binary is None:
        pytest.fail("curl is needed for these tests (apt-get install curl)", pytrace=False)
    process = await asyncio.create_subprocess_exec(
        binary,
        "-sS",
        "--noproxy",
        "",
        "-w",
        "\n%{http_code}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )
    out, err = await process.communicate()
    body, _, code = out.decode().rpartition("\n")
    return code, body + err.decode()


async def raw(port: int, head: bytes) -> bytes:
    """The reply head, and for a refusal the body up to the proxy's close (an open tunnel
    stays open, waiting for a ClientHello). No half-close: the relay would end it all."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    try:
        reply = await reader.readuntil(b"\r\n\r\n")
        if not reply.startswith(b"HTTP/1.1 200"):
            reply += await reader.read()
    except asyncio.IncompleteReadError as ended:
        reply = ended.partial
    writer.close()
    return reply


async def connect(
    port: int, target: str, token: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A CONNECT tunnel for group alpha through the relay, answered 200."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"CONNECT {target} HTTP/1.1\r\nProxy-Authorization: {basic('alpha', token)}\r\n\r\n"
    writer.write(head.encode())
    reply = await reader.readuntil(b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200"), reply
    return reader, writer


async def https_get(
    proxy: Running, target: str, server_name: str | None, context: ssl.SSLContext
) -> bytes:
    """The whole reply to GET /page over TLS inside a CONNECT tunnel, sending `server_name`
    as SNI (none for None); a failed handshake raises."""
    with proxy.proxy.grant("alpha", ["localhost"]) as token:
        reader, writer = await connect(proxy.port, target, token)
        try:
            await writer.start_tls(context, server_hostname=server_name)
            writer.write(
                f"GET /page HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode()
            )
            return await reader.read()
        finally:
            writer.close()


def basic(user: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()


# --- allowed -------------------------------------------------------------------------


async def test_plain_http_through_the_environment_as_a_unit_gets_it(
    proxy: Running, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "nanoclaw.egress")
    with proxy.proxy.grant("alpha", ["localhost"]) as token:
        code, body = await curl(upstream.url, env={"http_proxy": proxy.url("alpha", token)})
    assert (code, body) == ("200", "hello from upstream")
    seen = upstream.seen[-1]
    assert seen["path"] == "/page?q=1"
    assert seen["Host"] == f"localhost:{upstream.port}"
    assert seen["Connection"] == "close"
    assert "Proxy-Authorization" not in seen, "the proxy's credentials never go upstream"
    assert f"allow GET localhost:{upstream.port} for group alpha via the relay (pid " in (
        caplog.text
    )
    assert token not in caplog.text


async def test_connect_tunnels_tls_both_ways(
    proxy: Running,
    upstream: Upstream,
    certificate: Certificate,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "nanoclaw.egress")
    with proxy.proxy.grant("alpha", ["localhost"]) as token:
        code, body = await curl(
            "--cacert",
            str(certificate.certificate),
            "-x",
            proxy.url("alpha", token),
            upstream.tls_url,
        )
    assert (code, body) == ("200", "hello from upstream")
    assert upstream.server_names == ["localhost"], "the client's own hello went upstream"
    assert f"allow CONNECT localhost:{upstream.tls_port} for group alpha" in caplog.text


async def test_plain_http_inside_a_connect_tunnel_is_refused(
    proxy: Running, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "nanoclaw.egress")
    with proxy.proxy.grant("alpha", ["localhost"]) as token:
        code, body = await curl("--proxytunnel", "-x", proxy.url("alpha", token), upstream.url)
    assert code == "000" and "Empty reply" in body, "the proxy closes the tunnel"
    assert upstream.seen == []
    assert (
        f"deny CONNECT localhost:{upstream.port} for group alpha via the relay (pid " in caplog.text
    )
    assert "does not start with a TLS ClientHello" in caplog.text
    assert "is not a TLS handshake (content type 71)" in caplog.text  # "G" of GET


async def test_a_wildcard_allows_names_below_it(proxy: Running, upstream: Upstream) -> None:
    with proxy.proxy.grant("alpha", ["*.localhost"]) as token:
        head = f"CONNECT sub.localhost:{upstream.port} HTTP/1.1\r\n"
        head += f"Proxy-Authorization: {basic('alpha', token)}\r\n\r\n"
        reply = await raw(proxy.port, head.encode())
    # Allowed by name; whether sub.localhost resolves is the resolver's business.
    assert not reply.startswith((b"HTTP/1.1 403", b"HTTP/1.1 407")), reply


# --- credentials ---------------------------------------------------------------------


async def test_no_credentials_get_407(proxy: Running, upstream: Upstream) -> None:
    with proxy.proxy.grant("alpha", ["localhost"]):
        code, body = await curl("-x", f"http://127.0.0.1:{proxy.port}", upstream.url)
    assert code == "407" and "credentials missing" in body
    assert upstream.seen == []


async def test_a_wrong_or_revoked_token_gets_407(proxy: Running, upstream: Upstream) -> None:
    with proxy.proxy.grant("alpha", ["localhost"]) as token:
        code, _ = await curl("-x", proxy.url("alpha", token[:-1] + "x"), upstream.url)
        assert code == "407"
    code, _ = await curl("-x", proxy.url("alpha", token), upstream.url)
    assert code == "407", "a token dies with its tool call"
    assert upstream.seen == []


async def test_a_token_is_bound_to_its_group(proxy: Running, upstream: Upstream) -> None:
    with proxy.proxy.grant("alpha", ["localhost"]) as token:
        code, _ = await curl("-x", proxy.url("beta", token), upstream.url)
    assert code == "407"
    assert upstream.seen == []


# --- what a grant does not cover ------------------------------------------------------


async def test_another_groups_domains_are_refused(
    proxy: Running, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "nanoclaw.egress")
    with (
        proxy.proxy.grant("alpha", ["localhost"]),
        proxy.proxy.grant("beta", ["example.org"]) as beta,
    ):
        code, body = await curl("-x", proxy.url("beta", beta), upstream.url)
    assert code == "403" and "not among group beta's egress domains" in body
    assert f"deny GET localhost:{upstream.port} for group beta" in caplog.text
    assert upstream.seen == []


@pytest.mark.parametrize(
    "target",
    [
        "127.0.0.1:{port}",  # IP literals are never domains
        "[::1]:{port}",
        "localhost.evil.test:{port}",
        "evil-localhost:{port}",
        "LOCALHOST:{port}",  # allowed: names compare case-insensitively
    ],
)
async def test_connect_targets_are_checked_by_name(
    proxy: Running, upstream: Upstream, target: str
) -> None:
    with proxy.proxy.grant("alpha", ["localhost"]) as token:
        head = f"CONNECT {target.format(port=upstream.port)} HTTP/1.1\r\n"
        head += f"Proxy-Authorization: {basic('alpha', token)}\r\n\r\n"
        reply = await raw(proxy.port, head.encode())
    expected = b"HTTP/1.1 200" if target.startswith("LOCALHOST") else b"HTTP/1.1 403"
    assert reply.startswith(expected), reply


async def test_ports_outside_the_allowed_set_are_refused(
    upstream: Upstream, socket_path: str
) -> None:
    made = await running(socket_path, allow_private=True)  # the default ports, 80 and 443
    try:
        with made.proxy.grant("alpha", ["localhost"]) as token:
            code, body = await curl("-x", made.url("alpha", token), upstream.url)
    finally:
        await made.close()
    assert code == "403" and f"port {upstream.port} is not allowed" in body
    assert upstream.seen == []


async def test_by_default_a_name_resolving_to_loopback_reaches_nothing(
    upstream: Upstream, socket_path: str
) -> None:
    made = await running(socket_path, ports={upstream.port})
    try:
        with made.proxy.grant("alpha", ["localhost"]) as token:
            code, body = await curl("-x", made.url("alpha", token), upstream.url)
    finally:
        await made.close()
    assert code == "403" and "resolves only to non-public addresses" in body
    assert upstream.seen == []


async def test_a_host_header_cannot_ask_for_another_site(
    proxy: Running, upstream: Upstream
) -> None:
    with proxy.proxy.grant("alpha", ["localhost"]) as token:
        code, _ = await curl(
            "-H", "Host: other.example", "-x", proxy.url("alpha", token), upstream.url
        )
    assert code == "200"
    assert upstream.seen[-1]["Host"] == f"localhost:{upstream.port}"


# --- malformed requests ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "status", "reason"),
    [
        (b"GARBAGE\r\n\r\n", b"400", b"malformed request line"),
        (b"GET /relative HTTP/1.1\r\n\r\n", b"400", b"absolute http:// URL"),
        (b"GET https://localhost/ HTTP/1.1\r\n\r\n", b"400", b"absolute http:// URL"),
        (b"CONNECT localhost HTTP/1.1\r\n\r\n", b"400", b"host:port"),
        (b"GET http://localhost/ HTTP/1.1\r\nno colon\r\n\r\n", b"400", b"header"),
        ("GET http://l\u00f6calhost/ HTTP/1.1\r\n\r\n".encode(), b"400", b"ASCII"),
        (b"GET http://localhost:99999/ HTTP/1.1\r\n\r\n", b"400", b"bad port"),
        (b"GET http://localhost/ HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES, b"431", b"larger"),
        (b"CONNECT localhost:80 HTTP/1.1\r\nProxy-Authorization: Basic !!\r\n\r\n", b"407", b""),
    ],
)
async def test_malformed_requests_get_a_clear_status(
    proxy: Running, head: bytes, status: bytes, reason: bytes
) -> None:
    reply = await raw(proxy.port, head)
    assert reply.startswith(b"HTTP/1.1 " + status), reply
    assert reason in reply


async def test_a_head_cut_short_by_the_clients_half_close_gets_400(
    proxy: Running, socket_path: str
) -> None:
    # On the Unix socket itself: through the relay a half-close ends both directions, as
    # systemd-socket-proxyd does, so there such a head only meets HEAD_TIMEOUT_SECONDS.
    reader, writer = await asyncio.open_unix_connection(socket_path)
    writer.write(b"GET http://localhost/ HTTP/1.1\r\n")
    writer.write_eof()
    reply = await reader.read()
    writer.close()
    assert reply.startswith(b"HTTP/1.1 400") and b"incomplete request head" in reply, reply


# --- the Unix socket ------------------------------------------------------------------


async def test_the_socket_is_open_to_every_relay_and_removed_on_close(
    socket_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "nanoclaw.egress")
    proxy = EgressProxy()
    await proxy.start(socket_path)
    found = os.lstat(socket_path)
    assert stat.S_ISSOCK(found.st_mode)
    assert stat.S_IMODE(found.st_mode) == 0o666, "relays run under dynamic uids"
    assert f"egress proxy listening on {socket_path}" in caplog.text
    await proxy.close()
    assert not os.path.lexists(socket_path)


async def test_a_stale_socket_is_replaced_but_a_live_one_is_not(socket_path: str) -> None:
    with socket.socket(socket.AF_UNIX) as left_behind:  # an earlier run's, nobody listening
        left_behind.bind(socket_path)
    first = EgressProxy()
    await first.start(socket_path)
    second = EgressProxy()
    with pytest.raises(OSError, match="is in use: another process listens on it"):
        await second.start(socket_path)
    await second.close()
    assert os.path.lexists(socket_path), "the refused proxy leaves the live socket alone"
    _, writer = await asyncio.open_unix_connection(socket_path)
    writer.close()
    await first.close()


@pytest.mark.parametrize("found", ["a symlink to a file", "a symlink to a socket", "a file"])
async def test_anything_but_a_socket_at_the_path_is_refused_and_left_alone(
    socket_path: str, tmp_path: Path, found: str
) -> None:
    target = tmp_path / "target"
    if found == "a symlink to a socket":
        with socket.socket(socket.AF_UNIX) as elsewhere:
            elsewhere.bind(str(target))
    else:
        target.write_text("keep")
    if found == "a file":
        os.rename(target, socket_path)
    else:
        os.symlink(target, socket_path)
    before = os.lstat(socket_path)
    with pytest.raises(FileExistsError, match="exists and is not a socket"):
        await EgressProxy().start(socket_path)
    assert os.lstat(socket_path) == before
    if found != "a file":
        assert os.path.lexists(target), "a symlink is never followed"


# --- TLS inside a tunnel: the server name must be the CONNECT name ---------------------


class _Awaited(logging.Handler):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


@contextlib.asynccontextmanager
async def logged(text: str) -> AsyncIterator[None]:
    """Wait, after the block, for the proxy to log `text`: a client can see its connection
    end before the proxy has logged why."""
    handler = _Awaited(text)
    logger = logging.getLogger("nanoclaw.egress")
    logger.addHandler(handler)
    try:
        yield
        await asyncio.wait_for(handler.seen.wait(), 5)
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize("server_name", ["localhost", "LocalHost", "localhost."])
async def test_a_tunnel_whose_sni_is_the_connect_name_gets_through(
    proxy: Running, upstream: Upstream, certificate: Certificate, server_name: str
) -> None:
    target = f"localhost:{upstream.tls_port}"
    reply = await https_get(proxy, target, server_name, certificate.client_context())
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"hello from upstream"), reply
    assert upstream.server_names == [server_name]


async def test_a_tunnel_whose_sni_names_another_site_is_closed(
    proxy: Running,
    upstream: Upstream,
    certificate: Certificate,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "nanoclaw.egress")
    context = certificate.client_context()
    target = f"localhost:{upstream.tls_port}"
    with pytest.raises((ConnectionError, ssl.SSLError)):
        await https_get(proxy, target, "other.test", context)
    assert upstream.server_names == [], "the hello never reached the upstream"
    assert upstream.seen == []
    assert (
        f"deny CONNECT {target} for group alpha via the relay (pid " in caplog.text
        and "the TLS server name (SNI) other.test is not the CONNECT name localhost" in caplog.text
    )
    # The upstream itself would have served that name: only the proxy stood in the way.
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", upstream.tls_port, ssl=context, server_hostname="other.test"
    )
    writer.write(b"GET /page HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_a_tunnel_whose_hello_names_no_server_is_closed(
    proxy: Running,
    upstream: Upstream,
    certificate: Certificate,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "nanoclaw.egress")
    target = f"localhost:{upstream.tls_port}"
    with pytest.raises((ConnectionError, ssl.SSLError)):
        await https_get(proxy, target, None, certificate.client_context())
    assert upstream.server_names == []
    assert f"deny CONNECT {target} for group alpha" in caplog.text
    assert "the TLS ClientHello names no server (SNI); CONNECT named localhost" in caplog.text


async def test_a_hello_arriving_in_pieces_is_gathered_and_passed_on_whole(
    proxy: Running, upstream: Upstream
) -> None:
    hello = records(handshake_message(client_hello("localhost")), 100)
    with proxy.proxy.grant("alpha", ["localhost"]) as token:
        reader, writer = await connect(proxy.port, f"localhost:{upstream.tls_port}", token)
        for piece in (hello[:3], hello[3:250], hello[250:]):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)
        answer = await reader.readexactly(5)
        writer.close()
    assert answer[:2] == b"\x16\x03", "the upstream answers with a TLS handshake record"
    assert upstream.server_names == ["localhost"]


async def test_a_hello_cut_short_by_the_client_is_refused(
    proxy: Running, upstream: Upstream
) -> None:
    with proxy.proxy.grant("alpha", ["localhost"]) as token:
        async with logged("the client ended the tunnel after 100 bytes"):
            reader, writer = await connect(proxy.port, f"localhost:{upstream.tls_port}", token)
            writer.write(client_hello("localhost")[:100])
            writer.write_eof()
            assert await reader.read() == b""
            writer.close()
    assert upstream.server_names == []


async def test_a_hello_larger_than_the_limit_is_refused(proxy: Running, upstream: Upstream) -> None:
    endless = b"\x01\xff\xff\xff" + bytes(MAX_HELLO_BYTES)  # declares a 16 MiB ClientHello
    with proxy.proxy.grant("alpha", ["localhost"]) as token:
        async with logged(f"no complete TLS ClientHello in the first {MAX_HELLO_BYTES} bytes"):
            reader, writer = await connect(proxy.port, f"localhost:{upstream.tls_port}", token)
            with contextlib.suppress(ConnectionError):
                writer.write(records(endless))
                await writer.drain()
                assert await reader.read() == b""
            writer.close()
    assert upstream.server_names == []


# --- the ClientHello parser, on hellos from Python's TLS client -------------------------


def client_hello(server_name: str | None) -> bytes:
    """The first bytes Python's TLS client sends for `server_name` (None: no SNI)."""
    context = ssl.create_default_context()
    context.check_hostname = server_name is not None
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def handshake_message(hello: bytes) -> bytes:
    """The handshake message of a hello sent as one record."""
    assert len(hello) == 5 + int.from_bytes(hello[3:5], "big"), "one record"
    return hello[5:]


def records(message: bytes, size: int = 2**14) -> bytes:
    """`message` as TLS handshake records of at most `size` bytes each."""
    chunks = [message[at : at + size] for at in range(0, len(message), size)]
    return b"".join(b"\x16\x03\x01" + len(chunk).to_bytes(2, "big") + chunk for chunk in chunks)


@pytest.mark.parametrize(
    ("server_name", "expected"),
    [
        ("allowed.test", "allowed.test"),
        ("Allowed.Test.", "Allowed.Test."),  # as sent: the proxy compares, not the parser
        (None, None),
        ("127.0.0.1", None),  # TLS clients send no SNI for an address
    ],
)
def test_the_server_name_of_a_real_hello(server_name: str | None, expected: str | None) -> None:
    assert client_hello_sni(client_hello(server_name)) == expected


@pytest.mark.parametrize("size", [1, 7, 100])
def test_a_hello_spread_over_several_records_is_reassembled(size: int) -> None:
    hello = records(handshake_message(client_hello("allowed.test")), size)
    assert client_hello_sni(hello) == "allowed.test"
    application_data = b"\x17\x03\x03\x00\x02hi"
    assert client_hello_sni(hello + application_data) == "allowed.test", "what follows is not read"


@pytest.mark.parametrize("size", [None, 7])
def test_every_cut_of_a_hello_is_incomplete(size: int | None) -> None:
    hello = client_hello("allowed.test")
    if size is not None:
        hello = records(handshake_message(hello), size)
    assert client_hello_sni(hello) == "allowed.test"
    for end in range(len(hello)):
        with pytest.raises(IncompleteClientHello):
            client_hello_sni(hello[:end])


@pytest.mark.parametrize(
    ("data", "fault"),
    [
        (b"G", "record at byte 0 is not a TLS handshake (content type 71)"),
        (b"GET / HTTP/1.1\r\n", "not a TLS handshake (content type 71)"),
        (b"\x80\x2e\x01\x03\x01", "not a TLS handshake (content type 128)"),  # SSLv2 hello
        (b"\x16\x02\x00\x00\x05", "record version 2.0 is not TLS"),
        (b"\x16\x03\x01\x00\x00", "TLS record length 0 is out of range"),
        (b"\x16\x03\x01\x40\x01", "TLS record length 16385 is out of range"),
        (b"\x16\x03\x03\x00\x01\x02", "handshake message type 2 is not ClientHello"),
        (b"\x16\x03\x01\x00\x02\x01\x00\x15\x03\x03", "record at byte 7 is not a TLS handshake"),
    ],
)
def test_bytes_that_cannot_start_a_hello_are_refused_at_once(data: bytes, fault: str) -> None:
    with pytest.raises(ClientHelloError, match=re.escape(fault)) as raised:
        client_hello_sni(data)
    assert not isinstance(raised.value, IncompleteClientHello), "no waiting for more"


def hello_message(extensions: bytes | None, after: bytes = b"") -> bytes:
    """A minimal ClientHello message: TLS 1.2 fields, one cipher suite, no compression."""
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    if extensions is not None:
        body += len(extensions).to_bytes(2, "big") + extensions
    return b"\x01" + len(body + after).to_bytes(3, "big") + body + after


def server_name(*entries: tuple[int, bytes], after: bytes = b"") -> bytes:
    listed = b"".join(bytes([kind]) + len(name).to_bytes(2, "big") + name for kind, name in entries)
    data = len(listed).to_bytes(2, "big") + listed + after
    return b"\x00\x00" + len(data).to_bytes(2, "big") + data


def test_a_hello_without_extensions_names_no_server() -> None:
    assert client_hello_sni(records(hello_message(None))) is None
    assert client_hello_sni(records(hello_message(server_name((0, b"a.test"))))) == "a.test"


@pytest.mark.parametrize(
    ("message", "fault"),
    [
        (b"\x01\x00\x00\x0c\x03\x03" + bytes(10), "the ClientHello ends inside its version"),
        (
            hello_message(server_name((0, b"a.test")) + server_name((0, b"b.test"))),
            "extension 0 appears twice",
        ),
        (
            hello_message(server_name((0, b"a.test"), (0, b"b.test"))),
            "the server name list has 9 bytes too many",
        ),
        (hello_message(server_name((1, b"a.test"))), "server name type 1 is not host_name"),
        (hello_message(server_name((0, b""))), "empty host name"),
        (hello_message(server_name((0, "ä.test".encode()))), "the server name is not ASCII"),
        (
            hello_message(server_name((0, b"a.test"), after=b"\x00")),
            "the server_name extension has 1 bytes too many",
        ),
        (
            hello_message(server_name((0, b"a.test")), after=b"\x00"),
            "the ClientHello has 1 bytes too many",
        ),
        (hello_message(b"\x00\x00\x00\x09ab"), "the extension list ends inside its extension 0"),
    ],
)
def test_a_malformed_hello_is_refused_by_its_fault(message: bytes, fault: str) -> None:
    with pytest.raises(ClientHelloError, match=re.escape(fault)) as raised:
        client_hello_sni(records(message))
    assert not isinstance(raised.value, IncompleteClientHello)


# --- attribution to the call ---------------------------------------------------------


async def test_each_verdict_is_kept_with_the_grant_of_the_call_that_made_it(
    proxy: Running, upstream: Upstream
) -> None:
    """The audit trail's rule: a verdict belongs to the call whose secret the request
    named; one without a live secret belongs to none."""
    mine: list[Decision] = []
    other: list[Decision] = []
    with (
        proxy.proxy.grant("alpha", ["localhost"], mine) as token,
        proxy.proxy.grant("alpha", ["localhost"], other),
    ):
        env = {"http_proxy": proxy.url("alpha", token)}
        assert (await curl(upstream.url, env=env))[0] == "200"
        assert (await curl("http://example.org/", env=env))[0] == "403"
        await curl(upstream.url, env={"http_proxy": proxy.url("alpha", "f" * 43)})
    outside = "example.org is not among group alpha's egress domains"
    assert mine == [
        Decision(True, "GET", "localhost", upstream.port),
        Decision(False, "GET", "example.org", 80, outside),
    ]
    assert other == [], "a call's verdicts never go to another call of the same group"
    assert mine[1].to_json() == {
        "allow": False,
        "method": "GET",
        "host": "example.org",
        "port": 80,
        "reason": outside,
    }
