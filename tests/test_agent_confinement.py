"""The agent runtime in its own unit, against a real systemd in nspawn.

The broker runs as the unit of units/, with the Agent SDK's bundled CLI as its agent
runtime. The host's side runs here, outside the machine, as the host is outside every
unit: the SDK session, the credential proxy (on a Unix socket bound into the machine where
the host's would be, /run/nanoclaw-credentials) and the scripted model behind it.

First a whole turn: the SDK's client, through nanoclaw.host.confined_cli, talks to a CLI
that the broker started in the group's agent unit, and the model's tool call runs in a tool
unit of the same broker. Then the unit's walls, probed by nanoclaw.broker.agent_probe (the
agent unit's exact properties, with a probe in the CLI's place), each next to a control
that shows the probe reaching its target where it is allowed to. (MemoryMax= and the other
cgroup bounds hold only where cgroup v2 is real: vm-tests/scenarios/agent.py.)
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from claude_agent_sdk import create_sdk_mcp_server

from nanoclaw.broker.agent_runs import find_agent_cli
from nanoclaw.host.agent import AgentSession, AgentSettings
from nanoclaw.host.audit_call import AuditScope
from nanoclaw.host.config_subagents import SubagentConfig
from nanoclaw.host.credential_proxy import CredentialProxy
from nanoclaw.host.model_credential import ModelCredential
from nanoclaw.host.sandbox.gateway import SandboxGateway
from nanoclaw.host.sandbox.mcp import sandbox_mcp_tools
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
from tests.support.scripted_model import ModelRequest, ScriptedModel, ToolCall

KEY = "sk-confined-0123456789"
AGENT_MEMORY = 256 * 1024 * 1024
POLICY = {
    "version": 1,
    "data_dir": "/var/lib/nanoclaw",
    "protected_paths": ["/etc/nanoclaw"],
    "defaults": {"agent": {"memory_max_bytes": AGENT_MEMORY}},
    "groups": {
        "alpha": {
            "uid": 61001,
            "main": True,
            "agent": {"uid": 62001},
            "subagents": {"scribe": {"readonly": True}},
        },
        "beta": {"uid": 61002, "agent": {"uid": 62002}},
    },
}
CLI_DIR = "/opt/claude-cli"
OVERRIDE = BROKER_OVERRIDE.replace(
    "--policy /etc/nanoclaw/policy.json",
    f"--policy /etc/nanoclaw/policy.json --agent-cli {CLI_DIR}/claude",
)
SETUP = (
    """
