# Egress: no network by default; CIDRs exactly; domains only through the proxy; loopback
# services out of reach. 11.0.0.100 and 11.0.0.101 both forward to one HTTP server outside
# the VM that answers "egress-ok"; /etc/hosts names them allowed.test and denied.test.
start_all()
ensure_node()
fetch = "curl -sS --fail --max-time 5 "

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
    # The proxy is the only way out: the same address, straight, is blocked.
    tool_fails("web", fetch + "--noproxy '*' http://11.0.0.100/")
    # Only groups with domains get a proxy (and a secret for it).
    assert tool_succeeds("cidr", "env | grep -ci proxy || true").startswith("0\n")

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

with subtest("on the proxy's address, only the proxy's port"):
    # A service on every address (as a homeserver or sshd may listen) answers on the
    # proxy's address too, and so does one bound to that address alone.
    for unit, bind, port in (("any", "0.0.0.0", 8009), ("proxy-neighbour", "127.0.0.9", 8010)):
        machine.succeed(
            f"systemd-run --unit=stand-in-{unit} -p DynamicUser=yes "
            f"python3 -m http.server --bind {bind} {port}"
        )
        machine.wait_until_succeeds(f"{fetch} http://127.0.0.9:{port}/")  # control
        tool_fails("web", fetch + f"--noproxy '*' http://127.0.0.9:{port}/")
        machine.succeed(f"systemctl stop stand-in-{unit}")
    # The proxy's own port on that address stays open: the listed domain went through it.
    assert "egress-ok" in tool_succeeds("web", fetch + "http://allowed.test/")

with subtest("no name service sockets"):
    for group in ("alpha", "web"):
        tool_fails(
            group,
            "ls /run/systemd/resolve/ /run/nscd/ /run/dbus/system_bus_socket 2>/dev/null | grep .",
        )
