"""The broker and its tool units against a real systemd, booted in systemd-nspawn.

The broker runs as the real socket-activated unit from units/, with a test policy; tool
calls go through the real client. Each escape attempt stands next to a control that
shows the same probe working where the policy allows it. What nspawn cannot enforce
(IP filtering, cgroup v2 limits) is proven in the VM tests, not here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shlex
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from nanoclaw.appliance.homeserver import EmbeddedHomeserver
from nanoclaw.broker.protocol import GroupGrant, RunResult
from nanoclaw.broker.workspace_usage import size
from nanoclaw.host.image_scale import MAX_IMAGE_BYTES
from nanoclaw.host.sandbox.client import SandboxError, describe_policy, run_in_sandbox
from nanoclaw.host.sandbox.gateway import SandboxGateway
from nanoclaw.host.sandbox.tools import SandboxTools, ToolInputError
from tests.support.machine import (
    BROKER_OVERRIDE,
    REPO,
    SOURCE,
    Machine,
    require_machine,
    rootfs,
    tool_users,
)
from tests.support.scripted_model import ModelRequest, ScriptedModel, ToolCall
from tests.support.world import World

LIMITS = {
    "memory_max_bytes": 268435456,
    "tasks_max": 32,
    "cpu_quota_percent": 100,
    "wall_seconds": 20,
    "output_bytes": 65536,
}
POLICY = {
    "version": 1,
    "data_dir": "/var/lib/nanoclaw",
    "protected_paths": ["/etc/nanoclaw"],
    "defaults": {"limits": LIMITS},
    "groups": {
        "alpha": {
            "uid": 61001,
            "main": True,
            "subagents": {"counter": {}, "reader": {"readonly": True}},
            "mounts": [
                {"host": "/srv/shared", "sandbox": "/workspace/shared", "writable": False},
                {"host": "/srv/scratch", "sandbox": "/workspace/scratch", "writable": True},
            ],
        },
        "beta": {"uid": 61002},
        "online": {"uid": 61003, "egress": {"cidrs": ["192.0.2.0/24"]}},
        "web": {"uid": 61004, "egress": {"domains": ["example.org", "*.example.net"]}},
    },
}
SETUP = (
    """
set -e
groupadd --system nanoclaw
mkdir -p /etc/nanoclaw /srv/shared /srv/scratch /var/lib/nanoclaw/global
"""
    + tool_users({name: group["uid"] for name, group in POLICY["groups"].items()})
    + """chown 61001:61001 /srv/scratch
echo shared-file > /srv/shared/readme
echo beta-secret > /var/lib/nanoclaw/groups/beta/secret
echo database > /var/lib/nanoclaw/nanoclaw.db
cp /tmp/units/nanoclaw-sandboxd.socket /tmp/units/nanoclaw-sandboxd.service \
   /tmp/units/nanoclaw.service /etc/systemd/system/