set -e
groupadd --system nanoclaw
useradd --system --gid nanoclaw --no-create-home --shell /usr/sbin/nologin nanoclaw
mkdir -p /etc/nanoclaw /var/lib/nanoclaw
chown nanoclaw:nanoclaw /var/lib/nanoclaw
chmod 0750 /var/lib/nanoclaw
echo database > /var/lib/nanoclaw/nanoclaw.db
mkdir -p /run/credentials/nanoclaw.service
echo matrix-token-secret > /run/credentials/nanoclaw.service/matrix-token
for g in alpha:62001 beta:62002; do
  groupadd --gid ${g##*:} nanoclaw-agent-${g%%:*}
  useradd --uid ${g##*:} --gid ${g##*:} --no-create-home --shell /usr/sbin/nologin \
    nanoclaw-agent-${g%%:*}
done
"""
    + tool_users({"alpha": 61001, "beta": 61002})
    + """install -m 0644 /tmp/units/policy.json /etc/nanoclaw/policy.json
"""
    + INSTALL_BROKER
)
# Run in the agent unit (by agent_probe) or in the machine as root: one line per probe.
PROBES = r"""
import errno, os, socket
def attempt(name, action):
    try:
        print(name, action())
    except OSError as e:
        print(name, errno.errorcode.get(e.errno or 0, str(e)))
def connect_unix(path):
    s = socket.socket(socket.AF_UNIX); s.connect(path); s.close(); return "connected"
def connect_tcp(host, port):
    socket.create_connection((host, port), 3).close(); return "connected"
def write(path):
    with open(path, "w") as f: f.write("x")
    return "written"
attempt("uid", lambda: str(os.getuid()))
def read(path):
    with open(path) as f: return f.read().strip()
attempt("credentials", lambda: read("/run/credentials/nanoclaw.service/matrix-token"))
attempt("database", lambda: read("/var/lib/nanoclaw/nanoclaw.db"))
attempt("policy", lambda: str(len(open("/etc/nanoclaw/policy.json").read()) > 0))
attempt("other-state", lambda: str(os.listdir("/var/lib/nanoclaw-agent/beta")))
attempt("broker", lambda: connect_unix("/run/nanoclaw/sandbox.sock"))
attempt("dbus", lambda: connect_unix("/run/dbus/system_bus_socket"))
attempt("model-relay", lambda: connect_tcp("127.0.0.1", 8080))
attempt("host-loopback", lambda: connect_tcp("127.0.0.1", PORT))
attempt("write-etc", lambda: write("/etc/nanoclaw/planted"))
attempt("write-own-state", lambda: write(os.environ.get("HOME", "/nonexistent") + "/probe"))
"""


@dataclass(frozen=True)
class Outside:
    """What runs here: the model, the credential proxy's socket directory, a TCP listener."""

    model: ScriptedModel
    credentials_dir: Path
    listener_port: int


SCRIBE = SubagentConfig("scribe", "Writes notes.", "You are SCRIBE.", None, ("bash",))
SCRIBE_WRITES = "id -u; touch /workspace/group/note 2>&1 || true"


def script(request: ModelRequest) -> str | ToolCall:
    if request.tool_results:
        return "tool said: " + request.tool_results[-1]["content"]
    if "SCRIBE" in request.system_text:  # the subagent's own request
        return ToolCall("mcp__nanoclaw__bash", {"command": SCRIBE_WRITES})
    if "scribe" in request.last_user_text:
        return ToolCall("Agent", {"description": "note", "prompt": "go", "subagent_type": "scribe"})
    return ToolCall("mcp__nanoclaw__bash", {"command": "id -u; pwd"})


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outside]:
    credentials = tmp_path_factory.mktemp("credentials")
    credentials.chmod(0o755)  # as the host's RuntimeDirectory: the relays' dynamic users pass
    with ScriptedModel(script) as model:
        model.api_key = KEY
        yield Outside(model, credentials, int(model.url.rsplit(":", 1)[1]))


@pytest.fixture(scope="module")
def machine(outside: Outside, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    require_machine()
    cli = find_agent_cli()
    assert cli is not None, "the Agent SDK's bundled CLI is missing from this venv"
    units = tmp_path_factory.mktemp("units")
    for name in ("nanoclaw-sandboxd.socket", "nanoclaw-sandboxd.service"):
        shutil.copy(REPO / "units" / name, units / name)
    (units / "override.conf").write_text(OVERRIDE)
    (units / "policy.json").write_text(json.dumps(POLICY))
    binds = [
        (REPO, SOURCE, False),
        (units, "/tmp/units", False),
        (Path(cli).parent, CLI_DIR, False),
        (outside.credentials_dir, "/run/nanoclaw-credentials", False),
    ]
    with Machine(rootfs(), "agent", binds=binds) as m:
        m.succeed(SETUP)
        yield m


@pytest.fixture
async def proxy(outside: Outside) -> AsyncIterator[CredentialProxy]:
    proxy = CredentialProxy(ModelCredential(KEY, subscription=False), outside.model.url)
    await proxy.start(str(outside.credentials_dir / "proxy.sock"))
    yield proxy
    await proxy.close()


def socket_of(machine: Machine) -> str:
    return f"/proc/{machine.pid}/root/run/nanoclaw/sandbox.sock"


def as_agent(machine: Machine, group: str, program: str, script: str) -> str:
    """`program` run with exactly `group`'s agent unit's properties, `script` as its
    stdin; its stdout."""
    command = f"cd {SOURCE} && python3 -m nanoclaw.broker.agent_probe {group} {program}"
    machine.succeed(f"cat > /tmp/probe.py <<'EOF'\n{script}\nEOF")
    output = machine.succeed(f"{command} < /tmp/probe.py").splitlines()
    # agent_probe's own last line (on stderr), "UNIT: RESULT", is not the program's.
    assert output and output[-1].startswith(f"nanoclaw-agent-{group}-"), output
    return "\n".join(output[:-1]) + "\n"


def probed(output: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in output.strip().splitlines())


# --- a whole turn --------------------------------------------------------------------


async def confined_settings(
    machine: Machine, outside: Outside, proxy: CredentialProxy, tmp_path: Path
) -> AgentSettings:
    """alpha's agent as the host makes it, its CLI in the machine's agent unit."""
    gateway = await SandboxGateway.open(socket_of(machine), 30, str(tmp_path / "egress.sock"))
    tools = sandbox_mcp_tools(gateway, "alpha")
    return AgentSettings(
        folder="alpha",
        state_dir=tmp_path / "unused",  # the unit has its own state: nothing is made here
        model=None,
        base_url=outside.model.url,
        credentials=proxy,
        system_prompt="You are Andy.",
        tools=create_sdk_mcp_server("nanoclaw", tools=tools),
        tool_names=tuple(t.name for t in tools),
        audit=AuditScope("alpha"),
        broker_socket=socket_of(machine),
        subagents=(SCRIBE,),
    )


async def test_a_turn_through_the_confined_cli_with_a_sandboxed_tool_call(
    machine: Machine, outside: Outside, proxy: CredentialProxy, tmp_path: Path
) -> None:
    session = AgentSession(await confined_settings(machine, outside, proxy, tmp_path))
    try:
        reply = await session.ask("please run it", None, 120)
        # The tool ran in a tool unit: the group's tool user, in its workspace.
        assert reply.text == "tool said: 61001\n/workspace/group", reply.text
        # The CLI runs in the group's agent unit, as the agent user, while the session is warm.
        units = machine.succeed(
            "systemctl list-units --plain --no-legend --state=active 'nanoclaw-agent-alpha-*'"
        ).split()
        assert units and units[0].startswith("nanoclaw-agent-alpha-"), units
        unit = units[0]
        assert machine.succeed(f"systemctl show -P User {unit}").strip() == "62001"
        pid = machine.succeed(f"systemctl show -P MainPID {unit}").strip()
        assert machine.succeed(f"stat -c %u /proc/{pid}").strip() == "62001"
        # Its model requests came through the relay and the proxy, with the real key.
        assert outside.model.requests and all(
            r.headers["x-api-key"] == KEY for r in outside.model.requests
        )
        assert not (tmp_path / "unused").exists()
        # A follow-up on the warm session: the same unit.
        again = await session.ask("and again", reply.session_id, 120)
        assert again.text.startswith("tool said: 61001"), again.text
        assert unit in machine.succeed(
            "systemctl list-units --plain --no-legend 'nanoclaw-agent-*'"
        )
    finally:
        await session.close()
    # Closing the session stops the unit.
    deadline = time.monotonic() + 20
    while machine.succeed("systemctl list-units --plain --no-legend 'nanoclaw-agent-*'").strip():
        assert time.monotonic() < deadline, "the agent unit outlived its session"
        await asyncio.sleep(0.5)
    # The transcript was written in the unit's own state, which the host never reads.
    machine.succeed("ls /var/lib/nanoclaw-agent/alpha/claude/projects")
    assert machine.succeed("stat -c %u /var/lib/nanoclaw-agent/alpha").strip() == "62001"


async def test_a_subagent_of_the_confined_cli_runs_its_tool_call_in_a_narrowed_unit(
    machine: Machine, outside: Outside, proxy: CredentialProxy, tmp_path: Path
) -> None:
    """The CLI in its agent unit starts the declared subagent; the subagent's bash call
    reaches the host's tool server, which names it to the broker: a tool unit of the group,
    read-only as the policy narrows it. The main agent's own call there writes (control)."""
    session = AgentSession(await confined_settings(machine, outside, proxy, tmp_path))
    try:
        reply = await session.ask("ask the scribe", None, 120)
        control = await session.ask("and yourself", reply.session_id, 120)
    finally:
        await session.close()
    subagent_request = next(r for r in outside.model.requests if "SCRIBE" in r.system_text)
    assert subagent_request.tool_names == ["mcp__nanoclaw__bash"]
    assert "61001" in reply.text and "Read-only file system" in reply.text, reply.text
    assert control.text == "tool said: 61001\n/workspace/group", control.text
    machine.succeed("touch /var/lib/nanoclaw/groups/alpha/control-write || true")


ASK_BROKER = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect("/run/nanoclaw/sandbox.sock")
s.sendall(sys.stdin.buffer.read())
print(s.recv(4096).decode())
"""


async def test_the_broker_refuses_an_agent_unit_to_anyone_but_the_host(machine: Machine) -> None:
    """The broker's socket is the host's (group nanoclaw); a member that is not the host's
    main process gets no agent unit, as it gets no tool unit."""
    machine.succeed(f"cat > /tmp/ask-broker.py <<'EOF'\n{ASK_BROKER}\nEOF")
    request = json.dumps({"agent": "alpha", "argv": [], "env": {}})
    answer = machine.succeed(
        "setpriv --reuid=nanoclaw --regid=nanoclaw --init-groups python3 /tmp/ask-broker.py "
        f"<<'EOF'\n{request}\nEOF"
    )
    assert '"ok": false' in answer and "start" in answer, answer
    assert not machine.succeed("systemctl list-units --plain --no-legend 'nanoclaw-agent-*'")


# --- the walls, each next to its control -------------------------------------------------


async def test_the_agent_unit_reaches_only_its_state_and_the_model_relay(
    machine: Machine, outside: Outside, proxy: CredentialProxy
) -> None:
    program = PROBES.replace("PORT", str(outside.listener_port))
    machine.succeed("install -d -o 62002 -g 62002 -m 0700 /var/lib/nanoclaw-agent/beta")
    inside = probed(as_agent(machine, "alpha", "/usr/bin/python3", program))
    # Control: the same probes as root in the machine reach every target.
    control = probed(machine.succeed(f"python3 - <<'EOF'\n{program}\nEOF"))
    assert inside["uid"] == "62001" and control["uid"] == "0"
    for name, secret in (("credentials", "matrix-token-secret"), ("database", "database")):
        assert control[name] == secret
        assert inside[name] in ("ENOENT", "EACCES"), (name, inside[name])
    assert control["policy"] == "True" and inside["policy"] in ("ENOENT", "EACCES")
    assert control["other-state"] == "[]" and inside["other-state"] in ("ENOENT", "EACCES")
    for name in ("broker", "dbus"):
        assert control[name] == "connected", (name, control[name])
        assert inside[name] == "ENOENT", (name, inside[name])
    # The network: the model relay only (it leads to the credential proxy); not the
    # machine's loopback, where the model itself listens.
    assert inside["model-relay"] == "connected"
    assert control["host-loopback"] == "connected"
    assert inside["host-loopback"] in ("ECONNREFUSED", "ENETUNREACH"), inside["host-loopback"]
    assert control["write-etc"] == "written" and inside["write-etc"] in ("EROFS", "EACCES")
    assert inside["write-own-state"] == "written"


async def test_the_model_relay_leads_to_the_credential_proxy_which_wants_a_placeholder(
    machine: Machine, proxy: CredentialProxy, outside: Outside
) -> None:
    ask = """
import urllib.error, urllib.request
headers = {"x-api-key": "KEY", "content-type": "application/json"}
url = "http://127.0.0.1:8080/v1/messages"
try:
    print(urllib.request.urlopen(urllib.request.Request(url, b"{}", headers), timeout=10).status)
except urllib.error.HTTPError as e:
    print(e.code)
"""
    placeholder = proxy.issue("alpha", outside.model.url)
    python = "/usr/bin/python3"
    try:  # in a thread: the proxy answers on this event loop meanwhile
        forged = await asyncio.to_thread(
            as_agent, machine, "alpha", python, ask.replace("KEY", "sk-forged")
        )
        assert forged.strip() == "401", forged
        issued = await asyncio.to_thread(
            as_agent, machine, "alpha", python, ask.replace("KEY", placeholder)
        )
        assert issued.strip() == "200", issued  # the scripted model's answer, with the key
    finally:
        proxy.revoke(placeholder)
