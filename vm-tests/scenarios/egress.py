# Egress: no network by default; CIDRs exactly; domains only through the group's relay to
# the egress proxy, and no way around it; loopback services out of reach. 11.0.0.100 and
# 11.0.0.101 both forward to one HTTP server outside the VM that answers "egress-ok";
# /etc/hosts names them allowed.test and denied.test. `nanoclaw exec` runs the egress proxy
# for its call where the host's would be (/run/nanoclaw-egress/proxy.sock).
start_all()
ensure_node()
fetch = "curl -sS --fail --max-time 5 "

# Run by python3 in a tool unit or on the node: "connected" or "answered", else the errno's
# name. The UDP question is a DNS query for example.com.
PROBE = """
import errno, socket, sys
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if kind == "tcp":
        socket.create_connection((host, port), 3).close()
        print("connected")
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3)
        query = "1234 0100 0001 0000 0000 0000 07 6578616d706c65 03 636f6d 00 0001 0001"
        s.sendto(bytes.fromhex(query), (host, port))
        s.recv(512)
        print("answered")
except TimeoutError:
    print("timeout")
except OSError as e:
    print(errno.errorcode.get(e.errno or 0, str(e)))
"""


def probe(where: str, kind: str, host: str, port: int, *expected: str) -> None:
    """The probe in a tool unit of group `where`, or on the node itself ("node"), must
    print one of `expected`."""
    command = f"python3 -c {shlex.quote(PROBE)} {kind} {host} {port}"
    if where == "node":
        got = machine.succeed(command).strip()
    else:  # the probe's one word, among what nanoclaw exec and its proxy may log
        lines = tool_succeeds(where, command).splitlines()
        got = next((line for line in lines if line and " " not in line), "\n".join(lines))
    assert got in expected, f"{where}: {kind} to {host}:{port} gave {got!r}, not {expected}"


with subtest("no network by default"):
    assert "egress-ok" in machine.succeed(fetch + "http://11.0.0.100/")  # control: the VM can
    tool_fails("alpha", fetch + "--noproxy '*' http://11.0.0.100/")

with subtest("an allowed CIDR is reachable and its neighbour is not"):
    assert "egress-ok" in tool_succeeds("cidr", fetch + "http://11.0.0.100/")
    assert "egress-ok" in machine.succeed(fetch + "http://11.0.0.101/")
    tool_fails("cidr", fetch + "http://11.0.0.101/")

with subtest("a listed domain through the proxy, an unlisted one refused"):
    assert "egress-ok" in tool_succeeds("web", fetch + "http://allowed.test/")
    refused = tool_fails("web", fetch + "http://denied.test/")
    assert "403" in refused, refused
    # The proxy is the only way out: the same address, straight, has no route.
    probe("web", "tcp", "11.0.0.100", 80, "ENETUNREACH")
    # Only groups with domains get a proxy (and a secret for it).
    assert tool_succeeds("cidr", "env | grep -ci proxy || true").startswith("0\n")

with subtest("a subagent without egress reaches no domain of its group"):
    assert "egress-ok" in tool_succeeds("web", fetch + "http://allowed.test/")  # control
    tool_fails("web", fetch + "http://allowed.test/", subagent="offline")
    assert tool_succeeds("web", "env | grep -ci proxy || true", subagent="offline").startswith(
        "0\n"
    )

with subtest("loopback services are out of reach"):
    machine.succeed(
        "systemd-run --unit=stand-in-homeserver -p DynamicUser=yes "
        "python3 -m http.server --bind 127.0.0.1 8008"
    )
    machine.wait_for_open_port(8008)
    machine.succeed(fetch + "http://127.0.0.1:8008/")  # control
    for group in ("alpha", "cidr", "web"):
        tool_fails(group, fetch + "--noproxy '*' http://127.0.0.1:8008/")
    machine.succeed("systemctl stop stand-in-homeserver")

with subtest("around the relay: the node's addresses, DNS, io_uring, other families"):
    machine.succeed(
        "systemd-run --unit=stand-in-any -p DynamicUser=yes "
        "python3 -m http.server --bind 0.0.0.0 8009"
    )
    machine.wait_for_open_port(8009)
    route = machine.succeed("ip -4 -o route get 11.0.0.100").split()
    own = route[route.index("src") + 1]
    for host in ("127.0.0.1", own):  # a service on every address, as sshd's or Synapse's
        probe("node", "tcp", host, 8009, "connected")  # control
        probe("web", "tcp", host, 8009, "ECONNREFUSED", "ENETUNREACH")
    machine.succeed("systemctl stop stand-in-any")
    # The relay is the one listener on the unit's loopback; a group without domains has no
    # relay, and not even an IPv4 socket to try with.
    probe("web", "tcp", "127.0.0.1", 3128, "connected")
    probe("alpha", "tcp", "127.0.0.1", 3128, "EAFNOSUPPORT")
    # DNS: a resolver on the node (as systemd-resolved's 127.0.0.53 would be) answers the
    # node on every address, and nothing answers the unit. Names are the proxy's to resolve.
    machine.succeed(resolver_stand_in("stand-in-resolver"))
    machine.wait_until_succeeds("ss -uln | grep -q ':5353 '")
    for host in ("127.0.0.1", own):
        probe("node", "udp", host, 5353, "answered")  # control
        probe("web", "udp", host, 5353, "ENETUNREACH", "timeout")
    machine.succeed("systemctl stop stand-in-resolver")
    lookup = tool_fails(
        "web", "python3 -c 'import socket; socket.getaddrinfo(\"example.com\", 443)'"
    )
    assert "gaierror" in lookup, lookup
    # io_uring would make sockets without socket(2), past RestrictAddressFamilies=.
    uring = errno_of(425, 4, "ctypes.create_string_buffer(120)")
    assert tool_succeeds("web", uring).splitlines()[0] == "1"  # EPERM
    assert machine.succeed(f"systemd-run --wait --pipe -q {uring}").strip() == "0"  # control
    for family in ("AF_INET6", "AF_NETLINK", "AF_PACKET"):
        made = tool_fails("web", f"python3 -c 'import socket; socket.socket(socket.{family}, 2)'")
        assert "Errno 97" in made, made  # EAFNOSUPPORT
    tool_succeeds("web", "python3 -c 'import socket; socket.socket(socket.AF_INET, 1)'")

with subtest("the relay runs as a dynamic user without capabilities"):
    tool_succeeds("web", fetch + "http://allowed.test/")
    pid = machine.succeed("systemctl show -P MainPID nanoclaw-egress-web.service").strip()
    status = machine.succeed(f"cat /proc/{pid}/status")
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    assert 61184 <= uid <= 65519, f"not a dynamic user: {uid}"
    assert "CapEff:\t0000000000000000" in status, status

with subtest("no name service sockets"):
    for group in ("alpha", "web"):
        tool_fails(
            group,
            "ls /run/systemd/resolve/ /run/nscd/ /run/dbus/system_bus_socket 2>/dev/null | grep .",
        )