mkdir -p /etc/systemd/system/nanoclaw-sandboxd.service.d
cp /tmp/units/override.conf /etc/systemd/system/nanoclaw-sandboxd.service.d/
systemctl daemon-reload
systemctl start nanoclaw-sandboxd.socket
"""
)


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    require_machine()
    units = tmp_path_factory.mktemp("units")
    for name in ("nanoclaw-sandboxd.socket", "nanoclaw-sandboxd.service", "nanoclaw.service"):
        (units / name).write_text((REPO / "units" / name).read_text())
    (units / "override.conf").write_text(BROKER_OVERRIDE)
    (units / "policy.json").write_text(json.dumps(POLICY))
    with Machine(
        rootfs(), "sandbox", binds=[(REPO, SOURCE, False), (units, "/tmp/units", False)]
    ) as m:
        m.succeed(SETUP)
        m.succeed("install -m 0644 /tmp/units/policy.json /etc/nanoclaw/policy.json")
        yield m


def socket_of(machine: Machine) -> str:
    return f"/proc/{machine.pid}/root/run/nanoclaw/sandbox.sock"


async def sh(
    machine: Machine, command: str, group: str = "alpha", timeout: int = 10, stdin: bytes = b""
) -> RunResult:
    return await run_in_sandbox(
        socket_of(machine), group, ["/bin/sh", "-c", command], timeout=timeout, stdin=stdin
    )


def out(result: RunResult) -> str:
    return result.stdout.decode() + result.stderr.decode()


async def test_a_tool_call_runs_as_the_groups_user_in_its_workspace(machine: Machine) -> None:
    result = await sh(machine, "id -u; pwd; cat; echo oops >&2; exit 3", stdin=b"from stdin\n")
    assert result.stdout.decode().splitlines() == ["61001", "/workspace/group", "from stdin"]
    assert (result.exit_status, result.stderr) == (3, b"oops\n")
    assert result.unit.startswith("nanoclaw-tool-alpha-") and result.unit.endswith(".service")


async def test_secrets_and_other_groups_are_invisible(machine: Machine) -> None:
    assert (await sh(machine, "cat /etc/hostname")).ok, "control: ordinary files are readable"
    for escape in (
        "cat /etc/shadow",
        "ls /var/lib/nanoclaw",
        "cat /var/lib/nanoclaw/nanoclaw.db",
        "cat /var/lib/nanoclaw/groups/beta/secret",
        "ls /root",
        "cat /etc/nanoclaw/policy.json",
    ):
        result = await sh(machine, escape)
        assert not result.ok, f"{escape} should fail, got {out(result)!r}"
    assert out(await sh(machine, "cat /workspace/group/secret", group="beta")) == "beta-secret\n"


async def test_writes_only_where_the_policy_allows(machine: Machine) -> None:
    allowed = "touch /workspace/group/a /workspace/scratch/b /tmp/c && echo ok"
    assert out(await sh(machine, allowed)) == "ok\n"
    assert out(await sh(machine, "cat /workspace/shared/readme")) == "shared-file\n"
    machine.succeed("touch /run/lock/x /dev/shm/from-host")  # control: root can write there
    assert out(await sh(machine, "ls /dev/shm; touch /dev/shm/mine && echo ok")) == "ok\n"
    for target in ("/workspace/shared/x", "/usr/x", "/etc/x", "/workspace/x", "/run/lock/y"):
        assert not (await sh(machine, f"touch {target}")).ok, target
    assert "scratch" not in out(await sh(machine, "ls /workspace", group="beta"))


async def test_symlinks_in_a_writable_mount_do_not_reach_out(machine: Machine) -> None:
    await sh(machine, "ln -sf /var/lib/nanoclaw/groups/beta/secret /workspace/scratch/link")
    assert not (await sh(machine, "cat /workspace/scratch/link")).ok
    assert not (await sh(machine, "cat /workspace/scratch/link", group="beta")).ok


async def test_no_dbus_no_systemd_run(machine: Machine) -> None:
    machine.succeed("test -S /run/dbus/system_bus_socket")  # control: it exists outside
    machine.succeed("test -S /run/nanoclaw/sandbox.sock")
    assert not (await sh(machine, "test -e /run/dbus/system_bus_socket")).ok
    assert not (await sh(machine, "test -e /run/nanoclaw/sandbox.sock")).ok
    # A /run of the unit's own: empty but for systemd's (root-only) mount hand-over point.
    listing = (await sh(machine, "find /run 2>/dev/null")).stdout.decode().split()
    assert listing == ["/run", "/run/systemd", "/run/systemd/incoming"], listing
    assert not (await sh(machine, "systemd-run --wait true")).ok


def exposure(machine: Machine, unit: str) -> float:
    report = machine.succeed(f"systemd-analyze security --no-pager {unit}")
    line = next(line for line in report.splitlines() if "Overall exposure level" in line)
    print(line)
    return float(line.split(":")[1].split()[0])


async def test_exposure_scores_of_a_tool_unit_and_the_host(machine: Machine) -> None:
    """systemd's own rating: a tool unit without egress below 1.0, the host at most 2.0."""
    call = asyncio.create_task(sh(machine, "sleep 20", timeout=20))
    try:
        listing = await asyncio.to_thread(
            machine.wait_until_succeeds,
            "systemctl list-units --plain --no-legend 'nanoclaw-tool-alpha-*' | grep running",
        )
        assert await asyncio.to_thread(exposure, machine, listing.split()[0]) < 1.0
    finally:
        call.cancel()
    assert exposure(machine, "nanoclaw.service") <= 2.0


def errno_of(syscall: int, *args: int) -> str:
    """A probe that prints the errno of a raw syscall (0 when it succeeds)."""
    listed = ",".join(str(a) for a in args)
    return (
        "python3 -c 'import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
        f"r = libc.syscall({syscall},{listed}); print(ctypes.get_errno() if r == -1 else 0)'"
    )


@pytest.mark.parametrize(
    ("name", "probe"),
    [
        ("ptrace", errno_of(101, 0, 0, 0, 0)),
        ("bpf", errno_of(321, 0, 0, 0)),
        ("keyctl", errno_of(250, 0, 0, 0, 0, 0)),
        ("mount", errno_of(165, 0, 0, 0, 0, 0)),
        ("unshare", errno_of(272, 0x20000)),  # CLONE_NEWNS
    ],
)
async def test_privileged_syscalls_fail_with_eperm(machine: Machine, name: str, probe: str) -> None:
    assert out(await sh(machine, probe)).strip() == "1", f"{name}: EPERM in a tool unit"
    # Control: the same probe as root without the filter gets past seccomp (another errno,
    # or success), so the EPERM above is the filter's doing.
    status, control = machine.execute(f"systemd-run --wait --pipe -q {probe}")
    assert status == 0, control
    if name in ("bpf", "keyctl"):
        # nspawn's own seccomp filter refuses these two with EPERM for the whole machine,
        # so no control can pass here; the VM tests prove them against a bare kernel.
        assert control.strip() == "1", f"{name}: nspawn's filter changed: {control!r}"
    else:
        assert control.strip() != "1", f"{name} control: {control!r}"


async def test_setuid_does_not_elevate_and_no_capabilities(machine: Machine) -> None:
    machine.succeed("cp /bin/sh /usr/local/bin/rootsh && chmod 4755 /usr/local/bin/rootsh")
    assert out(await sh(machine, "/usr/local/bin/rootsh -p -c 'id -u'")) == "61001\n"
    caps = out(await sh(machine, "grep CapEff /proc/self/status"))
    assert caps.split()[-1] == "0000000000000000"


async def test_proc_shows_only_the_units_own_processes(machine: Machine) -> None:
    pids = out(await sh(machine, "ls /proc | grep -c '^[0-9]'"))
    assert int(pids) < 5, pids
    assert int(machine.succeed("ls /proc | grep -c '^[0-9]'")) > 5, "control: the machine has more"


