"""Egress of a group with domains, through its relay, against a real systemd in nspawn.

The broker runs as the unit of units/; its relays are real socket units with
systemd-socket-proxyd, in the network namespace the group's tool units join. The egress
proxy runs here, outside the machine, on a Unix socket bound into the machine where the
host's would be (/run/nanoclaw-egress), as the host's proxy is outside every unit. The
machine shares this machine's network, so its listeners on 127.0.0.1 and on this machine's
own address are what a unit on the host's network would reach. Each way around the relay
is tried next to a control that shows the same probe reaching its target from the machine
(the host's network), or the relay from the unit.

The upstream is `localhost`, the one name that resolves to loopback without a resolver;
the proxy is built with allow_private=True and the upstream's ports for that (its default
refusal of private addresses is shown in tests/test_egress_proxy.py and below, for
`nanoclaw exec`'s own proxy).
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from nanoclaw.broker.compiler import EGRESS
from nanoclaw.broker.protocol import RunResult
from nanoclaw.host.audit import Audit
from nanoclaw.host.audit_args import SecretFilter
from nanoclaw.host.audit_call import AuditScope
from nanoclaw.host.egress_proxy import EgressProxy
from nanoclaw.host.sandbox.client import describe_policy, run_in_sandbox
from nanoclaw.host.sandbox.gateway import SandboxGateway
from nanoclaw.host.sandbox.mcp import sandbox_mcp_tools
from nanoclaw.host.sandbox.tools import SandboxTools
from nanoclaw.host.store import Store
from tests.support.egress import self_signed_certificate, serve_site
from tests.support.machine import (
    BROKER_OVERRIDE,
    INSTALL_BROKER,
    REPO,
    SOURCE,
    Machine,
    require_machine,
    rootfs,
    tool_users,
)
from tests.support.net import free_port

POLICY = {
    "version": 1,
    "data_dir": "/var/lib/nanoclaw",
    "groups": {
        "alpha": {"uid": 61001, "main": True},
        "web": {"uid": 61004, "egress": {"domains": ["localhost"]}},
    },
}
SETUP = (
    """
set -e
groupadd --system nanoclaw
mkdir -p /etc/nanoclaw /var/lib/nanoclaw
"""
    + tool_users({"alpha": 61001, "web": 61004})
    + """install -m 0644 /tmp/units/policy.json /etc/nanoclaw/policy.json
