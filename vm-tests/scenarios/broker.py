# The broker: its socket is for group nanoclaw only, and of that group only the host's main
# process (and root) may start units; a request cannot name another group, add properties
# or mounts, or ask for more time; the host's user cannot start a unit itself.
import json

start_all()
ensure_node()

# Sends the request in /run/broker-request.json and prints the reply; with --child-too, a
# child process of this one sends it again and its reply follows.
ASK = """
import json, socket, subprocess, sys

def ask():
    s = socket.socket(socket.AF_UNIX)
    s.connect("/run/nanoclaw/sandbox.sock")
    with open("/run/broker-request.json", "rb") as request:
        s.sendall(request.read())
    return s.makefile().readline().strip()

print(ask(), flush=True)
if sys.argv[1:] == ["--child-too"]:
    subprocess.run([sys.executable, sys.argv[0]], check=True)
"""
machine.succeed(f"printf %s {shlex.quote(ASK)} > /run/broker-ask.py")


def put(request: dict) -> None:
    machine.succeed(f"printf '%s\\n' {shlex.quote(json.dumps(request))} > /run/broker-request.json")


def ask(request: dict, user: str = "nanoclaw") -> dict:
    put(request)
    reply = machine.succeed(
        f"setpriv --reuid={user} --regid={user} --init-groups python3 /run/broker-ask.py"
    )
    return json.loads(reply)


def ask_as_host(request: dict) -> list[dict]:
    """The replies to `request` sent by the main process of nanoclaw.service, then by a
    child of it: the real unit, its ExecStart= replaced by the asking script."""
    put(request)
    machine.succeed(
        "mkdir -p /run/systemd/system/nanoclaw.service.d && "
        "cat > /run/systemd/system/nanoclaw.service.d/ask.conf <<EOF\n"
        "[Service]\n"
        "Type=oneshot\n"
        "ExecStartPre=\n"
        "ExecStart=\n"
        "ExecStart=$(command -v python3) /run/broker-ask.py --child-too\n"
        "LoadCredential=\n"
        "WatchdogSec=0\n"
        "Restart=no\n"
        "StandardOutput=file:/run/broker-replies\n"
        "EOF\n"
        "systemctl daemon-reload && systemctl start nanoclaw.service"
    )
    replies = machine.succeed("cat /run/broker-replies")
    machine.succeed(
        "rm -r /run/systemd/system/nanoclaw.service.d /run/broker-replies && "
        "systemctl daemon-reload"
    )
    return [json.loads(line) for line in replies.splitlines()]


base = {"group": "alpha", "argv": ["/bin/true"], "cwd": "/workspace/group", "timeout": 5}

with subtest("group nanoclaw may connect, others are refused"):
    assert ask({"describe": True})["ok"] is True
    machine.succeed("useradd --system stranger")
    status, output = machine.execute(
        "setpriv --reuid=stranger --regid=stranger --clear-groups "
        'python3 -c "import socket; socket.socket(socket.AF_UNIX).connect('
        "'/run/nanoclaw/sandbox.sock')\""
    )
    assert status != 0 and "Permission denied" in output, output

with subtest("only the host's main process starts units, not its children or the group"):
    refused = ask(base)
    assert refused["ok"] is False and "may not start tool units" in refused["error"], refused
    main, child = ask_as_host(base)
    assert main["ok"] is True and main["exit_status"] == 0, main
    assert child["ok"] is False and "may not start tool units" in child["error"], child
    assert tool_succeeds("alpha", "echo ran").startswith("ran\n")  # root may too

with subtest("requests cannot widen the policy"):
    for change, error in (
        ({"group": "nobody"}, "nobody"),
        ({"timeout": 0}, "timeout"),
        ({"properties": {"User": "root"}}, "unknown request fields"),
        ({"mounts": [["/", "/workspace/root"]]}, "unknown request fields"),
        ({"cwd": "/etc"}, "cwd"),
        ({"argv": ["bash"]}, "absolute"),
    ):
        reply = ask(base | change, user="root")  # root may start units: the check is next
        assert reply["ok"] is False and error in reply["error"], (change, reply)
    # More time than the group's bound is not refused but clamped: the unit gets the bound.
    policy = json.loads(machine.succeed("cat /etc/nanoclaw/policy.json"))
    bound = policy["defaults"]["limits"]["wall_seconds"]
    reply = ask(base | {"timeout": 3600}, user="root")
    assert reply["ok"] is True and reply["timeout"] == bound, reply

with subtest("the host's user cannot start a transient unit by itself"):
    status, output = machine.execute(
        "setpriv --reuid=nanoclaw --regid=nanoclaw --init-groups systemd-run --wait --pipe -q id -u"
    )
    assert status != 0, output
    machine.succeed("systemd-run --wait --pipe -q true")  # control: root can

with subtest("without systemd-socket-proxyd, groups with domains are refused"):
    assert tool_succeeds("web", "echo ran").startswith("ran\n")  # control: the relay starts
    command = machine.succeed("systemctl show -P ExecStart nanoclaw-sandboxd.service").split()
    given = [word for word in command if word.endswith("/systemd-socket-proxyd")]
    proxyd = given[0] if given else "/usr/lib/systemd/systemd-socket-proxyd"
    machine.succeed(f"mount --bind /dev/null {proxyd} && systemctl restart nanoclaw-sandboxd")
    refused = tool_fails("web", "echo ran")
    assert "need systemd-socket-proxyd, which this machine lacks" in refused, refused
    assert tool_succeeds("cidr", "echo ran").startswith("ran\n")  # a CIDR group needs none
    assert tool_succeeds("alpha", "echo ran").startswith("ran\n")
    machine.succeed(f"umount {proxyd} && systemctl restart nanoclaw-sandboxd")
    assert tool_succeeds("web", "echo ran").startswith("ran\n")
