"""The egress proxy: the only way a tool unit reaches a domain name.

The proxy listens on a Unix socket. A group with `egress.domains` runs its tool units in
a private network namespace whose only way out is a relay on the namespace's own
127.0.0.1:3128 (systemd-socket-proxyd, which parses nothing) that carries bytes to that
socket; the units find the relay through HTTP(S)_PROXY. That URL carries a secret the
host issues for one tool call and revokes when the call ends, so a request passes only
when it names a live secret, the group that secret was issued to, one of that group's
domains (exact or `*.suffix`, see `domain_allowed`) and an allowed port, and the name
resolves to public addresses only (a domain pointed at 127.0.0.1 reaches nothing). Every
decision is logged, and each one made under a live secret is also kept with that secret's
grant: the secret belongs to exactly one tool call, so the audit trail attributes the
decision to that call (a request without a live secret belongs to no call: logged only).

HTTPS is a CONNECT tunnel. After its 200 the proxy reads the TLS ClientHello the client
sends first, and closes the tunnel unless the hello's server name (SNI) is the CONNECT
name: an allowed name's addresses (a CDN's, say) cannot be asked for another site by
naming that site in SNI. The client sees a failed handshake; the reason is in the log.

What the check does not stop: the proxy sees that one name in the clear and nothing
after it. A client can send the allowed name in SNI and another site's name in the HTTP
Host header inside the encrypted connection, and a front that routes by Host serves the
other site. With Encrypted Client Hello the name checked is the outer, public one, and
the inner name the front routes by stays hidden. Plain HTTP is forwarded in origin form,
one request per connection, with Host: set to the checked name.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import secrets
import socket
import struct
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from nanoclaw.broker.policy import domain_allowed
from nanoclaw.host.relay_socket import RelaySocket

log = logging.getLogger("nanoclaw.egress")

DEFAULT_PORTS = frozenset({80, 443})
MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 10.0
CHUNK_BYTES = 64 * 1024
MAX_HELLO_BYTES = 64 * 1024
HELLO_TIMEOUT_SECONDS = 10.0
# Hop-by-hop headers, and the credentials meant for this proxy, are not forwarded.
_DROPPED_HEADERS = frozenset(
    {"host", "proxy-authorization", "proxy-connection", "connection", "keep-alive"}
)


@dataclass(frozen=True)
class Decision:
    """One verdict of the proxy on a request made under a call's secret."""

    allowed: bool
    method: str
    host: str
    port: int
    reason: str = ""  # why it was denied

    def to_json(self) -> dict[str, object]:
        verdict = {"allow": self.allowed, "method": self.method, "host": self.host}
        return {**verdict, "port": self.port} | ({"reason": self.reason} if self.reason else {})


@dataclass(frozen=True)
class Grant:
    group: str
    domains: tuple[str, ...]
    decisions: list[Decision] = field(default_factory=list, compare=False)


@dataclass(frozen=True)
class Request:
    method: str
    host: str
    port: int
    head: bytes  # what goes upstream for plain HTTP; empty for CONNECT
    authorization: str | None


