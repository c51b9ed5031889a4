"""The agent unit: what a group's CLI runs in, from the policy alone, and what a request may
not add. The machine tests (tests/test_agent_confinement.py) start it for real."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import ClaudeAgentOptions, create_sdk_mcp_server, tool

from nanoclaw.broker.agent_unit import (
    FLAGS,
    STATE_ROOT,
    check_argv,
    compile_agent_unit,
)
from nanoclaw.broker.compiler import MODEL, SIGNATURES, compile_unit
from nanoclaw.broker.policy import Policy
from nanoclaw.broker.protocol import AgentRequest
from nanoclaw.broker.tool_request import RequestError
from nanoclaw.host.confined_cli import SDK_ENVIRONMENT, cli_arguments
from tests.support.compiling import (
    UNIT_ID,
    conforms,
    full_policy,  # noqa: F401 -- the `policy` fixture
    props,
    request,
)
from tests.support.policies import FULL, POLICY_PATH

CLI = "/opt/nanoclaw/venv/lib/python3/site-packages/claude_agent_sdk/_bundled/claude"
KEY = "sk-nanoclaw-" + "a" * 43


@tool("bash", "run", {"command": str})
async def _bash(args: dict[str, Any]) -> dict[str, Any]:
    return {}


def sdk_argv(**changes: Any) -> tuple[str, ...]:
    """What the host's SDK passes for a session like nanoclaw's (nanoclaw.host.agent)."""
    options = ClaudeAgentOptions(
        tools=[],
        mcp_servers={"nanoclaw": create_sdk_mcp_server("nanoclaw", tools=[_bash])},
        allowed_tools=["mcp__nanoclaw__bash"],
        strict_mcp_config=True,
        setting_sources=[],
        system_prompt="You are Andy.\nBe brief.",
        model="claude-sonnet-4-5",
        resume="5b1e0c5e-0000-4000-8000-000000000000",
    )
    for name, value in changes.items():
        setattr(options, name, value)
    return cli_arguments(options)


def agent(group: str = "family", **changes: Any) -> AgentRequest:
    env = {"ANTHROPIC_API_KEY": KEY, **SDK_ENVIRONMENT}
    base: dict[str, Any] = {"group": group, "argv": sdk_argv(), "env": env}
    return AgentRequest(**(base | changes))


def compiled_agent(policy: Policy, group: str = "family", **changes: Any) -> dict[str, Any]:
    return props(compile_agent_unit(policy, agent(group, **changes), CLI, UNIT_ID))


def refused(policy: Policy, fragment: str, **changes: Any) -> None:
    with pytest.raises(RequestError) as info:
        compile_agent_unit(policy, agent(**changes), CLI, UNIT_ID)
    assert fragment in str(info.value), str(info.value)


def test_the_agent_unit_runs_the_cli_as_the_agent_user_in_the_groups_slice(
    policy: Policy,
) -> None:
    plan = compile_agent_unit(policy, agent(), CLI, UNIT_ID)
    unit = props(plan)
    assert plan.name == "nanoclaw-agent-family-0123456789abcdef.service"
    assert unit["Slice"] == plan.slice == "nanoclaw-tools-family.slice"
    assert unit["ExecStart"] == ((CLI, (CLI, *sdk_argv()), False),)
    # Its own user: neither the tool user (61001) nor root nor the host's.
    assert unit["User"] == unit["Group"] == "62001"
    assert unit["WorkingDirectory"] == f"{STATE_ROOT}/family"
    assert unit["StateDirectory"] == ("nanoclaw-agent/family",)
    assert unit["StateDirectoryMode"] == 0o700


def test_its_bounds_come_from_the_policys_agent_section(policy: Policy) -> None:
    main, family = compiled_agent(policy, "main"), compiled_agent(policy)
    assert (main["MemoryMax"], main["TasksMax"], main["CPUWeight"]) == (2 * 1024**3, 512, 50)
    assert (family["MemoryMax"], family["TasksMax"], family["CPUWeight"]) == (2 * 1024**3, 256, 50)
    assert family["MemorySwapMax"] == 0


def test_it_writes_only_its_state_and_sees_nothing_the_tools_may_not(policy: Policy) -> None:
    unit = compiled_agent(policy)
    tool = props(compile_unit(policy, request(), UNIT_ID))
    assert unit["ProtectSystem"] == "strict" and unit["ProtectHome"] == "yes"
    assert unit["BindPaths"] == ((f"{STATE_ROOT}/family",) * 2 + (False, 0),)
    assert "BindReadOnlyPaths" not in unit  # no workspace, no global memory, no mounts
    # Everything a tool unit hides (the data directory with the database, the crypto
    # store and every transcript of the host; the policy; mount sources), and /run empty:
    # no credentials directory, D-Bus, broker socket or proxy socket.
    outside_var_lib = [
        p for p in tool["InaccessiblePaths"] if not p.lstrip("-").startswith("/var/lib")
    ]
    assert unit["InaccessiblePaths"] == tuple(outside_var_lib)
    assert "-/srv/photos" in outside_var_lib and POLICY_PATH in outside_var_lib
    assert ("/run", "mode=0755") in unit["TemporaryFileSystem"]
    assert ("/var/lib", "mode=0755") in unit["TemporaryFileSystem"]  # so the data dir too
    for name in ("SystemCallFilter", "NoNewPrivileges", "CapabilityBoundingSet", "ProtectProc"):
        assert unit[name] == tool[name], name
    assert "MemoryDenyWriteExecute" not in unit  # the runtime's JIT needs it off


def test_its_only_network_is_the_model_relays(policy: Policy) -> None:
    unit = compiled_agent(policy, "main")  # main's tools have domains: not its agent
    assert unit["PrivateNetwork"] is True
    assert unit["JoinsNamespaceOf"] == (MODEL.socket_name("main"),)
    assert unit["RestrictAddressFamilies"] == (True, ("AF_UNIX", "AF_INET"))
    assert f"ANTHROPIC_BASE_URL=http://127.0.0.1:{MODEL.port}" in unit["Environment"]
    assert "IPAddressAllow" not in unit


def test_the_environment_is_the_brokers_plus_the_allowed_names(policy: Policy) -> None:
    env = dict(line.split("=", 1) for line in compiled_agent(policy)["Environment"])
    assert env["HOME"] == f"{STATE_ROOT}/family"
    assert env["CLAUDE_CONFIG_DIR"] == f"{STATE_ROOT}/family/claude"
    assert env["ANTHROPIC_API_KEY"] == KEY
    assert env["CLAUDE_CODE_ENTRYPOINT"] == "sdk-py"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"ANTHROPIC_BASE_URL": "http://evil.example"}, "variable 'ANTHROPIC_BASE_URL'"),
        ({"HOME": "/var/lib/nanoclaw"}, "variable 'HOME'"),
        ({"LD_PRELOAD": "/tmp/x.so"}, "variable 'LD_PRELOAD'"),
        ({"NODE_OPTIONS": "--require /tmp/x"}, "variable 'NODE_OPTIONS'"),
        ({"ANTHROPIC_API_KEY": "sk-ant-real-key"}, "ANTHROPIC_API_KEY may not be"),
        ({"CLAUDE_CODE_MAX_RETRIES": "0\nX=1"}, "may not be"),
    ],
)
def test_an_environment_outside_the_allow_list_is_refused(
    policy: Policy, env: dict[str, str], fragment: str
) -> None:
    refused(policy, fragment, env={"ANTHROPIC_API_KEY": KEY, **env})


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (("--settings", '{"hooks": {}}'), "'--settings'"),
        (("--add-dir=/var/lib/nanoclaw",), "'--add-dir'"),
        (("--dangerously-skip-permissions",), "'--dangerously-skip-permissions'"),
        (("--plugin-dir", "/tmp/p"), "'--plugin-dir'"),
        (("--tools=Bash",), "--tools may not be 'Bash'"),
        (("--setting-sources=project",), "--setting-sources may not be"),
        (("--allowedTools=Bash",), "--allowedTools may not be"),
        (("--verbose=yes",), "--verbose takes no value"),
        (("--model",), "--model needs a value"),
        (
            ("--mcp-config", json.dumps({"mcpServers": {"x": {"command": "/bin/sh"}}})),
            "--mcp-config may not be",
        ),
        (("-p", "hello"), "'-p'"),
    ],
)
def test_cli_arguments_outside_the_allow_list_are_refused(
    policy: Policy, extra: tuple[str, ...], fragment: str
) -> None:
    refused(policy, fragment, argv=(*sdk_argv(), *extra))


def test_every_argument_the_sdk_passes_for_nanoclaw_is_allowed() -> None:
    argv = sdk_argv()
    assert check_argv(argv) == argv
    named = {arg.split("=")[0] for arg in argv if arg.startswith("--")}
    assert named <= set(FLAGS), named - set(FLAGS)


def test_a_group_without_an_agent_section_gets_no_agent_unit(policy: Policy) -> None:
    refused(policy, "give it groups.ops-team.agent.uid", group="ops-team")
    refused(policy, "'nobody' is not in the sandbox policy", group="nobody")


def test_every_property_fits_its_signature(policy: Policy) -> None:
    plan = compile_agent_unit(policy, agent(), CLI, UNIT_ID, private_pids=True)
    for name, signature, value in plan.properties:
        assert SIGNATURES[name] == signature, name
        assert conforms(signature, value), (name, value)
    assert props(plan)["PrivatePIDs"] is True


@pytest.mark.parametrize("cli", ["claude", "/bin/cl\naude"])
def test_the_cli_path_is_the_brokers_and_checked(policy: Policy, cli: str) -> None:
    with pytest.raises(ValueError, match="absolute path"):
        compile_agent_unit(policy, agent(), cli, UNIT_ID)


def explained(policy_file: Path, group: str) -> str:
    command = ["policy", "explain", group, "--policy", str(policy_file)]
    done = subprocess.run(
        [sys.executable, "-m", "nanoclaw.cli", *command], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_policy_explain_shows_the_agent_unit_after_the_tool_unit(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(FULL))
    tool, agent_unit = explained(policy_file, "main").split("\n\n", 1)
    assert tool.startswith("# nanoclaw-tool-main-") and "User=61000" in tool
    assert agent_unit.startswith("# nanoclaw-agent-main-0000000000000000.service")
    for line in (
        "User=62000",
        "MemoryMax=2147483648",
        "CPUWeight=50",
        "StateDirectoryMode=0700",
        "PrivateNetwork=yes",
        "JoinsNamespaceOf=nanoclaw-model-main.socket",
    ):
        assert f"\n{line}\n" in agent_unit, line
    assert "nanoclaw-agent-" not in explained(policy_file, "ops-team")
