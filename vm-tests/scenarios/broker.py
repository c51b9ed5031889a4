# The broker: its socket is for group nanoclaw only; a request cannot name another group,
# add properties or mounts, or ask for more time; the host's user cannot start a unit itself.
import json

start_all()
ensure_node()


def ask(request: dict, user: str = "nanoclaw") -> dict:
    script = (
        "import json, socket, sys; s = socket.socket(socket.AF_UNIX); "
        "s.connect('/run/nanoclaw/sandbox.sock'); s.sendall(sys.argv[1].encode() + b'\\n'); "
        "print(s.makefile().readline())"
    )
    reply = machine.succeed(
        f"setpriv --reuid={user} --regid={user} --init-groups python3 -c {shlex.quote(script)} "
        f"{shlex.quote(json.dumps(request))}"
    )
    return json.loads(reply)


base = {"group": "alpha", "argv": ["/bin/true"], "cwd": "/workspace/group", "timeout": 5}

with subtest("group nanoclaw may ask, others are refused"):
    assert ask(base)["ok"] is True
    machine.succeed("useradd --system stranger")
    status, output = machine.execute(
        "setpriv --reuid=stranger --regid=stranger --clear-groups "
        'python3 -c "import socket; socket.socket(socket.AF_UNIX).connect('
        "'/run/nanoclaw/sandbox.sock')\""
    )
    assert status != 0 and "Permission denied" in output, output

with subtest("requests cannot widen the policy"):
    for change, error in (
        ({"group": "nobody"}, "nobody"),
        ({"timeout": 3600}, "timeout"),
        ({"properties": {"User": "root"}}, "unknown request fields"),
        ({"mounts": [["/", "/workspace/root"]]}, "unknown request fields"),
        ({"cwd": "/etc"}, "cwd"),
        ({"argv": ["bash"]}, "absolute"),
    ):
        reply = ask(base | change)
        assert reply["ok"] is False and error in reply["error"], (change, reply)

with subtest("the host's user cannot start a transient unit by itself"):
    status, output = machine.execute(
        "setpriv --reuid=nanoclaw --regid=nanoclaw --init-groups systemd-run --wait --pipe -q id -u"
    )
    assert status != 0, output
    machine.succeed("systemd-run --wait --pipe -q true")  # control: root can

with subtest("without the port filter, groups with domains are refused"):
    assert tool_succeeds("web", "echo ran").startswith("ran\n")  # control: the filter holds
    # Stopping the filter stops the broker too (PartOf=), and the broker's next start
    # loads it again (Wants=), which fails here as where nft is missing.
    machine.systemctl("stop nanoclaw-port-filter.service")
    machine.fail("nft list table inet nanoclaw")
    machine.succeed("mount --bind /dev/null /usr/sbin/nft")
    refused = tool_fails("web", "echo ran")
    assert "other ports of the proxy's address are open" in refused, refused
    assert tool_succeeds("cidr", "echo ran").startswith("ran\n")  # a CIDR group needs no proxy
    machine.require_unit_state("nanoclaw-port-filter.service", "failed")
    machine.succeed("umount /usr/sbin/nft")
    machine.systemctl("restart nanoclaw-port-filter.service")  # and, PartOf=, the broker
    assert tool_succeeds("web", "echo ran").startswith("ran\n")
    machine.succeed("nft list table inet nanoclaw")