async def test_a_timeout_kills_the_whole_process_tree(machine: Machine) -> None:
    result = await sh(machine, "sleep 300 & sleep 301 & wait", timeout=2)
    assert result.result == "timeout" and not result.ok
    machine.fail("pgrep -f 'sleep 30[01]'")


async def test_a_fork_bomb_and_the_broker_keeps_answering(machine: Machine) -> None:
    bomb = "i=0; while [ $i -lt 200 ]; do sleep 3 & i=$((i+1)); done; wait"
    result = await sh(machine, bomb, timeout=15)
    if "fork" in out(result).lower():
        assert not result.ok, "TasksMax stopped the bomb"
    else:
        # nspawn here gives the container's systemd no pids controller: TasksMax (like
        # MemoryMax and IP filtering) is proven in the VM tests, where cgroup v2 is real.
        print("\n*** ENVIRONMENT LIMITATION: TasksMax is not enforced in this nspawn machine ***")
    assert (await sh(machine, "echo alive")).ok, "the broker keeps answering"


async def test_output_is_capped_with_a_flag(machine: Machine) -> None:
    result = await sh(machine, "head -c 1000000 /dev/zero")
    assert result.truncated and len(result.stdout) == LIMITS["output_bytes"] and result.ok


@pytest.mark.parametrize(
    ("group", "argv", "timeout", "error"),
    [
        ("nobody", ["/bin/true"], 5, "nobody"),
        ("alpha", ["/bin/true"], 0, "timeout"),
        ("alpha", ["true"], 5, "absolute"),
        ("online", ["/bin/true"], 5, "IP filtering, which this machine does not enforce"),
    ],
)
async def test_the_broker_refuses(
    machine: Machine, group: str, argv: list[str], timeout: int, error: str
) -> None:
    with pytest.raises(SandboxError, match=error):
        await run_in_sandbox(socket_of(machine), group, argv, timeout=timeout)


async def test_a_longer_timeout_is_clamped_to_the_groups_bound(machine: Machine) -> None:
    result = await run_in_sandbox(socket_of(machine), "alpha", ["/bin/true"], timeout=999)
    assert result.ok and result.timeout == LIMITS["wall_seconds"]
    short = await run_in_sandbox(socket_of(machine), "alpha", ["/bin/true"], timeout=3)
    assert short.timeout == 3  # the control: a time within the bound is the time given


async def test_a_call_relying_on_an_old_policy_is_refused_with_the_new_one(
    machine: Machine,
) -> None:
    summary = await describe_policy(socket_of(machine))
    with pytest.raises(SandboxError, match="policy has changed") as refused:
        await run_in_sandbox(socket_of(machine), "web", ["/bin/true"], policy="0123456789abcdef")
    assert refused.value.summary == summary
    assert refused.value.summary.generation == summary.generation
    # The control: the generation the broker has now is accepted (past that check).
    result = await run_in_sandbox(
        socket_of(machine), "alpha", ["/bin/true"], timeout=5, policy=summary.generation
    )
    assert result.ok


@pytest.mark.parametrize("token", ["short", "a" * 20 + "\nUser=0", "a:b@c/" * 4])
async def test_a_malformed_proxy_token_is_refused(machine: Machine, token: str) -> None:
    with pytest.raises(SandboxError, match="proxy_token"):
        await run_in_sandbox(
            socket_of(machine), "alpha", ["/bin/true"], timeout=5, proxy_token=token
        )


async def test_a_proxy_token_reaches_only_units_of_groups_with_domains(machine: Machine) -> None:
    token = "t" * 32
    result = await sh(machine, "env | grep -ci proxy || true", stdin=b"")
    assert out(result) == "0\n"
    result = await run_in_sandbox(
        socket_of(machine),
        "alpha",
        ["/bin/sh", "-c", "env | grep -ci proxy; true"],
        timeout=5,
        proxy_token=token,
    )
    assert out(result) == "0\n", "alpha has no domains: the token goes nowhere"


async def test_describe_tells_the_host_only_bounds_domains_and_refusals(
    machine: Machine,
) -> None:
    summary = await describe_policy(socket_of(machine))
    assert summary.enforced is not None
    assert set(summary.enforced.refused) == {"online"}, "no cgroup BPF in nspawn: cidrs refused"
    assert summary.groups["web"] == GroupGrant(20, ("example.org", "*.example.net"))
    assert summary.groups["alpha"] == GroupGrant(20, ())
    assert set(summary.groups) == {"alpha", "beta", "online", "web"}


async def test_extra_request_fields_are_refused(machine: Machine) -> None:
    request = {
        "group": "alpha",
        "argv": ["/bin/true"],
        "cwd": "/workspace/group",
        "timeout": 5,
        "properties": {"User": "root"},
    }
    reader, writer = await asyncio.open_unix_connection(socket_of(machine))
    writer.write(json.dumps(request).encode() + b"\n")
    reply = json.loads(await reader.readline())
    writer.close()
    assert reply == {"ok": False, "error": "unknown request fields: properties"}


def ask_as_nobody(machine: Machine, groups: str) -> str:
    """The broker's reply to a describe request from uid/gid 65534 with `groups`."""
    # The broker refuses an outsider before reading, so the send may find it gone.
    script = (
        "import socket; s = socket.socket(socket.AF_UNIX); "
        "s.connect('/run/nanoclaw/sandbox.sock')\n"
        "try: s.sendall(b'{\"describe\": true}\\n')\n"
        "except BrokenPipeError: pass\n"
        "print(s.makefile().readline())"
    )
    return machine.succeed(
        f"setpriv --reuid=65534 --regid=65534 {groups} python3 -c {shlex.quote(script)}"
    )


