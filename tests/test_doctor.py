"""`nanoclaw doctor` against a real Synapse, the scripted model and the broker's own code.

The broker serves describe requests from its real handler (no systemd is needed for
those), with the start-up check results a test chooses.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from nanoclaw.broker.policy_file import parse_policy
from nanoclaw.broker.protocol import Enforcement
from nanoclaw.broker.sandboxd import Broker, refusals
from tests.support.host_process import write_secret
from tests.support.scripted_model import ScriptedModel
from tests.support.world import API_KEY, World

pytestmark = pytest.mark.integration

# (IP filtering enforced, the socket-proxyd found, whether a group has egress cidrs,
# whether the groups have agent units)
BrokerFactory = Callable[..., AbstractAsyncContextManager[Path]]


@pytest.fixture
def broker(tmp_path: Path) -> BrokerFactory:
    @asynccontextmanager
    async def serve(
        ip_filtering: bool, socket_proxyd: str | None, cidr_group: bool = True, agents: bool = True
    ) -> AsyncIterator[Path]:
        groups: dict[str, Any] = {
            "main": {"uid": 61000, "main": True},
            "web": {"uid": 61001, "egress": {"domains": ["example.org"]}},
        }
        if cidr_group:
            groups["lan"] = {"uid": 61002, "egress": {"cidrs": ["192.0.2.0/24"]}}
        for group in groups.values() if agents else ():
            group["agent"] = {"uid": group["uid"] + 1000}
        policy = parse_policy(
            {"version": 1, "data_dir": str(tmp_path / "data"), "groups": groups},
            str(tmp_path / "policy.json"),
        )
        path = tmp_path / "sandbox.sock"
        refused = refusals(policy, ip_filtering, socket_proxyd)
        enforced = Enforcement(ip_filtering, pid_isolation=False, refused=refused)
        # Describe and usage requests need neither systemd nor the relays.
        handler = Broker(policy, None, os.getgid(), enforced, None, None)  # type: ignore[arg-type]
        server = await asyncio.start_unix_server(handler.handle, str(path))
        async with server:
            yield path

    return serve


@pytest.fixture
async def world(homeserver, scripted_model: ScriptedModel, tmp_path: Path) -> AsyncIterator[World]:
    w = World(homeserver, scripted_model, tmp_path)
    await w.setup()
    scripted_model.api_key = API_KEY
    (tmp_path / "data").mkdir(mode=0o700)
    yield w
    await w.close()


async def doctor(
    world: World, env: dict[str, str] | None = None, **overrides: Any
) -> tuple[int, dict[str, list[str]]]:
    """Run `nanoclaw doctor`; its exit status and its lines by check name."""
    config = world.config_path(**overrides)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nanoclaw.cli",
        "doctor",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), 60)
    checks: dict[str, list[str]] = {}
    name = ""
    for line in stdout.decode().splitlines():
        if line.startswith(("ok ", "FAIL ")):
            name = line[6:19].strip()
            checks[name] = [line]
        else:
            checks[name].append(line.strip())
    assert process.returncode is not None
    return process.returncode, checks


def failed(checks: dict[str, list[str]]) -> set[str]:
    return {name for name, lines in checks.items() if lines[0].startswith("FAIL")}


async def test_everything_in_order_passes(
    world: World, broker: BrokerFactory, tmp_path: Path
) -> None:
    workspace = tmp_path / "data" / "groups" / "web"
    workspace.mkdir(parents=True)
    (workspace / "notes").write_bytes(b"x" * 8192)
    (workspace / "elsewhere").symlink_to("/usr")  # counted as a link, never followed
    async with broker(True, "/usr/lib/systemd/systemd-socket-proxyd") as socket:
        status, checks = await doctor(world, sandbox_socket=str(socket))
    assert failed(checks) == set(), checks
    assert status == 0
    assert list(checks) == [
        "config",
        "homeserver",
        "matrix token",
        "broker",
        "agent units",
        "ip filtering",
        "pid isolation",
        "workspaces",
        "model",
        "data dir",
        "waiting keys",
    ]
    assert world.bot.user_id in checks["matrix token"][0]
    assert "3 groups in the policy" in checks["broker"][0]
    assert "IPAddressDeny= holds" in checks["ip filtering"][0]
    assert "each group's CLI runs in a unit of its own" in checks["agent units"][0]
    assert "not available (systemd before 257)" in checks["pid isolation"][0]
    shown = checks["workspaces"][0]
    assert "main 0 bytes, web 8.0 KiB, lan 0 bytes;" in shown and "no per-group bound" in shown, (
        shown
    )
    assert "the key is accepted" in checks["model"][0]


async def test_each_failure_is_named_with_what_to_do(
    world: World, broker: BrokerFactory, tmp_path: Path
) -> None:
    world.settings["matrix"]["access_token_file"] = str(
        write_secret(tmp_path / "secrets", "stale-token", "syt_not_a_valid_token")
    )
    world.model.api_key = "sk-ant-another-key"
    (tmp_path / "data").chmod(0o777)
    async with broker(False, None) as socket:
        status, checks = await doctor(world, sandbox_socket=str(socket))
    assert status == 1
    assert failed(checks) == {"matrix token", "group lan", "group web", "model", "data dir"}
    assert "M_UNKNOWN_TOKEN" in checks["matrix token"][0]
    assert "IP filtering, which this machine does not enforce" in checks["group lan"][0]
    assert "cgroup BPF" in checks["group lan"][1]
    assert "systemd-socket-proxyd" in checks["group web"][0]
    assert "socket-proxyd" in checks["group web"][1]
    assert "the key is refused (HTTP 401)" in checks["model"][0]
    assert "mode 0777" in checks["data dir"][0]
    for name in failed(checks):
        assert checks[name][1].startswith("fix: "), name
    assert API_KEY not in str(checks) and "syt_not_a_valid_token" not in str(checks)


async def test_a_subscription_token_is_checked_and_its_expiry_said(
    world: World, tmp_path: Path
) -> None:
    token = "sk-ant-oat01-doctor-0123456789"
    secrets = tmp_path / "secrets"
    world.model.oauth_token = token
    world.settings["model"].pop("api_key_file")
    world.settings["model"]["oauth_token_file"] = str(write_secret(secrets, "token", token))
    status, checks = await doctor(world)
    assert failed(checks) == set() and status == 0, checks
    assert "the subscription token is accepted" in checks["model"][0]

    world.model.oauth_token = "sk-ant-oat01-a-renewed-one"  # ours has expired
    status, checks = await doctor(world)
    assert status == 1 and failed(checks) == {"model"}, checks
    shown, fix = checks["model"]
    assert "the subscription token is refused (HTTP 401): OAuth token has expired" in shown
    assert "claude setup-token" in fix and "systemctl restart nanoclaw" in fix
    assert token not in str(checks)

    write_secret(secrets, "token", API_KEY)  # a key where the token belongs
    status, checks = await doctor(world)
    assert failed(checks) == {"model"}, checks
    assert "the subscription token does not start with sk-ant-oat" in checks["model"][0]
    assert "model.api_key_file" in checks["model"][1]

    write_secret(secrets, "token", token)  # and the token where a key belongs
    world.settings["model"]["api_key_file"] = world.settings["model"].pop("oauth_token_file")
    status, checks = await doctor(world)
    assert failed(checks) == {"model"}, checks
    assert "the API key is a subscription token" in checks["model"][0]
    assert "model.oauth_token_file" in checks["model"][1]
    assert API_KEY not in str(checks) and token not in str(checks)


async def test_what_the_machine_cannot_do_is_said_once_and_fails_nothing_unneeded(
    world: World, broker: BrokerFactory
) -> None:
    """Without cgroup BPF (the Quickstart's machine) and no group with cidrs: said, not failed."""
    async with broker(False, "/usr/lib/systemd/systemd-socket-proxyd", False) as socket:
        status, checks = await doctor(world, sandbox_socket=str(socket))
    assert failed(checks) == set(), checks
    assert status == 0
    text = str(checks)
    assert text.count("no cgroup BPF") == 1, text
    assert "a group with egress.cidrs is refused" in checks["ip filtering"][0]


async def test_what_cannot_be_reached_fails(world: World, tmp_path: Path) -> None:
    world.settings["matrix"]["homeserver"] = "http://127.0.0.1:1"
    world.settings["model"]["base_url"] = "http://127.0.0.1:1"
    status, checks = await doctor(
        world, sandbox_socket=str(tmp_path / "nothing.sock"), data_dir=str(tmp_path / "none")
    )
    assert status == 1
    assert failed(checks) == {"homeserver", "broker", "model", "data dir"}
    assert "unreachable" in checks["homeserver"][0]
    assert "nanoclaw-sandboxd.socket" in checks["broker"][1]
    assert "http://127.0.0.1:1: unreachable" in checks["model"][0]
    assert "does not exist" in checks["data dir"][0]


async def test_a_bad_config_stops_at_the_first_check(world: World, tmp_path: Path) -> None:
    status, checks = await doctor(world, max_concurrent_runs=0)
    assert status == 1 and list(checks) == ["config"]
    assert "max_concurrent_runs" in checks["config"][0]

    world.settings["model"].pop("api_key_file")
    world.settings["model"]["api_key_credential"] = "anthropic-key"
    status, checks = await doctor(world, env={"CREDENTIALS_DIRECTORY": ""})
    assert status == 1 and "CREDENTIALS_DIRECTORY" in checks["config"][1]
    # Pointed at the secrets, as the fix says, it passes.
    credentials = str(tmp_path / "secrets")
    status, checks = await doctor(world, env={"CREDENTIALS_DIRECTORY": credentials})
    assert failed(checks) == set() and status == 0, checks


@pytest.mark.parametrize(
    ("agents", "overrides", "shown", "fix"),
    [
        (False, {}, "no agent unit in the policy for main", "agent.uid"),
        (True, {"confine_agent": False}, "as the host's user", "confine_agent = true"),
    ],
)
async def test_an_agent_runtime_outside_a_unit_of_its_own_fails(
    world: World,
    broker: BrokerFactory,
    agents: bool,
    overrides: dict[str, Any],
    shown: str,
    fix: str,
) -> None:
    async with broker(True, "/usr/lib/systemd/systemd-socket-proxyd", agents=agents) as socket:
        status, checks = await doctor(world, sandbox_socket=str(socket), **overrides)
    assert status == 1 and failed(checks) == {"agent units"}, checks
    assert shown in checks["agent units"][0] and fix in checks["agent units"][1]
