# Shared by every scenario, run before it in the same globals (the NixOS wrapper
# concatenates the two files into one testScript). `machine` is the node with nanoclaw.
# On NixOS the module configures the node; the Debian node is set up here, once per boot,
# by vm-tests/node/setup.sh (units/ and a test policy, installed by hand).
import shlex

NODE_SETUP = "/opt/nanoclaw-src/vm-tests/node/setup.sh"


def ensure_node() -> None:
    machine.wait_for_unit("multi-user.target")
    if machine.execute("test -e /etc/nanoclaw/policy.json")[0] != 0:
        machine.succeed(NODE_SETUP, timeout=120)
    machine.wait_for_unit("nanoclaw-sandboxd.socket")


def in_tool(group: str, command: str, timeout: int = 20, subagent: str = "main") -> tuple[int, str]:
    """(status, stdout+stderr) of `command` run by /bin/sh in a tool unit of `group`,
    through the real broker, as the agent's (or its subagent's) bash tool would run it."""
    return machine.execute(
        f"nanoclaw exec --timeout {timeout} --subagent {subagent} {group} "
        f"-- /bin/sh -c {shlex.quote(command)} 2>&1",
        timeout=timeout + 30,
    )


def tool_succeeds(group: str, command: str, timeout: int = 20, subagent: str = "main") -> str:
    status, output = in_tool(group, command, timeout, subagent)
    assert status == 0, f"[{group}] `{command}` should succeed, exit {status}:\n{output}"
    return output


def tool_fails(group: str, command: str, timeout: int = 20, subagent: str = "main") -> str:
    status, output = in_tool(group, command, timeout, subagent)
    assert status != 0, f"[{group}] `{command}` should fail:\n{output}"
    return output


def errno_of(syscall: int, *args: int | str) -> str:
    """A probe printing the errno of a raw syscall (0 when it succeeds). A string argument
    is a Python expression, e.g. "ctypes.create_string_buffer(120)" for a zeroed struct."""
    listed = ",".join(str(a) for a in args)
    return (
        "python3 -c 'import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
        f"r = libc.syscall({syscall},{listed}); print(ctypes.get_errno() if r == -1 else 0)'"
    )


def resolver_stand_in(unit: str) -> str:
    """The command that starts a stand-in resolver (as systemd-resolved would be) on every
    address of the node, port 5353: a unit `unit` echoing each datagram."""
    echo = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.bind(('0.0.0.0', 5353))\n"
        "while True:\n"
        "    data, peer = s.recvfrom(512)\n"
        "    s.sendto(data, peer)\n"
    )
    return f"systemd-run --unit={unit} -p DynamicUser=yes python3 -c {shlex.quote(echo)}"