class Denied(Exception):
    """A refusal before any tunnel is open: the client gets `status` and the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class TunnelRefused(Exception):
    """A refusal inside an open CONNECT tunnel, where closing is the only answer left."""


class ClientHelloError(ValueError):
    """The bytes are not a well-formed TLS ClientHello."""


class IncompleteClientHello(ClientHelloError):
    """The bytes are the start of a TLS ClientHello, and it goes on past them."""


class EgressProxy:
    """A filtering HTTP(S) proxy in the host process, one listener for every group."""

    def __init__(self, ports: Iterable[int] = DEFAULT_PORTS, allow_private: bool = False):
        # allow_private exists for tests whose upstream can only be on loopback.
        self.ports = frozenset(ports)
        self.allow_private = allow_private
        self._grants: dict[str, Grant] = {}
        self._server: asyncio.Server | None = None
        self._socket: RelaySocket | None = None

    @contextmanager
    def grant(
        self, group: str, domains: Sequence[str], decisions: list[Decision] | None = None
    ) -> Iterator[str]:
        """A fresh secret for one tool call of `group`, valid until the block ends; the
        verdicts on requests made with it are appended to `decisions`."""
        token = secrets.token_urlsafe(32)
        self._grants[token] = Grant(group, tuple(domains), [] if decisions is None else decisions)
        try:
            yield token
        finally:
            del self._grants[token]

    async def start(self, socket_path: str) -> None:
        """Listen on a Unix socket at `socket_path` (nanoclaw.host.relay_socket). Raises
        OSError when something else is there, or another process listens on it."""
        self._socket = RelaySocket(socket_path)
        listener = await self._socket.bind()
        try:
            self._server = await asyncio.start_unix_server(
                self._handle, sock=listener, limit=MAX_HEAD_BYTES
            )
        except BaseException:
            listener.close()
            raise
        log.info("egress proxy listening on %s", socket_path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._socket is not None:
            self._socket.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request: Request | None = None
        grant: Grant | None = None
        try:
            request = parse_head(await _read_head(reader))
            grant = self._authenticate(request)
            self._check_target(request, grant)
            addresses = await self._resolve(request)
            up_reader, up_writer = await _connect(addresses, request.port)
        except Denied as denied:
            _decided(request, grant, writer, str(denied))
            await _refuse(writer, denied)
            return
        if request.method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            try:
                up_writer.write(await _read_hello_naming(reader, request.host))
            except TunnelRefused as refused:
                _decided(request, grant, writer, str(refused))
                up_writer.close()
                writer.close()
                return
        else:
            up_writer.write(request.head)
        _decided(request, grant, writer)
        await _splice(reader, writer, up_reader, up_writer)

    def _authenticate(self, request: Request) -> Grant:
        grant, user = self._grant_of(request.authorization)
        if grant is None or user != grant.group:
            raise Denied(407, "proxy credentials missing, unknown or expired")
        return grant

    def _check_target(self, request: Request, grant: Grant) -> None:
        if not domain_allowed(request.host, grant.domains):
            raise Denied(403, f"{request.host} is not among group {grant.group}'s egress domains")
        if request.port not in self.ports:
            raise Denied(403, f"port {request.port} is not allowed (only {sorted(self.ports)})")

    def _grant_of(self, authorization: str | None) -> tuple[Grant | None, str]:
        scheme, _, encoded = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return None, ""
        try:
            user, _, token = (
                base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return None, ""
        return self._grants.get(token), user

    async def _resolve(self, request: Request) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(request.host, request.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise Denied(502, f"cannot resolve {request.host}: {exc}") from None
        found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        usable = [a for a in found if self.allow_private or ipaddress.ip_address(a).is_global]
        if not usable:
            raise Denied(403, f"{request.host} resolves only to non-public addresses {found}")
        return usable


def _decided(
    request: Request | None, grant: Grant | None, writer: asyncio.StreamWriter, denied: str = ""
) -> None:
    """Log a verdict, and keep it with the grant of the call it was made for."""
    what = _what(request, grant.group if grant is not None else "?", writer)
    if denied:
        log.warning("deny %s: %s", what, denied)
    else:
        log.info("allow %s", what)
    if grant is not None and request is not None:
        verdict = Decision(not denied, request.method, request.host, request.port, denied)
        grant.decisions.append(verdict)


def _what(request: Request | None, group: str, writer: asyncio.StreamWriter) -> str:
    peer = _peer(writer)
    if request is None:
        return f"request {peer}"
    return f"{request.method} {request.host}:{request.port} for group {group} {peer}"


_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _peer(writer: asyncio.StreamWriter) -> str:
    """Who connected: a Unix socket peer has no address, but the kernel names its process
    (the relay of one group's namespace) and uid."""
    connection = writer.get_extra_info("socket")
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, _ = _UCRED.unpack(credentials)
    return f"via the relay (pid {pid}, uid {uid})"


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_SECONDS)
    except asyncio.LimitOverrunError:
        raise Denied(431, f"request head larger than {MAX_HEAD_BYTES} bytes") from None
    except (asyncio.IncompleteReadError, TimeoutError):
        raise Denied(400, "incomplete request head") from None


