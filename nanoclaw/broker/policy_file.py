"""Reading the sandbox policy file: JSON, written by the NixOS module as root.

Everything is checked here, once, with errors that name the dotted key like the
configuration's (`ConfigError`): unknown keys, types and ranges, and the rules that keep a
mount from exposing what the sandbox hides (the data directory, protected paths, the
policy file itself, credentials). The result is a `nanoclaw.broker.policy.Policy`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from nanoclaw.broker.config_reader import (
    CONTROL_CHARACTERS,
    ConfigError,
    Table,
    describe,
    key_part,
    parse_json_object,
    read_text,
)
from nanoclaw.broker.policy import (
    AGENT_LIMIT_RANGES,
    DEFAULT_BLOCKED_PATTERNS,
    DEFAULT_LIMITS,
    GLOBAL_SANDBOX,
    GROUP_PATTERN,
    GROUP_SANDBOX,
    LIMIT_RANGES,
    MAX_UID,
    MIN_UID,
    NOBODY_UID,
    RESERVED_GROUPS,
    RESERVED_SANDBOX,
    RESERVED_SUBAGENTS,
    SCRATCH,
    SUBAGENT_PATTERN,
    WORKSPACE,
    AgentPolicy,
    GroupPolicy,
    Limits,
    Mount,
    Policy,
    Subagent,
    absolute_path,
    is_text,
    path_relation,
)
from nanoclaw.broker.policy_egress import egress
from nanoclaw.broker.policy_tables import COMMENT, comment, listed, paths, read_table, strings

_TOP_KEYS = (
    "version",
    "data_dir",
    "protected_paths",
    "blocked_patterns",
    "defaults",
    "groups",
)

_GROUP_KEYS = (
    "uid",
    "main",
    "mounts",
    "egress",
    "read_only_paths",
    "path",
    "empty_paths",
    "limits",
    "agent",
    "subagents",
)
_SUBAGENT_KEYS = ("readonly", "no_egress")

_MOUNT_KEYS = ("host", "sandbox", "writable", "protect")


_PATTERN_WHAT = "one path component: 1 to 255 characters, no '/' or control characters"


def load_policy(path: Path) -> Policy:
    """Read and validate the policy file; its own path is protected."""
    data = parse_json_object(read_text(path), path)
    return parse_policy(data, os.path.abspath(path))


def parse_policy(data: Mapping[str, Any], policy_path: str) -> Policy:
    """Validate an already parsed policy; `policy_path` is the file's absolute path."""
    if not os.path.isabs(policy_path):
        raise ValueError(f"the policy path must be absolute, not {policy_path!r}")
    if isinstance(data, Mapping) and "proxy" in data:  # earlier versions: say what became of it
        raise ConfigError(
            "proxy",
            "is no longer used: units of groups with domains reach the egress proxy through "
            "a relay in their own network namespace; remove the key",
        )
    top = read_table(data, "", _TOP_KEYS)
    for name in ("version", "data_dir"):
        if name not in top.data:
            raise ConfigError(name, "is required")
    version = top.data["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version != 1:
        raise ConfigError("version", f"must be 1, the only policy format, not {describe(version)}")
    data_dir = absolute_path(top.data["data_dir"], "data_dir")
    if data_dir == "/":
        raise ConfigError("data_dir", "must not be / (it is hidden from every tool)")
    protected = paths(top, "protected_paths")
    for index, path in enumerate(protected):
        if path == "/":
            raise ConfigError(f"protected_paths[{index}]", "must not be / (it would hide all)")
    extra_patterns = strings(top, "blocked_patterns", _PATTERN_WHAT, _is_pattern)
    # Without groups first: their host paths are checked against this policy's rules.
    policy = Policy(
        data_dir=data_dir,
        protected_paths=protected,
        blocked_patterns=tuple(dict.fromkeys(DEFAULT_BLOCKED_PATTERNS + extra_patterns)),
        groups=MappingProxyType({}),
        policy_path=os.path.normpath(policy_path),
    )
    defaults = read_table(top.data.get("defaults", {}), "defaults", ("limits", "agent"))
    default_limits = _limits(defaults, DEFAULT_LIMITS)
    agent_defaults = read_table(
        defaults.data.get("agent", {}),
        defaults.at("agent"),
        tuple(n for n, *_ in AGENT_LIMIT_RANGES),
    )
    agent_limits = {
        name: agent_defaults.integer(name, default, low, high)
        for name, default, low, high in AGENT_LIMIT_RANGES
    }
    groups = _groups(top, policy, default_limits, agent_limits)
    _check_read_only_overlaps(groups)
    _check_nested_mounts(groups)
    policy = dataclasses.replace(policy, groups=MappingProxyType(groups))
    users = policy.tool_users()
    for group in groups.values():
        policy.check_binds(group, users)
    return policy


def _groups(
    top: Table, policy: Policy, default_limits: Limits, agent_limits: Mapping[str, int]
) -> dict[str, GroupPolicy]:
    tables = top.data.get("groups", {})
    if not isinstance(tables, Mapping):
        raise ConfigError("groups", f"must be a table of groups by name, not {describe(tables)}")
    groups: dict[str, GroupPolicy] = {}
    for name, value in tables.items():
        if name == COMMENT:
            comment(value, "groups." + key_part(name))
            continue
        group = _group(name, value, policy, default_limits, agent_limits)
        key = "groups." + key_part(name)
        taken = {uid: who for g in groups.values() for uid, who in _uids(g)}
        for (uid, _), at in zip(_uids(group), (".uid", ".agent.uid"), strict=False):
            if uid in taken:
                raise ConfigError(
                    key + at, f"uid {uid} is already {taken[uid]}'s; each needs its own"
                )
        if group.agent is not None and group.agent.uid == group.uid:
            raise ConfigError(
                key + ".agent.uid", "must differ from the group's uid (its tool user's)"
            )
        main = next((g.name for g in groups.values() if g.main), None)
        if group.main and main is not None:
            raise ConfigError(key + ".main", f"only one group may be main, and {main} already is")
        groups[name] = group
    return groups


def _uids(group: GroupPolicy) -> list[tuple[int, str]]:
    """(uid, whose) of the users the group's units run as."""
    uids = [(group.uid, f"group {group.name}")]
    if group.agent is not None:
        uids.append((group.agent.uid, f"group {group.name}'s agent"))
    return uids


def _group(
    name: str,
    value: object,
    policy: Policy,
    default_limits: Limits,
    agent_limits: Mapping[str, int],
) -> GroupPolicy:
    key = "groups." + key_part(name)
    if not re.fullmatch(GROUP_PATTERN, name):
        raise ConfigError(
            key, f"group name must match {GROUP_PATTERN} (lowercase letters, digits, '_' or '-')"
        )
    if name in RESERVED_GROUPS:
        raise ConfigError(key, f"group name {name!r} is reserved (the memory all groups share)")
    table = read_table(value, key, _GROUP_KEYS)
    if "uid" not in table.data:
        raise ConfigError(table.at("uid"), f"is required: the group's own user ID, {MIN_UID} up")
    uid = _uid(table)
    mounts = tuple(
        _mount(item, f"{table.at('mounts')}[{index}]", policy)
        for index, item in enumerate(listed(table, "mounts"))
    )
    for index, mount in enumerate(mounts):
        for earlier, other in enumerate(mounts[:index]):
            if path_relation(mount.sandbox, other.sandbox):
                raise ConfigError(
                    f"{table.at('mounts')}[{index}].sandbox",
                    f"{mount.sandbox} overlaps mounts[{earlier}].sandbox {other.sandbox}; "
                    "mounts may not share or nest their places",
                )
    read_only = tuple(
        policy.check_host_path(item, f"{table.at('read_only_paths')}[{index}]")
        for index, item in enumerate(listed(table, "read_only_paths"))
    )
    for index, path in enumerate(read_only):
        if path_relation(path, WORKSPACE):
            raise ConfigError(
                f"{table.at('read_only_paths')}[{index}]",
                f"{path} overlaps {WORKSPACE}, where only mounts go",
            )
    return GroupPolicy(
        name=name,
        uid=uid,
        main=table.flag("main", False),
        mounts=mounts,
        egress=egress(table),
        read_only_paths=read_only,
        limits=_limits(table, default_limits),
        path=_search_path(table, policy),
        empty_paths=_empty_paths(table, policy),
        agent=_agent(table, agent_limits),
        subagents=_subagents(table),
    )


def _subagents(group: Table) -> tuple[Subagent, ...]:
    """`subagents`: each one the group's host may name in a request, and how its units are
    narrower than the group's (an empty table: not at all)."""
    tables = group.data.get("subagents", {})
    if not isinstance(tables, Mapping):
        raise ConfigError(group.at("subagents"), f"must be a table by name, not {describe(tables)}")
    found: list[Subagent] = []
    for name, value in tables.items():
        key = f"{group.at('subagents')}.{key_part(name)}"
        if name == COMMENT:
            comment(value, key)
            continue
        if not re.fullmatch(SUBAGENT_PATTERN, name) or name in RESERVED_SUBAGENTS:
            raise ConfigError(
                key,
                f"a subagent's name must match {SUBAGENT_PATTERN} and not be one of "
                + ", ".join(sorted(RESERVED_SUBAGENTS)),
            )
        table = read_table(value, key, _SUBAGENT_KEYS)
        found.append(Subagent(name, table.flag("readonly", False), table.flag("no_egress", False)))
    return tuple(found)


def _uid(table: Table) -> int:
    uid = table.integer("uid", 0, MIN_UID, MAX_UID)
    if uid == NOBODY_UID:
        raise ConfigError(table.at("uid"), "must not be 65534 (nobody), which others share")
    return uid


def _agent(group: Table, defaults: Mapping[str, int]) -> AgentPolicy | None:
    """`agent`: the uid and bounds of the group's agent unit; absent, it gets none."""
    if "agent" not in group.data:
        return None
    names = tuple(n for n, *_ in AGENT_LIMIT_RANGES)
    table = read_table(group.data["agent"], group.at("agent"), ("uid", *names))
    if "uid" not in table.data:
        raise ConfigError(
            table.at("uid"), f"is required: the agent runtime's own user ID, {MIN_UID} up"
        )
    limits = {
        name: table.integer(name, defaults[name], low, high)
        for name, _, low, high in AGENT_LIMIT_RANGES
    }
    return AgentPolicy(uid=_uid(table), **limits)


def _search_path(table: Table, policy: Policy) -> tuple[str, ...]:
    """`path`: as written (normalised), and judged like a host path to bind, since the
    unit runs what it finds there."""
    result: list[str] = []
    for index, item in enumerate(listed(table, "path")):
        key = f"{table.at('path')}[{index}]"
        policy.check_host_path(item, key)
        path = absolute_path(item, key)
        if ":" in path:  # PATH's separator: one entry would become two
            raise ConfigError(key, "must not contain ':'")
        if path in result:
            raise ConfigError(key, f"{path} is listed twice (also at [{result.index(path)}])")
        result.append(path)
    return tuple(result)


def _empty_paths(table: Table, policy: Policy) -> tuple[str, ...]:
    """`empty_paths`: never a place the broker or the policy already decides about (an
    empty tree over the data directory would make every unit fail to start)."""
    result = paths(table, "empty_paths")
    decided = (
        *policy.sealed_paths(),
        ("the workspace", WORKSPACE),
        *(("a scratch place of the unit's own", path) for path in SCRATCH),
    )
    for index, path in enumerate(result):
        key = f"{table.at('empty_paths')}[{index}]"
        if path == "/":
            raise ConfigError(key, "must not be / (the unit would see nothing at all)")
        for what, other in decided:
            relation = path_relation(path, other)
            if relation:
                raise ConfigError(key, f"{path} {relation} {other}, {what}")
    return result


def _mount(value: object, key: str, policy: Policy) -> Mount:
    table = read_table(value, key, _MOUNT_KEYS)
    for name in ("host", "sandbox"):
        if name not in table.data:
            raise ConfigError(table.at(name), "is required")
    return Mount(
        host=policy.check_host_path(table.data["host"], table.at("host")),
        sandbox=_sandbox_path(table.data["sandbox"], table.at("sandbox")),
        writable=table.flag("writable", False),
        protect=table.flag("protect", True),
    )


def _sandbox_path(value: object, key: str) -> str:
    path = absolute_path(value, key)
    if ":" in path:  # the separator of BindPaths= in unit files
        raise ConfigError(key, "must not contain ':'")
    if not path.startswith(WORKSPACE + "/"):
        raise ConfigError(key, f"must be under {WORKSPACE}/, like {WORKSPACE}/photos")
    if any(path_relation(path, reserved) for reserved in RESERVED_SANDBOX):
        raise ConfigError(
            key,
            f"{path} is reserved: the broker binds the group's folder at {GROUP_SANDBOX} "
            f"and the global memory at {GLOBAL_SANDBOX}",
        )
    return path


def _limits(parent: Table, defaults: Limits) -> Limits:
    table = read_table(
        parent.data.get("limits", {}), parent.at("limits"), tuple(n for n, *_ in LIMIT_RANGES)
    )
    values = {
        name: table.integer(name, getattr(defaults, name), low, high)
        for name, _, low, high in LIMIT_RANGES
    }
    return Limits(**values)


def _check_read_only_overlaps(groups: Mapping[str, GroupPolicy]) -> None:
    # Every mount's host path is hidden in every unit (it is seen only at its sandbox
    # place), while a read-only path is bound where it is: the two must stay apart.
    for group in groups.values():
        for index, path in enumerate(group.read_only_paths):
            for other in groups.values():
                for number, mount in enumerate(other.mounts):
                    if path_relation(path, mount.host):
                        raise ConfigError(
                            f"groups.{key_part(group.name)}.read_only_paths[{index}]",
                            f"{path} overlaps groups.{other.name}.mounts[{number}].host "
                            f"{mount.host}, which every unit hides",
                        )


def _check_nested_mounts(groups: Mapping[str, GroupPolicy]) -> None:
    # A mount inside another's host path is writable through the outer one when that is,
    # and its source can be swapped by whoever writes the outer one. Two groups may share
    # one directory; a group needs it only once.
    mounts = [(g, index, m) for g in groups.values() for index, m in enumerate(g.mounts)]
    for number, (group, index, mount) in enumerate(mounts):
        for other, other_index, earlier in mounts[:number]:
            relation = path_relation(mount.host, earlier.host)
            if relation == "is" and other is not group:
                continue
            if relation:
                raise ConfigError(
                    f"groups.{key_part(group.name)}.mounts[{index}].host",
                    f"{mount.host} {relation} groups.{other.name}.mounts[{other_index}].host "
                    f"{earlier.host}; mounts may not nest (one would be reachable, and "
                    "perhaps writable, through the other): mount one directory once",
                )


def _is_pattern(value: str) -> bool:
    return (
        0 < len(value) <= 255
        and value not in (".", "..")
        and "/" not in value
        and not CONTROL_CHARACTERS.search(value)
        and is_text(value)
    )
