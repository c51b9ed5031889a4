"""What surrounds the egress proxy in production, on loopback: the relay of a group's
network namespace, and a TLS site with a certificate of its own."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class SocketProxy:
    """A stand-in for systemd-socket-proxyd: accepts TCP on 127.0.0.1 and carries bytes to
    and from a Unix socket, parsing nothing. Like socket-proxyd it passes no half-close:
    once either side ends and what it sent is delivered, both connections close."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError:
            writer.close()
            self._connections.discard(task)
            return
        pumps = [
            asyncio.create_task(_pump(reader, up_writer)),
            asyncio.create_task(_pump(up_reader, writer)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            up_writer.close()
            writer.close()
            self._connections.discard(task)


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while chunk := await source.read(64 * 1024):
            sink.write(chunk)
            await sink.drain()


@contextlib.asynccontextmanager
async def serve_site(
    app: web.Application,
    ports: tuple[int, int],
    certificate: tuple[Path, Path],
    plain_host: str = "127.0.0.1",
    on_server_name: Callable[[str | None], None] | None = None,
) -> AsyncIterator[None]:
    """`app` as one site on two ports: plain HTTP on `plain_host`, and HTTPS on 127.0.0.1
    with `certificate` (its file and key), telling `on_server_name` each SNI it gets."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(*certificate)
    if on_server_name is not None:
        tls.sni_callback = lambda _, name, __: on_server_name(name)  # type: ignore[assignment]
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, plain_host, ports[0]).start()
        await web.TCPSite(runner, "127.0.0.1", ports[1], ssl_context=tls).start()
        yield
    finally:
        await runner.cleanup()


def self_signed_certificate(name: str, directory: Path) -> tuple[Path, Path]:
    """(certificate, key) as PEM files: a certificate for the DNS name `name`, its own
    issuer, so a client that trusts the file trusts the site."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_path = directory / f"{name}.crt"
    key_path = directory / f"{name}.key"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certificate_path, key_path