def parse_head(head: bytes) -> Request:
    """The target and credentials of a proxy request: CONNECT host:port, or an absolute
    http:// URL. Anything else is a 400 that says what was wrong."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise Denied(400, "request head is not ASCII") from None
    request_line, *header_lines = text.split("\r\n")[:-2]
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise Denied(400, "malformed request line")
    method, target, version = parts
    headers: list[tuple[str, str]] = []
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise Denied(400, "malformed header line")
        headers.append((name, value.strip()))
    authorization = next((v for n, v in headers if n.lower() == "proxy-authorization"), None)
    if method == "CONNECT":
        host, colon, digits = target.rpartition(":")
        if not colon or not digits.isdigit():
            raise Denied(400, "CONNECT needs host:port")
        return Request(method, host, int(digits), b"", authorization)
    url = urlsplit(target)
    if url.scheme != "http" or not url.hostname:
        raise Denied(400, "only CONNECT or an absolute http:// URL can be proxied")
    try:
        port = url.port or 80
    except ValueError:
        raise Denied(400, "bad port in URL") from None
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    # Host: names the checked host, so no other site on the same address can be asked for.
    host = url.hostname if port == 80 else f"{url.hostname}:{port}"
    kept = [f"{n}: {v}" for n, v in headers if n.lower() not in _DROPPED_HEADERS]
    lines = [f"{method} {path} {version}", f"Host: {host}", *kept, "Connection: close", "", ""]
    upstream = "\r\n".join(lines)
    return Request(method, url.hostname, port, upstream.encode("ascii"), authorization)


async def _read_hello_naming(reader: asyncio.StreamReader, host: str) -> bytes:
    """The bytes a tunnel's client sends first, once they hold a complete TLS ClientHello
    whose server name is `host`; anything else raises TunnelRefused with the reason."""
    data = b""
    try:
        async with asyncio.timeout(HELLO_TIMEOUT_SECONDS):
            while True:
                chunk = await reader.read(MAX_HELLO_BYTES - len(data))
                if not chunk:
                    raise TunnelRefused(
                        f"the client ended the tunnel after {len(data)} bytes,"
                        " before a complete TLS ClientHello"
                    )
                data += chunk
                try:
                    sni = client_hello_sni(data)
                    break
                except IncompleteClientHello:
                    if len(data) >= MAX_HELLO_BYTES:
                        raise TunnelRefused(
                            f"no complete TLS ClientHello in the first {MAX_HELLO_BYTES} bytes"
                        ) from None
    except TimeoutError:
        raise TunnelRefused(
            f"no complete TLS ClientHello within {HELLO_TIMEOUT_SECONDS:g} seconds"
        ) from None
    except ConnectionError as exc:
        raise TunnelRefused(f"the client's connection failed: {exc}") from None
    except ClientHelloError as exc:
        raise TunnelRefused(f"the tunnel does not start with a TLS ClientHello: {exc}") from None
    if sni is None:
        raise TunnelRefused(f"the TLS ClientHello names no server (SNI); CONNECT named {host}")
    if _dns_name(sni) != _dns_name(host):
        raise TunnelRefused(f"the TLS server name (SNI) {sni} is not the CONNECT name {host}")
    return data


def _dns_name(name: str) -> str:
    return name.lower().removesuffix(".")


_TLS_HANDSHAKE = 22  # TLS record content type
_TLS_CLIENT_HELLO = 1  # handshake message type
_TLS_MAX_FRAGMENT = 2**14  # RFC 8446 5.1
_SERVER_NAME = 0  # extension type, RFC 6066 3
_HOST_NAME = 0  # server name type


def client_hello_sni(data: bytes) -> str | None:
    """The host_name of the server_name extension in the TLS ClientHello that `data`
    starts with (the first bytes of a TLS client, in one or more handshake records), or
    None when the hello names no server.

    Raises IncompleteClientHello while `data` ends before the hello does, and
    ClientHelloError, naming the fault, when the bytes cannot be a ClientHello (checked
    as early as the bytes allow, so plain text is refused from its first byte)."""
    hello = _Fields(_client_hello_message(data), "ClientHello")
    hello.take(2 + 32, "version and random")
    hello.vector(1, "session id")
    hello.vector(2, "cipher suites")
    hello.vector(1, "compression methods")
    if hello.done():
        return None  # no extensions at all
    extensions = _Fields(hello.vector(2, "extension list"), "extension list")
    hello.end()
    seen: set[int] = set()
    name = None
    while not extensions.done():
        kind = int.from_bytes(extensions.take(2, "extension type"), "big")
        body = extensions.vector(2, f"extension {kind}")
        if kind in seen:  # forbidden by RFC 8446 4.2; a server might read either copy
            raise ClientHelloError(f"extension {kind} appears twice")
        seen.add(kind)
        if kind == _SERVER_NAME:
            name = _host_name(body)
    return name


def _client_hello_message(data: bytes) -> bytes:
    """The ClientHello handshake message's body, reassembled from the records at the
    start of `data`."""
    handshake = b""
    offset = 0
    while True:
        if handshake and handshake[0] != _TLS_CLIENT_HELLO:
            raise ClientHelloError(f"handshake message type {handshake[0]} is not ClientHello")
        if len(handshake) >= 4:
            end = 4 + int.from_bytes(handshake[1:4], "big")
            if len(handshake) >= end:
                return handshake[4:end]
        header = data[offset : offset + 5]
        if not header:
            raise IncompleteClientHello(f"the ClientHello goes on after {len(data)} bytes")
        if header[0] != _TLS_HANDSHAKE:
            raise ClientHelloError(
                f"record at byte {offset} is not a TLS handshake (content type {header[0]})"
            )
        if len(header) < 5:
            raise IncompleteClientHello("the data ends inside a TLS record header")
        if header[1] != 3:
            raise ClientHelloError(f"record version {header[1]}.{header[2]} is not TLS")
        length = int.from_bytes(header[3:5], "big")
        if not 0 < length <= _TLS_MAX_FRAGMENT:
            raise ClientHelloError(f"TLS record length {length} is out of range")
        handshake += data[offset + 5 : offset + 5 + length]
        offset += 5 + length


def _host_name(extension: bytes) -> str:
    names = _Fields(extension, "server_name extension")
    entries = _Fields(names.vector(2, "server name list"), "server name list")
    names.end()
    kind = entries.take(1, "name type")[0]
    if kind != _HOST_NAME:
        raise ClientHelloError(f"server name type {kind} is not host_name")
    name = entries.vector(2, "host name")
    entries.end()  # exactly one name, as OpenSSL's server also requires
    if not name:
        raise ClientHelloError("the server_name extension has an empty host name")
    try:
        return name.decode("ascii")
    except UnicodeDecodeError:
        raise ClientHelloError("the server name is not ASCII") from None


class _Fields:
    """A cursor over a complete TLS structure: running out is malformed, not incomplete."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.what = what
        self.offset = 0

    def take(self, size: int, field: str) -> bytes:
        if self.offset + size > len(self.data):
            raise ClientHelloError(f"the {self.what} ends inside its {field}")
        self.offset += size
        return self.data[self.offset - size : self.offset]

    def vector(self, length_bytes: int, field: str) -> bytes:
        """A field prefixed by its length, as TLS writes `opaque x<..2^(8*n)-1>`."""
        return self.take(int.from_bytes(self.take(length_bytes, field), "big"), field)

    def done(self) -> bool:
        return self.offset == len(self.data)

    def end(self) -> None:
        if not self.done():
            raise ClientHelloError(
                f"the {self.what} has {len(self.data) - self.offset} bytes too many"
            )