install -m 0644 /tmp/units/site.crt /var/lib/nanoclaw/groups/web/site.crt
"""
    + INSTALL_BROKER
)
# Run by python3 in a unit: a CONNECT through the relay with the call's secret (from
# https_proxy), then TLS naming argv[2] as the server (SNI): the page, or what failed.
FRONT = r"""
import base64, socket, ssl, sys, urllib.parse
target, server_name = sys.argv[1], sys.argv[2]
proxy = urllib.parse.urlsplit(__import__("os").environ["https_proxy"])
secret = base64.b64encode(f"{proxy.username}:{proxy.password}".encode()).decode()
tunnel = socket.create_connection((proxy.hostname, proxy.port), 5)
tunnel.sendall(f"CONNECT {target} HTTP/1.1\r\nProxy-Authorization: Basic {secret}\r\n\r\n".encode())
print(tunnel.recv(4096).split(b"\r\n")[0].decode())
context = ssl.create_default_context(cafile="/workspace/group/site.crt")
context.check_hostname = False
try:
    tls = context.wrap_socket(tunnel, server_hostname=server_name)
    tls.sendall(f"GET /front HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
    print(tls.recv(4096).split(b"\r\n")[0].decode())
except OSError as e:
    print("failed:", type(e).__name__)
"""
# Run by python3 in a unit (stdin) or in the machine: "connected"/"answered", or the errno.
PROBE = r"""
import errno, socket, sys
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if kind == "tcp":
        socket.create_connection((host, port), 3).close()
        print("connected")
    else:  # udp, as a DNS question: an answer within 3 s
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.sendto(b"question", (host, port))
        s.recv(512)
        print("answered")
except TimeoutError:
    print("timeout")
except OSError as e:
    print(errno.errorcode.get(e.errno or 0, str(e)))
"""


@dataclass(frozen=True)
class Site:
    """The upstream (HTTP and HTTPS on 127.0.0.1), and the egress socket as seen here."""

    port: int
    tls_port: int
    certificate: Path
    key: Path
    egress_socket: str


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    certificate, key = self_signed_certificate("localhost", tmp_path_factory.mktemp("tls"))
    egress = tmp_path_factory.mktemp("egress")
    egress.chmod(0o755)  # as the host's RuntimeDirectory: the relays' dynamic users pass
    return Site(free_port(), free_port(), certificate, key, str(egress / "proxy.sock"))


@pytest.fixture(scope="module")
def machine(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    require_machine()
    units = tmp_path_factory.mktemp("units")
    for name in ("nanoclaw-sandboxd.socket", "nanoclaw-sandboxd.service"):
        (units / name).write_text((REPO / "units" / name).read_text())
    (units / "override.conf").write_text(BROKER_OVERRIDE)
    (units / "policy.json").write_text(json.dumps(POLICY))
    (units / "site.crt").write_bytes(site.certificate.read_bytes())
    binds = [
        (REPO, SOURCE, False),
        (units, "/tmp/units", False),
        (Path(site.egress_socket).parent, "/run/nanoclaw-egress", False),
    ]
    with Machine(rootfs(), "egress", binds=binds) as m:
        m.succeed(SETUP)
        yield m


@pytest.fixture
async def upstream(site: Site) -> AsyncIterator[list[str]]:
    """The site, answering every page with the path it was asked for; the paths it saw."""
    seen: list[str] = []

    async def page(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(text=f"upstream page {request.path}")

    app = web.Application()
    app.router.add_get("/{name}", page)
    files = (site.certificate, site.key)
    # Plain HTTP on every address: the host's own address too, for the probes below.
    async with serve_site(app, (site.port, site.tls_port), files, plain_host="0.0.0.0"):
        yield seen


@pytest.fixture
async def proxy(site: Site, upstream: list[str]) -> AsyncIterator[EgressProxy]:
    """The egress proxy where the host's listens, for the upstream's ports."""
    proxy = EgressProxy(ports={site.port, site.tls_port}, allow_private=True)
    await proxy.start(site.egress_socket)
    yield proxy
    await proxy.close()


def socket_of(machine: Machine) -> str:
    return f"/proc/{machine.pid}/root/run/nanoclaw/sandbox.sock"


async def web_call(
    machine: Machine, proxy: EgressProxy, argv: list[str], stdin: bytes = b""
) -> RunResult:
    """A tool call of group web, with a fresh secret as the host's gateway grants it."""
    summary = await describe_policy(socket_of(machine))
    with proxy.grant("web", summary.groups["web"].domains) as token:
        return await run_in_sandbox(
            socket_of(machine), "web", argv, timeout=15, stdin=stdin, proxy_token=token,
            policy=summary.generation,
        )  # fmt: skip


async def probe_in_unit(machine: Machine, group: str, kind: str, host: str, port: int) -> str:
    argv = ["/usr/bin/python3", "-", kind, host, str(port)]
    result = await run_in_sandbox(socket_of(machine), group, argv, timeout=15, stdin=PROBE.encode())
    return (result.stdout + result.stderr).decode().strip()


def probe_in_machine(machine: Machine, kind: str, host: str, port: int) -> str:
    """The same probe on the host's network: what a unit outside a namespace would reach."""
    return machine.succeed(f"python3 - {kind} {host} {port} <<'EOF'\n{PROBE}\nEOF").strip()


def text(result: RunResult) -> str:
    return (result.stdout + result.stderr).decode()


# --- the way through -------------------------------------------------------------------


async def test_the_fetch_tool_reaches_an_allowed_name_through_the_relay(
    machine: Machine, proxy: EgressProxy, site: Site, upstream: list[str]
) -> None:
    gateway = SandboxGateway(
        socket_of(machine), 15, proxy, await describe_policy(socket_of(machine))
    )
    tools = SandboxTools(lambda argv, stdin: gateway.run("web", argv, stdin))
    shown, error = await tools.fetch(f"http://localhost:{site.port}/plain")
    assert (shown.strip(), error) == ("upstream page /plain", False)
    assert upstream == ["/plain"]


async def test_the_proxys_verdicts_are_in_the_audit_row_of_the_fetch_that_caused_them(
    machine: Machine, proxy: EgressProxy, site: Site, upstream: list[str], tmp_path: Path
) -> None:
    gateway = SandboxGateway(
        socket_of(machine), 15, proxy, await describe_policy(socket_of(machine))
    )
    store = Store(tmp_path / "nanoclaw.db")
    tools = Audit(store, SecretFilter(), 90).wrap(
        sandbox_mcp_tools(gateway, "web"), AuditScope("web")
    )
    fetch = next(t for t in tools if t.name == "fetch")
    await fetch.handler({"url": f"http://localhost:{site.port}/allowed"})
    await fetch.handler({"url": f"http://127.0.0.1:{site.port}/denied"})
    allowed, denied = store.audit_rows("web")
    assert json.loads(allowed.egress or "") == [
        {"allow": True, "method": "GET", "host": "localhost", "port": site.port}
    ]
    assert json.loads(denied.egress or "") == [
        {"allow": False, "method": "GET", "host": "127.0.0.1", "port": site.port,
         "reason": "127.0.0.1 is not among group web's egress domains"}
    ]  # fmt: skip
    assert allowed.unit != denied.unit and upstream == ["/allowed"]


async def test_https_goes_through_connect_with_the_names_sni(
    machine: Machine, proxy: EgressProxy, site: Site, upstream: list[str]
) -> None:
    curl = ["/usr/bin/curl", "-sS", "--cacert", "/workspace/group/site.crt"]
    result = await web_call(machine, proxy, [*curl, f"https://localhost:{site.tls_port}/tls"])
    assert text(result) == "upstream page /tls", text(result)
    assert upstream == ["/tls"]


@pytest.mark.parametrize(
    ("server_name", "answer"),
    [("localhost", "HTTP/1.1 200 OK"), ("elsewhere.test", "failed:")],
)
async def test_a_tunnel_naming_another_server_in_tls_is_cut(
    machine: Machine, proxy: EgressProxy, site: Site, server_name: str, answer: str
) -> None:
    """Domain fronting from inside the namespace: CONNECT to an allowed name, then another
    name in the ClientHello. The proxy cuts it; the same tunnel naming the CONNECT name is
    the control."""
    argv = ["/usr/bin/python3", "-", f"localhost:{site.tls_port}", server_name]
    lines = text(await web_call(machine, proxy, argv, FRONT.encode())).splitlines()
    assert lines[0].startswith("HTTP/1.1 200"), lines  # the tunnel itself is granted
    assert lines[1].startswith(answer), lines


async def test_a_name_outside_the_domains_is_refused_by_the_proxy(
    machine: Machine, proxy: EgressProxy, site: Site, upstream: list[str]
) -> None:
    argv = ["/usr/bin/curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}"]
    refused = await web_call(machine, proxy, [*argv, f"http://127.0.0.1:{site.port}/ip"])
    assert refused.stdout == b"403", text(refused)
    allowed = await web_call(machine, proxy, [*argv, f"http://localhost:{site.port}/name"])
    assert allowed.stdout == b"200", text(allowed)
    assert upstream == ["/name"]


async def test_the_relay_needs_the_calls_own_secret(
    machine: Machine, proxy: EgressProxy, site: Site, upstream: list[str]
) -> None:
    """The relay leads only to the proxy, which admits only a live secret: without one, or
    with a forged one in the proxy variables, nothing gets out."""
    url = f"http://localhost:{site.port}/nosecret"
    bare = ["/usr/bin/curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}"]
    no_secret = await web_call(machine, proxy, [*bare, "-x", f"127.0.0.1:{EGRESS.port}", url])
    assert no_secret.stdout == b"407", text(no_secret)
    forged = f"http://web:{'f' * 43}@127.0.0.1:{EGRESS.port}"
    result = await web_call(machine, proxy, [*bare, "-x", forged, url])
    assert result.stdout == b"407", text(result)
    assert upstream == []


# --- each way around it ----------------------------------------------------------------


async def test_a_listener_on_the_hosts_loopback_is_out_of_reach(
    machine: Machine, proxy: EgressProxy, site: Site, upstream: list[str]
) -> None:
    assert probe_in_machine(machine, "tcp", "127.0.0.1", site.port) == "connected"  # control
    assert await probe_in_unit(machine, "web", "tcp", "127.0.0.1", site.port) == "ECONNREFUSED"
    # The control inside the unit: its own loopback holds the relay, and only that.
    assert await probe_in_unit(machine, "web", "tcp", "127.0.0.1", EGRESS.port) == "connected"


async def test_the_hosts_own_address_is_out_of_reach(
    machine: Machine, proxy: EgressProxy, site: Site, upstream: list[str]
) -> None:
    address = _own_address()
    assert probe_in_machine(machine, "tcp", address, site.port) == "connected"  # control
    assert await probe_in_unit(machine, "web", "tcp", address, site.port) == "ENETUNREACH"


async def test_dns_is_out_of_reach(machine: Machine, proxy: EgressProxy) -> None:
    """No resolver answers in the namespace (the proxy resolves the names it lets through):
    a stand-in resolver on the host's loopback, as systemd-resolved's 127.0.0.53 would be,
    and a name by the unit's own lookup."""
    with _udp_echo() as port:
        assert probe_in_machine(machine, "udp", "127.0.0.1", port) == "answered"  # control
        assert await probe_in_unit(machine, "web", "udp", "127.0.0.1", port) in (
            "timeout",
            "ECONNREFUSED",
        )
    lookup = "import socket; socket.getaddrinfo('deb.debian.org', 443)"
    result = await web_call(machine, proxy, ["/usr/bin/python3", "-c", lookup])
    assert not result.ok and "gaierror" in text(result), text(result)


@pytest.mark.parametrize(
    ("family", "error"),
    [("AF_INET6", "EAFNOSUPPORT"), ("AF_NETLINK", "EAFNOSUPPORT"), ("AF_PACKET", "EAFNOSUPPORT")],
)
async def test_other_socket_families_are_refused(
    machine: Machine, proxy: EgressProxy, family: str, error: str
) -> None:
    make = "import errno, socket\ntry:\n    socket.socket(socket.{0}, socket.SOCK_{1})\n"
    make += "    print('made')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])"
    kind = "RAW" if family != "AF_INET6" else "STREAM"
    result = await web_call(machine, proxy, ["/usr/bin/python3", "-c", make.format(family, kind)])
    assert text(result).strip() == error
    control = await web_call(
        machine, proxy, ["/usr/bin/python3", "-c", make.format("AF_INET", "STREAM")]
    )
    assert text(control).strip() == "made"


async def test_io_uring_cannot_open_sockets_past_the_filter(
    machine: Machine, proxy: EgressProxy
) -> None:
    """io_uring can make sockets without socket(2), past RestrictAddressFamilies=; its
    setup is refused in the unit."""
    setup = (
        "import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
        "p = ctypes.create_string_buffer(120); "
        "print(libc.syscall(425, 4, p), ctypes.get_errno())"
    )
    result = await web_call(machine, proxy, ["/usr/bin/python3", "-c", setup])
    assert text(result).split() == ["-1", "1"], "io_uring_setup must fail with EPERM"
    control = machine.execute(f'systemd-run --wait --pipe -q python3 -c "{setup}"')[1].split()
    if control[0] == "-1":  # nspawn's own filter: the VM's egress scenario shows the control
        print(f"\nio_uring is refused by the machine itself (errno {control[1]}); see vm-tests")
    else:
        assert int(control[0]) >= 0, control


async def test_a_group_without_domains_cannot_reach_the_relay(
    machine: Machine, proxy: EgressProxy
) -> None:
    assert await probe_in_unit(machine, "web", "tcp", "127.0.0.1", EGRESS.port) == "connected"
    # Without domains not even an IPv4 socket: nothing to connect with, let alone to.
    assert await probe_in_unit(machine, "alpha", "tcp", "127.0.0.1", EGRESS.port) == "EAFNOSUPPORT"


# --- the relay itself ------------------------------------------------------------------


async def test_the_relay_runs_as_a_dynamic_user_without_capabilities(
    machine: Machine, proxy: EgressProxy, site: Site
) -> None:
    await web_call(machine, proxy, ["/usr/bin/curl", "-sS", f"http://localhost:{site.port}/up"])
    pid = machine.succeed("systemctl show -P MainPID nanoclaw-egress-web.service").strip()
    status = machine.succeed(f"cat /proc/{pid}/status")
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    uid = int(fields["Uid"].split()[0])
    assert 61184 <= uid <= 65519, f"not a dynamic user: {uid}"
    assert fields["CapEff"].strip() == "0000000000000000"
    assert "systemd-socket-proxyd" in machine.succeed(f"cat /proc/{pid}/cmdline")


async def test_a_broker_restart_clears_the_relays_and_the_next_call_has_one_again(
    machine: Machine, proxy: EgressProxy, site: Site, upstream: list[str]
) -> None:
    url = f"http://localhost:{site.port}/again"
    assert (await web_call(machine, proxy, ["/usr/bin/curl", "-sS", url])).ok
    machine.succeed("systemctl restart nanoclaw-sandboxd.service")
    machine.wait_until_succeeds("! systemctl is-active nanoclaw-egress-web.socket", timeout=20)
    again = await web_call(machine, proxy, ["/usr/bin/curl", "-sS", url])
    assert text(again) == "upstream page /again", text(again)
    assert upstream == ["/again", "/again"]


# --- nanoclaw exec ---------------------------------------------------------------------


def test_nanoclaw_exec_brings_its_own_proxy_unless_the_hosts_listens(
    machine: Machine, site: Site
) -> None:
    command = [
        sys.executable, "-m", "nanoclaw.cli", "exec", "--socket", socket_of(machine),
        "--egress-socket", site.egress_socket, "--timeout", "15", "web", "--",
        "curl", "-sS", "--max-time", "5", "-w", "%{http_code}",
        f"http://localhost:{site.port}/exec",
    ]  # fmt: skip
    alone = subprocess.run(command, capture_output=True, text=True, timeout=60)
    # Its own proxy answers, knowing the call's secret (else 407), with its default
    # settings: the upstream's port is not 80 or 443, so 403.
    assert alone.stdout.endswith("403") and "nanoclaw egress proxy" in alone.stdout, alone
    assert "no egress proxy" not in alone.stderr
    assert alone.stderr.endswith(" ms\n"), alone.stderr
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(site.egress_socket)  # as a running host's proxy would
    listening.listen()
    try:
        taken = subprocess.run(command, capture_output=True, text=True, timeout=60)
    finally:
        listening.close()
        os.unlink(site.egress_socket)
    assert "no egress proxy" in taken.stderr and "in use" in taken.stderr, taken


# --- helpers ----------------------------------------------------------------------------


def _own_address() -> str:
    """This machine's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError as error:
            pytest.skip(f"SKIPPING: this machine has no default route ({error})")
        return str(s.getsockname()[0])


@contextmanager
def _udp_echo() -> Iterator[int]:
    """A UDP server on 127.0.0.1 answering each datagram with itself, in a thread (the
    probes from the machine block this event loop); its port."""

    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            sock.sendto(data, self.client_address)

    with socketserver.UDPServer(("127.0.0.1", 0), Echo) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield int(server.server_address[1])
        finally:
            server.shutdown()