async def test_clients_outside_the_group_are_refused(machine: Machine) -> None:
    machine.succeed("chmod 0666 /run/nanoclaw/sandbox.sock")  # even past the file mode
    try:
        reply = ask_as_nobody(machine, "--clear-groups")
    finally:
        machine.succeed("chmod 0660 /run/nanoclaw/sandbox.sock")
    assert "not in the broker's client group" in reply


async def test_a_member_by_supplementary_group_may_ask(machine: Machine) -> None:
    gid = machine.succeed("getent group nanoclaw | cut -d: -f3").strip()
    reply = json.loads(ask_as_nobody(machine, f"--groups={gid}"))
    assert reply["ok"] is True and "alpha" in reply["groups"], reply


async def test_an_agent_turn_runs_its_tool_call_in_a_unit(
    machine: Machine, homeserver: EmbeddedHomeserver, scripted_model: ScriptedModel, tmp_path: Path
) -> None:
    """Matrix message -> host -> SDK -> bash tool -> broker -> transient unit -> reply."""

    def script(request: ModelRequest) -> str | ToolCall:
        if request.tool_results:
            return "tool said: " + request.tool_results[-1]["content"]
        command = "id -u; pwd; cat /workspace/shared/readme; cat /etc/shadow"
        return ToolCall("mcp__nanoclaw__bash", {"command": command})

    world = World(homeserver, scripted_model, tmp_path)
    scripted_model.script = script
    try:
        await world.setup()
        world.groups = {"alpha": {"room_id": world.main_room, "main": True}}
        # Above the policy's 20 s bound: the host clamps it instead of every call failing.
        # The CLI here runs beside the host, outside the machine (confine_agent = false):
        # its agent unit is tests/test_agent_confinement.py's and the Quickstart test's.
        await world.start_host(
            sandbox_socket=socket_of(machine), tool_timeout_seconds=600, confine_agent=False
        )
        await world.alice.send(world.main_room, "run it")
        replies = await world.alice.wait_for_replies(world.bot.user_id, world.main_room)
    finally:
        await world.close()
    body = replies[0]["content"]["body"]
    assert body.startswith("tool said: 61001\n/workspace/group\nshared-file\n"), body
    assert "Permission denied" in body or "No such file" in body, body


