"""A subagent's tool units: the group's, narrowed by what the policy file declares for it
and never widened; a request naming a subagent the policy does not declare gets no unit."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from nanoclaw.broker.agent_unit import compile_agent_unit
from nanoclaw.broker.compiler import compile_unit
from nanoclaw.broker.policy import Policy
from nanoclaw.broker.policy_file import parse_policy
from nanoclaw.broker.protocol import RunRequest
from nanoclaw.broker.tool_request import RequestError
from tests.support.compiling import TOKEN, UNIT_ID, props, refused, request
from tests.support.policies import FULL, POLICY_PATH, at, group_with
from tests.support.policies import refused as policy_refused
from tests.test_agent_unit import CLI, agent, sdk_argv

SUBAGENTS = {
    "$comment": "subagents",
    "reader": {"readonly": True},
    "offline": {"no_egress": True},
    "plain": {},
}


@pytest.fixture(name="policy", scope="module")
def swarm_policy() -> Policy:
    data = at(FULL, ("groups", "main", "subagents"), SUBAGENTS)
    return parse_policy(at(data, ("groups", "family", "subagents"), {"reader": {"readonly": True}}),
                        POLICY_PATH)  # fmt: skip


def unit(policy: Policy, group: str, agent: str, **changes: Any) -> dict[str, Any]:
    return props(compile_unit(policy, request(group, agent=agent, **changes), UNIT_ID))


def test_a_readonly_subagents_unit_has_no_writable_bind(policy: Policy) -> None:
    main = unit(policy, "family", "main")
    reader = unit(policy, "family", "reader")
    assert [b[1] for b in main["BindPaths"]] == ["/workspace/group", "/workspace/inbox"]
    assert "BindPaths" not in reader
    read_only = {b[1] for b in reader["BindReadOnlyPaths"]}
    assert {"/workspace/group", "/workspace/inbox", "/workspace/photos"} <= read_only
    assert reader["Description"] == "nanoclaw tool call for group family (subagent reader)"
    # Everything else is the group's own.
    same = {k: v for k, v in main.items() if k not in ("BindPaths", "BindReadOnlyPaths")}
    assert same | {"Description": reader["Description"]} == {
        k: v for k, v in reader.items() if k != "BindReadOnlyPaths"
    }


def test_a_subagent_without_egress_gets_a_network_of_its_own(policy: Policy) -> None:
    main = unit(policy, "main", "main", proxy_token=TOKEN)
    offline = unit(policy, "main", "offline", proxy_token=TOKEN)
    assert main["JoinsNamespaceOf"] and any("HTTP_PROXY=" in e for e in main["Environment"])
    assert "JoinsNamespaceOf" not in offline
    assert offline["PrivateNetwork"] is True
    assert offline["RestrictAddressFamilies"] == (True, ("AF_UNIX",))
    assert not any("PROXY" in entry for entry in offline["Environment"])
    assert offline["BindPaths"] == main["BindPaths"]  # writable as the group's


def test_a_subagent_without_narrowing_gets_the_groups_unit(policy: Policy) -> None:
    main = unit(policy, "main", "main")
    plain = unit(policy, "main", "plain")
    assert {**plain, "Description": main["Description"]} == main


@pytest.mark.parametrize(
    ("group", "agent"), [("family", "offline"), ("ops-team", "reader"), ("main", "fork")]
)
def test_a_subagent_the_policy_does_not_declare_for_the_group_is_refused(
    policy: Policy, group: str, agent: str
) -> None:
    refused(policy, f"subagent {agent!r} is not declared for group {group!r}", group, agent=agent)


@pytest.mark.parametrize("name", ["main", "fork", "general-purpose", "Upper", "-x", "a" * 33])
def test_reserved_and_malformed_subagent_names_are_refused(name: str) -> None:
    policy_refused(group_with(subagents={name: {}}), f"groups.g.subagents.{name}", "must match")


def test_a_subagent_may_only_narrow() -> None:
    policy_refused(
        group_with(subagents={"s": {"writable": True}}), "groups.g.subagents.s.writable", "unknown"
    )
    policy_refused(
        group_with(subagents={"s": {"readonly": "yes"}}), "groups.g.subagents.s.readonly"
    )
    policy_refused(group_with(subagents=["s"]), "groups.g.subagents", "must be a table")


def test_the_wire_names_a_subagent_apart_from_the_agent_unit_request() -> None:
    plain = RunRequest("g", ("/bin/true",), "/workspace/group", 5)
    named = dataclasses.replace(plain, agent="reader")
    assert "subagent" not in plain.to_wire() and "agent" not in named.to_wire()
    assert named.to_wire()["subagent"] == "reader"
    assert RunRequest.from_wire(named.to_wire()) == named
    assert RunRequest.from_wire(plain.to_wire()).agent == "main"


def test_only_a_group_with_subagents_may_offer_its_cli_the_subagent_tool(policy: Policy) -> None:
    swarm = sdk_argv(tools=["Agent"], allowed_tools=["mcp__nanoclaw__bash", "Agent"])
    request = agent("family", argv=swarm)
    assert compile_agent_unit(policy, request, CLI, UNIT_ID).name.startswith("nanoclaw-agent-")
    lone = parse_policy(FULL, POLICY_PATH)  # the same group, without subagents
    with pytest.raises(RequestError, match="--tools may not be 'Agent'"):
        compile_agent_unit(lone, request, CLI, UNIT_ID)
    for tools in (["Agent", "Bash"], ["Task"]):
        with pytest.raises(RequestError, match="--tools may not be"):
            compile_agent_unit(policy, agent("family", argv=sdk_argv(tools=tools)), CLI, UNIT_ID)
