# The VM is what the isolation scenarios need: systemd on the unified cgroup hierarchy,
# cgroup-BPF egress filtering that really drops packets (it fails open in the nspawn
# machines), the public web servers of the runner, the nanoclaw source and its venv.
#
# A NixOS-style testScript: `machine`, `start_all`, `subtest` and `web_servers` (guest
# addresses whose port 80 reaches a host web server answering "egress-ok ADDRESS") come
# from vm-tests/driver.py.

RUN = "systemd-run --wait --pipe --quiet"
# curl that gives up soon: a cgroup-BPF drop shows as a connect timeout (curl's status 28),
# a refused or failed connect as status 7, or as EPERM.
CURL = "curl -sS --fail --connect-timeout 3 -m 10"
BLOCKED = ("curl: (28)", "curl: (7)", "Operation not permitted")


def blocked(output: str) -> bool:
    return any(sign in output for sign in BLOCKED)


start_all()
machine.wait_for_unit("multi-user.target")

with subtest("systemd runs on the unified cgroup hierarchy"):
    fstype = machine.succeed("stat -fc %T /sys/fs/cgroup").strip()
    assert fstype == "cgroup2fs", f"/sys/fs/cgroup is {fstype}"

with subtest("IPAddressDeny=any blocks a unit's connection to a loopback server"):
    machine.succeed(
        "systemd-run --unit=smoke-http --quiet -p DynamicUser=yes "
        "python3 -m http.server --bind 127.0.0.1 --directory /opt/nanoclaw-src 8000"
    )
    machine.wait_for_open_port(8000)
    machine.succeed(f"{RUN} {CURL} -o /dev/null http://127.0.0.1:8000/pyproject.toml")
    out = machine.fail(f"{RUN} -p IPAddressDeny=any {CURL} http://127.0.0.1:8000/")
    assert blocked(out), out
    machine.succeed("systemctl stop smoke-http")

with subtest("public addresses reach the host's web servers, and only what a unit allows"):
    for ip in web_servers:
        assert machine.succeed(f"{CURL} http://{ip}/") == f"egress-ok {ip}\n"
    first, second = web_servers[:2]
    allow_first = f"{RUN} -p IPAddressDeny=any -p IPAddressAllow={first}"
    assert machine.succeed(f"{allow_first} {CURL} http://{first}/") == f"egress-ok {first}\n"
    assert blocked(machine.fail(f"{allow_first} {CURL} http://{second}/"))
    assert blocked(machine.fail(f"{RUN} -p IPAddressDeny=any {CURL} http://{first}/"))
    # Nothing but the forwarded ports leaves QEMU: another port of the same address is dead.
    machine.fail(f"{CURL} http://{first}:8080/")

with subtest("the nanoclaw source is mounted and its venv imports everything"):
    machine.succeed("test -f /opt/nanoclaw-src/nanoclaw/broker/sandboxd.py")
    machine.succeed("findmnt -no OPTIONS /opt/nanoclaw-src | grep -qw ro")
    machine.fail("touch /opt/nanoclaw-src/nanoclaw/x")
    machine.succeed(
        "/opt/nanoclaw/venv/bin/python -c "
        "'import nanoclaw.broker.sandboxd, nio, claude_agent_sdk, aiohttp, dbus_next'",
        timeout=300,
    )
    machine.succeed("nanoclaw-sandboxd --help >/dev/null", timeout=300)