def test_nanoclaw_exec_runs_a_command_as_a_tool_call_would(machine: Machine) -> None:
    command = [
        sys.executable,
        "-m",
        "nanoclaw.cli",
        "exec",
        "--socket",
        socket_of(machine),
        "--timeout",
        "10",
        "alpha",
        "--",
        "/bin/sh",
        "-c",
        "id -u; exit 4",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (4, "61001\n"), result.stderr
    assert "nanoclaw-tool-alpha-" in result.stderr


async def test_the_file_tools_work_inside_the_sandbox(machine: Machine) -> None:
    async def runner(argv: Sequence[str], stdin: bytes) -> RunResult:
        return await run_in_sandbox(socket_of(machine), "alpha", argv, timeout=10, stdin=stdin)

    tools = SandboxTools(runner)
    assert await tools.write("notes/a.md", "one\ntwo\nthree\n") == (
        "wrote /workspace/group/notes/a.md",
        False,
    )
    assert await tools.read("notes/a.md", 2, 1) == ("     2\ttwo\n", False)
    assert (await tools.edit("notes/a.md", "two", "TWO"))[1] is False
    assert "     2\tTWO" in (await tools.read("/workspace/group/notes/a.md"))[0]
    with pytest.raises(ToolInputError, match="does not occur"):
        await tools.edit("notes/a.md", "two", "2")
    assert "/workspace/group/notes/a.md" in (await tools.glob("group/**/*.md"))[0]
    assert "notes/a.md:2:TWO" in (await tools.grep("T.O", "/workspace/group"))[0]
    assert await tools.grep("absent-text", "/workspace/group") == ("no matches", False)
    assert (await tools.bash("cat /workspace/shared/readme")) == ("shared-file\n", False)
    text, error = await tools.write("/workspace/shared/new", "x")
    assert error and "Read-only" in text, "read-only mounts stay read-only for the tools"
    with pytest.raises(ToolInputError, match="outside /workspace"):
        await tools.write("/etc/motd", "x")
    text, error = await tools.fetch("http://127.0.0.1:9/")
    assert error and "[exit status" in text, "no egress: fetch cannot connect"


async def test_large_stdin_reaches_the_unit(machine: Machine) -> None:
    """A request far above asyncio's default 64 KiB line limit still goes through."""
    content = b"x" * 3_000_000
    result = await sh(machine, "wc -c", stdin=content)
    assert result.stdout.decode().strip() == "3000000"


async def test_the_gateway_follows_a_policy_changed_under_it(
    machine: Machine, tmp_path: Path
) -> None:
    """One round trip per call; when the broker restarts with another policy, the host's
    next call is refused with the new summary and made once more on it."""
    gateway = await SandboxGateway.open(socket_of(machine), 10, str(tmp_path / "egress.sock"))
    try:
        before = gateway.summary
        assert (await gateway.run("alpha", ["/bin/true"])).ok
        changed = json.loads(json.dumps(POLICY))
        changed["groups"]["web"]["egress"]["domains"] = ["example.org"]
        machine.succeed(
            f"printf %s {shlex.quote(json.dumps(changed))} > /etc/nanoclaw/policy.json"
            " && systemctl restart nanoclaw-sandboxd.service"
        )
        try:
            assert (await gateway.run("alpha", ["/bin/true"])).ok
            assert gateway.summary.generation != before.generation
            assert gateway.summary.groups["web"].domains == ("example.org",)
        finally:
            machine.succeed(
                "install -m 0644 /tmp/units/policy.json /etc/nanoclaw/policy.json"
                " && systemctl restart nanoclaw-sandboxd.service"
            )
    finally:
        await gateway.close()


async def host_in_room(
    world: World, machine: Machine, encrypted: bool = False, **settings: object
) -> None:
    """The world's host with the machine's broker (its CLI local), the bot in the main room
    and, where it is encrypted, both sides' device keys exchanged."""
    await world.setup(encrypted=encrypted)
    world.groups = {"alpha": {"room_id": world.main_room, "main": True}}
    await world.start_host(sandbox_socket=socket_of(machine), confine_agent=False, **settings)
    await world.alice.wait_joined(world.main_room, world.bot.user_id)
    await asyncio.sleep(1.0)


def file_script(request: ModelRequest, read: str = "cat {0}; ls -ln {0}") -> str | ToolCall:
    """Reads a sent file where the prompt says it is (in a tool unit), or says why not."""
    if request.tool_results:
        return "tool said: " + request.tool_results[-1]["content"]
    text = request.last_user_text
    if path := re.search(r'<attachment [^>]*path="([^"]+)"', text):
        return ToolCall("mcp__nanoclaw__bash", {"command": read.format(path[1])})
    if why := re.search(r'not-received="([^"]+)"', text):
        return "no file: " + why[1]
    return "no attachment"


def image_script(request: ModelRequest) -> str | ToolCall:
    """file_script, listing the file rather than printing it."""
    return file_script(request, read="ls -ln {0}")


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
async def test_a_file_sent_in_reaches_the_agent_in_its_inbox_and_a_tool_reads_it(
    machine: Machine,
    homeserver: EmbeddedHomeserver,
    scripted_model: ScriptedModel,
    tmp_path: Path,
    encrypted: bool,
) -> None:
    """Upload (encrypted in an encrypted room) -> host downloads, decrypts, checks -> a tool
    unit puts it in /workspace/group/inbox -> the prompt names it -> a tool reads it."""
    data = b"city,visits\nLyon,3\n"
    world = World(homeserver, scripted_model, tmp_path)
    scripted_model.script = file_script
    try:
        await host_in_room(world, machine, encrypted)
        await world.alice.send_file(world.main_room, "../visits 2026.csv", data, "text/csv")
        replies = await world.alice.wait_for_replies(world.bot.user_id, world.main_room, timeout=60)
    finally:
        await world.close()
    body = replies[0]["content"]["body"]
    assert body.startswith("tool said: city,visits\nLyon,3\n"), body
    # Its own name: cleaned, after a random prefix, in the inbox, the tool user's.
    listed = re.search(r"61001 61001 +(\d+) .* (/workspace/group/inbox/\S+)$", body, re.M)
    assert listed and int(listed[1]) == len(data), body
    assert re.fullmatch(r"/workspace/group/inbox/[0-9a-f]{8}-_visits_2026\.csv", listed[2]), body
    prompt = world.model.requests[0].last_user_text
    assert 'name="../visits 2026.csv"' in prompt and 'type="text/csv"' in prompt, prompt


async def test_a_file_too_large_is_refused_in_the_room_and_the_message_still_answered(
    machine: Machine, homeserver: EmbeddedHomeserver, scripted_model: ScriptedModel, tmp_path: Path
) -> None:
    world = World(homeserver, scripted_model, tmp_path)
    scripted_model.script = file_script
    try:
        await host_in_room(world, machine, max_attachment_bytes=1024)
        await world.alice.send_file(world.main_room, "big.bin", b"x" * 2048, "application/zip")
        replies = await world.alice.wait_for_replies(
            world.bot.user_id, world.main_room, count=2, timeout=60
        )
    finally:
        await world.close()
    notice, answer = (r["content"]["body"] for r in replies)
    assert notice == (
        "⚠️ I could not take the file big.bin: too large (2.0 KiB; the limit is 1.0 KiB)."
    ), notice
    assert answer == "no file: too large (2.0 KiB; the limit is 1.0 KiB)", answer
    machine.fail("ls /var/lib/nanoclaw/groups/alpha/inbox/*big.bin")


def png(width: int = 1, height: int = 1, noise: bool = False) -> bytes:
    """A real RGB PNG: green, or random pixels (which do not compress)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = (lambda: os.urandom(3 * width)) if noise else (lambda: b"\x00\xff\x00" * width)
    pixels = zlib.compress(b"".join(b"\x00" + row() for _ in range(height)), 1)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def jpeg_size(data: bytes) -> tuple[int, int]:
    """Width and height from a JPEG's start-of-frame segment."""
    at = 2
    while at + 9 <= len(data):
        marker, length = data[at + 1], struct.unpack(">H", data[at + 2 : at + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height
        at += 2 + length
    raise AssertionError("no start-of-frame segment")


def image_blocks(world: World) -> tuple[list[dict[str, Any]], str]:
    """The image blocks the model was sent, and the text beside them."""
    content = [
        block
        for request in world.model.requests
        for message in request.body.get("messages", [])
        if isinstance(message.get("content"), list)
        for block in message["content"]
    ]
    texts = " ".join(block.get("text", "") for block in content if block.get("type") == "text")
    return [block for block in content if block.get("type") == "image"], texts


async def test_an_image_sent_in_reaches_the_model_as_an_image_block(
    machine: Machine, homeserver: EmbeddedHomeserver, scripted_model: ScriptedModel, tmp_path: Path
) -> None:
    image = png()
    world = World(homeserver, scripted_model, tmp_path)
    scripted_model.script = lambda request: "seen"
    try:
        await host_in_room(world, machine, encrypted=True)
        await world.alice.send_file(world.main_room, "whiteboard.png", image, "image/png",
                                    msgtype="m.image")  # fmt: skip
        await world.alice.wait_for_replies(world.bot.user_id, world.main_room, timeout=60)
    finally:
        await world.close()
    # The bundled CLI passed the block on: the model's request has it, with the same bytes.
    blocks, texts = image_blocks(world)
    assert [b["source"] for b in blocks] == [
        {"type": "base64", "media_type": "image/png", "data": base64.b64encode(image).decode()}
    ], blocks
    assert 'name="whiteboard.png"' in texts and "/workspace/group/inbox/" in texts, texts


async def test_images_are_made_into_jpegs_the_model_takes_in_a_tool_unit(
    machine: Machine, homeserver: EmbeddedHomeserver, scripted_model: ScriptedModel, tmp_path: Path
) -> None:
    """A tool unit (Pillow) makes every image a JPEG, at most 1568 pixels a side and within
    the group's output limit (64 KiB here): 6 MB of PNG noise, more than the model takes,
    then a large plain one. The inbox keeps the originals."""
    noise, plain = png(2000, 1000, noise=True), png(3000, 1500)
    assert len(noise) > MAX_IMAGE_BYTES
    # What a tool could plant where the scaler runs (its working directory, the workspace):
    # a PIL that hands the model an image of its choosing. A Python there without -I
    # imports it (the control); the scaler's does not.
    workspace = "/var/lib/nanoclaw/groups/alpha"
    planted = "import sys; sys.stdout.buffer.write(b'\\xff\\xd8\\xffplanted'); sys.exit(0)"
    machine.succeed(
        f"mkdir -p {workspace} && echo {shlex.quote(planted)} > {workspace}/PIL.py",
        f"chown -R 61001:61001 {workspace}",
    )
    assert "planted" in machine.succeed(f"cd {workspace} && python3 -c 'import PIL' | cat -v")
    world = World(homeserver, scripted_model, tmp_path)
    scripted_model.script = image_script
    replies = []
    try:
        await host_in_room(world, machine, image_scaler_python="/usr/bin/python3")
        for name, image in (("noise.png", noise), ("plain.png", plain)):
            await world.alice.send_file(world.main_room, name, image, "image/png",
                                        msgtype="m.image")  # fmt: skip
            replies += await world.alice.wait_for_replies(
                world.bot.user_id, world.main_room, count=len(replies) + 1, timeout=90
            )
    finally:
        await world.close()
    # One reply each, the answer (no notice): the tool read the original, byte for byte.
    bodies = [reply["content"]["body"] for reply in replies[-2:]]
    assert f"61001 61001 {len(noise)} " in bodies[0] and f"61001 61001 {len(plain)} " in bodies[1]
    blocks, texts = image_blocks(world)
    assert "image-not-shown" not in texts, texts
    scaled = {base64.b64decode(b["source"]["data"]) for b in blocks}  # each request has all
    assert {b["source"]["media_type"] for b in blocks} == {"image/jpeg"}, blocks
    assert all(jpeg.startswith(b"\xff\xd8\xff") for jpeg in scaled)
    sizes = sorted((jpeg_size(jpeg), len(jpeg)) for jpeg in scaled)
    (small, small_bytes), (full, _) = sizes
    assert full == (1568, 784), sizes  # the plain one: the longest side the model takes
    # The noise, made smaller until it fit the output limit, its shape kept.
    assert small[0] < 1568 and abs(small[0] - 2 * small[1]) <= 2 and small_bytes <= 65536, sizes


@pytest.mark.parametrize("scaler", [None, "/usr/bin/python3"], ids=["as-sent", "scaler"])
async def test_an_image_the_model_cannot_take_is_said_in_the_room_and_kept_in_the_inbox(
    machine: Machine,
    homeserver: EmbeddedHomeserver,
    scripted_model: ScriptedModel,
    tmp_path: Path,
    scaler: str | None,
) -> None:
    """Without a scaler, a PNG over the model's bound; with one, bytes no decoder reads."""
    image = png(1400, 1000, noise=True) if scaler is None else b"not an image at all"
    world = World(homeserver, scripted_model, tmp_path)
    scripted_model.script = image_script
    try:
        settings = {} if scaler is None else {"image_scaler_python": scaler}
        await host_in_room(world, machine, **settings)
        await world.alice.send_file(world.main_room, "photo.png", image, "image/png",
                                    msgtype="m.image")  # fmt: skip
        replies = await world.alice.wait_for_replies(
            world.bot.user_id, world.main_room, count=2, timeout=90
        )
    finally:
        await world.close()
    notice, answer = (r["content"]["body"] for r in replies)
    why = (
        f"too large to show ({size(len(image))}; the model takes {size(MAX_IMAGE_BYTES)}); "
        "images are not scaled here (image_scaler_python is not set)"
        if scaler is None
        else "could not read it as an image (PIL.UnidentifiedImageError: cannot identify"
    )
    assert notice.startswith(f"⚠️ I cannot look at the image photo.png: {why}"), notice
    assert notice.endswith(". It is in my inbox."), notice
    prompt = world.model.requests[0].last_user_text
    assert image_blocks(world)[0] == [] and f'image-not-shown="{why}' in prompt, prompt
    assert f"61001 61001 {len(image)} " in answer, answer  # its tools still have it


def results_so_far(request: ModelRequest) -> list[str]:
    """The text of every tool result in the conversation, oldest first."""
    found = []
    for message in request.body.get("messages", []):
        content = message.get("content")
        for block in content if isinstance(content, list) else []:
            if block.get("type") == "tool_result":
                inner = block.get("content")
                texts = [inner] if isinstance(inner, str) else [b.get("text", "") for b in inner]
                found.append("\n".join(texts))
    return found


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
async def test_a_file_the_agent_makes_is_posted_and_the_human_gets_its_bytes(
    machine: Machine,
    homeserver: EmbeddedHomeserver,
    scripted_model: ScriptedModel,
    tmp_path: Path,
    encrypted: bool,
) -> None:
    """bash makes a file in a tool unit -> send_file reads it through another unit ->
    upload (encrypted where the room is) -> m.file -> the human downloads the same bytes."""
    made = "printf 'a,b\\n1,2\\n' > /workspace/group/report.csv"

    def script(request: ModelRequest) -> str | ToolCall:
        results = results_so_far(request)
        if not results:
            return ToolCall("mcp__nanoclaw__bash", {"command": made})
        if len(results) == 1:
            return ToolCall("mcp__nanoclaw__send_file", {"path": "/workspace/group/report.csv"})
        if len(results) == 2:
            return ToolCall("mcp__nanoclaw__send_file", {"path": "/etc/nanoclaw/policy.json"})
        return "done: " + " | ".join(results[1:])

    world = World(homeserver, scripted_model, tmp_path)
    scripted_model.script = script
    try:
        await host_in_room(world, machine, encrypted)
        await world.alice.send(world.main_room, "make me a report")
        replies = await world.alice.wait_for_replies(
            world.bot.user_id, world.main_room, count=2, timeout=60
        )
        sent, answer = (reply["content"] for reply in replies)
        assert sent["msgtype"] == "m.file" and sent["filename"] == "report.csv", sent
        assert sent["info"] == {"mimetype": "text/csv", "size": 8}, sent
        assert ("file" in sent) is encrypted and ("url" in sent) is not encrypted, sent
        assert await world.alice.download(sent) == b"a,b\n1,2\n"
    finally:
        await world.close()
    # What its units cannot read, it cannot send: the policy is hidden from them.
    done = "done: sent report.csv (8 bytes, text/csv) to alpha | "
    assert answer["body"].startswith(done), answer
    assert "cannot read /etc/nanoclaw/policy.json" in answer["body"], answer


async def test_a_file_that_cannot_be_downloaded_is_said_and_the_message_answered(
    machine: Machine, homeserver: EmbeddedHomeserver, scripted_model: ScriptedModel, tmp_path: Path
) -> None:
    world = World(homeserver, scripted_model, tmp_path)
    scripted_model.script = file_script
    try:
        await host_in_room(world, machine)
        gone = {"msgtype": "m.file", "body": "gone.pdf", "url": "mxc://localhost/nothing-here",
                "info": {"mimetype": "application/pdf", "size": 100}}  # fmt: skip
        await world.alice.client.room_send(world.main_room, "m.room.message", gone)
        replies = await world.alice.wait_for_replies(
            world.bot.user_id, world.main_room, count=2, timeout=60
        )
    finally:
        await world.close()
    notice, answer = (r["content"]["body"] for r in replies)
    assert notice.startswith("⚠️ I could not take the file gone.pdf: could not download it"), notice
    assert answer.startswith("no file: could not download it"), answer


# --- subagents -----------------------------------------------------------------------

SUBAGENTS = {
    "counter": {"description": "Counts.", "prompt": "You are COUNTER.", "tools": ["bash"]},
    "reader": {"description": "Reads.", "prompt": "You are READER.", "tools": ["bash"]},
}
# Each call says which unit it ran in, and tries to leave a mark in the workspace.
PROBE = (
    "touch /workspace/group/{0}-was-here && echo {0}-wrote; "
    "grep -o 'nanoclaw-tool-[^/]*' /proc/self/cgroup"
)


def swarm_script(request: ModelRequest) -> str | ToolCall | list[str | ToolCall]:
    """The main agent starts both subagents at once, then runs the probe itself."""
    for name in ("counter", "reader"):
        if f"You are {name.upper()}." in request.system_text:
            if request.tool_results:
                return f"{name} said: " + request.tool_results[-1]["content"]
            return ToolCall("mcp__nanoclaw__bash", {"command": PROBE.format(name)})
    results = results_so_far(request)
    if not results:
        start = {"description": "probe", "prompt": "probe the sandbox"}
        return [
            ToolCall("Agent", {**start, "subagent_type": "counter"}),
            ToolCall("Agent", {**start, "subagent_type": "reader"}),
        ]
    if len(results) == 2:
        return ToolCall("mcp__nanoclaw__bash", {"command": PROBE.format("main")})
    return "swarm:\n" + "\n".join(results)


async def test_subagents_run_their_tool_calls_in_units_of_their_own_narrowed_by_the_policy(
    machine: Machine, homeserver: EmbeddedHomeserver, scripted_model: ScriptedModel, tmp_path: Path
) -> None:
    """Two subagents started at once, each bash call in its own tool unit of the group; the
    readonly one cannot write the workspace, the main agent (the control) can; one reply."""
    machine.succeed("rm -f /var/lib/nanoclaw/groups/alpha/*-was-here")
    world = World(homeserver, scripted_model, tmp_path)
    scripted_model.script = swarm_script
    try:
        await world.setup()
        world.groups = {"alpha": {"room_id": world.main_room, "main": True, "subagents": SUBAGENTS}}
        await world.start_host(sandbox_socket=socket_of(machine), confine_agent=False)
        await world.alice.wait_joined(world.main_room, world.bot.user_id)
        await world.alice.send(world.main_room, "probe with your subagents")
        replies = await world.alice.wait_for_replies(world.bot.user_id, world.main_room, timeout=90)
    finally:
        await world.close()
    body = replies[0]["content"]["body"]
    assert body.startswith("swarm:"), body
    assert "counter said: counter-wrote" in body, body
    assert "reader said: " in body and "reader-wrote" not in body, body
    assert "Read-only file system" in body, body
    assert "main-wrote" in body, body
    units = set(re.findall(r"nanoclaw-tool-alpha-[0-9a-f]+\.service", body))
    assert len(units) == 3, body  # three calls, three units
    marks = machine.succeed("ls /var/lib/nanoclaw/groups/alpha").split()
    assert "counter-was-here" in marks and "main-was-here" in marks, marks
    assert "reader-was-here" not in marks, marks
    # The audit trail names the agent of each call, with the unit it ran in.
    config = world.config_path(sandbox_socket=socket_of(machine), confine_agent=False)
    ran = {(row["agent"], row["unit"]) for row in audit_of(config, "alpha")}
    assert {agent for agent, _ in ran} == {"counter", "reader", "main"}, ran
    assert {unit for _, unit in ran} == units, ran


async def test_the_broker_refuses_a_subagent_the_policy_does_not_declare(machine: Machine) -> None:
    with pytest.raises(SandboxError, match="subagent 'stranger' is not declared for group 'alpha'"):
        await run_in_sandbox(socket_of(machine), "alpha", ["/bin/true"], agent="stranger")
    assert (await run_in_sandbox(socket_of(machine), "alpha", ["/bin/true"], agent="counter")).ok


def audit_of(config: Path, group: str) -> list[dict[str, Any]]:
    """`nanoclaw audit GROUP --json` of the last hour, as an operator would run it."""
    command = [sys.executable, "-m", "nanoclaw.cli", "audit", group, "--json", "--since", "1h"]
    listed = subprocess.run(
        [*command, "--config", str(config)], capture_output=True, text=True, timeout=60, check=True
    )
    return [json.loads(line) for line in listed.stdout.splitlines()]


async def test_every_tool_call_is_in_the_audit_trail_as_the_broker_ran_it(
    machine: Machine, homeserver: EmbeddedHomeserver, scripted_model: ScriptedModel, tmp_path: Path
) -> None:
    """Two bash calls (one cut at the output limit) and a refused read, through the real
    host, SDK and broker; `nanoclaw audit --json` on the data directory names the units
    the broker started, with the digest it logged for each."""
    calls = [
        ("bash", {"command": "echo hi; echo oops >&2; exit 3"}),
        ("bash", {"command": "head -c 100000 /dev/zero"}),
        ("read", {"path": "/etc/passwd"}),
    ]

    def script(request: ModelRequest) -> str | ToolCall:
        done = len(results_so_far(request))
        if done < len(calls):
            return ToolCall(f"mcp__nanoclaw__{calls[done][0]}", calls[done][1])
        return "done"

    world = World(homeserver, scripted_model, tmp_path)
    scripted_model.script = script
    try:
        await host_in_room(world, machine)
        await world.alice.send(world.main_room, "audit me")
        await world.alice.wait_for_replies(world.bot.user_id, world.main_room, timeout=60)
    finally:
        await world.close()
    first, cut, refused = audit_of(world.config_path(), "alpha")
    started = machine.succeed("journalctl -u nanoclaw-sandboxd.service -o cat | grep started")
    for row, (tool, args) in zip((first, cut, refused), calls, strict=True):
        assert (row["group"], row["agent"], row["tool"]) == ("alpha", "main", tool), row
        assert row["arguments"] == args and row["session_id"], row
    for row in (first, cut):
        assert re.fullmatch(r"nanoclaw-tool-alpha-[0-9a-f]{16}\.service", row["unit"]), row
        assert re.fullmatch(r"[0-9a-f]{64}", row["properties_sha256"]), row
        assert f"started {row['unit']} (properties sha256 {row['properties_sha256']})" in started
    assert (first["outcome"], first["exit_status"], first["signal"]) == ("exit-code", 3, None)
    assert (first["stdout_bytes"], first["stderr_bytes"], first["truncated"]) == (3, 5, False)
    assert (cut["outcome"], cut["exit_status"], cut["truncated"]) == ("success", 0, True)
    assert cut["stdout_bytes"] == LIMITS["output_bytes"], cut
    assert refused["outcome"] == "refused" and refused["unit"] is None, refused
    assert "/etc/passwd is outside /workspace" in refused["reason"], refused