async def _connect(
    addresses: Sequence[str], port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    errors = []
    for address in addresses:  # connect by address: no second lookup can be rebound
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(address, port), CONNECT_TIMEOUT_SECONDS
            )
        except (OSError, TimeoutError) as exc:
            errors.append(f"{address}: {exc or 'timed out'}")
    raise Denied(502, "cannot connect: " + "; ".join(errors))


async def _refuse(writer: asyncio.StreamWriter, denied: Denied) -> None:
    body = f"nanoclaw egress proxy: {denied}\n".encode()
    reasons = {
        400: "Bad Request",
        403: "Forbidden",
        407: "Proxy Authentication Required",
        431: "Request Header Fields Too Large",
        502: "Bad Gateway",
    }
    lines = [
        f"HTTP/1.1 {denied.status} {reasons[denied.status]}",
        "Content-Type: text/plain",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if denied.status == 407:
        lines.append('Proxy-Authenticate: Basic realm="nanoclaw"')
    with suppress(ConnectionError):
        writer.write("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
        await writer.drain()
    writer.close()


async def _splice(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Copy both ways until both sides are done; a half-close is passed on."""

    async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with suppress(ConnectionError):
            while chunk := await source.read(CHUNK_BYTES):
                sink.write(chunk)
                await sink.drain()
            if sink.can_write_eof():
                sink.write_eof()

    try:
        await asyncio.gather(pump(client_reader, up_writer), pump(up_reader, client_writer))
    finally:
        up_writer.close()
        client_writer.close()
