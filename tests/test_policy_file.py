"""The policy file's reader: good files parse to exact records; every bad one is refused
with the dotted key and a reason."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
from pathlib import Path

import pytest

from nanoclaw.broker.config_reader import ConfigError, key_part
from nanoclaw.broker.policy import (
    DEFAULT_BLOCKED_PATTERNS,
    DEFAULT_LIMITS,
    AgentPolicy,
    Egress,
    GroupPolicy,
    Limits,
    Mount,
    Policy,
    UnknownGroup,
    blocked_component,
)
from nanoclaw.broker.policy_file import load_policy, parse_policy

# --- what a good file gives ---------------------------------------------------------
from tests.support.policies import (
    DELETE,
    EXAMPLE,
    FULL,
    LIMIT_BOUNDS,
    MINIMAL,
    POLICY_PATH,
    STORE_TOOLS,
    GiB,
    at,
    group_with,
    mount,
    outside_tmp,  # noqa: F401 -- tmp_path outside /tmp
    refusal,
    refused,
)


def test_the_full_policy_parses_to_exact_records() -> None:
    policy = parse_policy(FULL, POLICY_PATH)
    defaults = dataclasses.replace(DEFAULT_LIMITS, tasks_max=128, wall_seconds=600)
    assert policy == Policy(
        data_dir="/var/lib/nanoclaw",
        protected_paths=("/etc/nanoclaw", "/run/credentials"),
        blocked_patterns=(*DEFAULT_BLOCKED_PATTERNS, "extra-pattern"),
        groups=policy.groups,
        policy_path=POLICY_PATH,
    )
    assert dict(policy.groups) == {
        "main": GroupPolicy(
            name="main",
            uid=61000,
            main=True,
            mounts=(Mount("/srv/project", "/workspace/project", True),),
            egress=Egress(cidrs=(), domains=("github.com", "*.githubusercontent.com")),
            read_only_paths=("/nix/store/abc-ripgrep",),
            limits=dataclasses.replace(defaults, memory_max_bytes=GiB, cpu_quota_percent=50),
            agent=AgentPolicy(uid=62000, memory_max_bytes=2 * GiB, tasks_max=512, cpu_weight=50),
        ),
        "family": GroupPolicy(
            name="family",
            uid=61001,
            main=False,
            mounts=(
                Mount("/srv/photos", "/workspace/photos", False),
                Mount("/srv/inbox", "/workspace/inbox", True),
            ),
            egress=Egress((), ()),
            read_only_paths=(),
            limits=defaults,
            agent=AgentPolicy(uid=62001, memory_max_bytes=2 * GiB, tasks_max=256, cpu_weight=50),
        ),
        "ops-team": GroupPolicy(
            name="ops-team",
            uid=61002,
            main=False,
            mounts=(),
            egress=Egress(
                (ipaddress.IPv4Network("192.0.2.0/24"), ipaddress.IPv6Network("2001:db8::/32")), ()
            ),
            read_only_paths=(),
            limits=defaults,
        ),
    }
    assert list(policy.groups) == ["main", "family", "ops-team"]  # the file's order


def test_a_minimal_policy_has_no_groups_and_the_builtin_patterns() -> None:
    policy = parse_policy(MINIMAL, POLICY_PATH)
    assert policy.groups == {}
    assert policy.protected_paths == ()
    assert policy.blocked_patterns == DEFAULT_BLOCKED_PATTERNS


def test_limits_default_to_the_documented_values() -> None:
    assert DEFAULT_LIMITS == Limits(
        memory_max_bytes=512 * 1024**2,
        tasks_max=64,
        cpu_quota_percent=100,
        wall_seconds=300,
        output_bytes=1024**2,
        tmp_bytes=256 * 1024**2,
    )
    assert parse_policy(group_with(), POLICY_PATH).group("g").limits == DEFAULT_LIMITS


def test_group_limits_override_defaults_key_by_key() -> None:
    data = at(group_with(limits={"tasks_max": 9}), ("defaults",), {"limits": {"tasks_max": 10}})
    data["defaults"]["limits"]["output_bytes"] = 2048
    limits = parse_policy(data, POLICY_PATH).group("g").limits
    assert (limits.tasks_max, limits.output_bytes, limits.wall_seconds) == (9, 2048, 300)


def test_the_example_file_loads() -> None:
    policy = load_policy(EXAMPLE)
    assert policy.policy_path == str(EXAMPLE)
    main, family = policy.group("main"), policy.group("family")
    assert (main.uid, main.main, family.uid, family.main) == (61000, True, 61001, False)
    assert main.mounts == (Mount("/srv/project", "/workspace/project", True),)
    assert main.egress.domains == ("github.com", "*.githubusercontent.com")
    assert main.egress.cidrs == ()
    assert family.mounts == (Mount("/srv/photos", "/workspace/photos", False),)
    assert not family.egress.any and main.egress.any


def test_writable_defaults_to_false() -> None:
    assert parse_policy(mount("/srv/x"), POLICY_PATH).group("g").mounts[0].writable is False


@pytest.mark.parametrize(
    ("cidrs", "domains", "expected"),
    [((), (), False), (("10.0.0.0/8",), (), True), ((), ("a.example",), True)],
)
def test_egress_any(cidrs: tuple[str, ...], domains: tuple[str, ...], expected: bool) -> None:
    egress = Egress(tuple(ipaddress.ip_network(c) for c in cidrs), domains)
    assert egress.any is expected


def test_an_empty_egress_means_no_network() -> None:
    policy = parse_policy(group_with(egress={"cidrs": [], "domains": []}), POLICY_PATH)
    assert not policy.group("g").egress.any


def test_paths_are_normalised() -> None:
    data = at(mount("/srv//photos/./", "/workspace//p/./"), ("protected_paths",), ["/etc//x/"])
    policy = parse_policy(data, POLICY_PATH)
    assert policy.protected_paths == ("/etc/x",)
    assert policy.group("g").mounts[0] == Mount("/srv/photos", "/workspace/p", False)


def test_extra_blocked_patterns_extend_the_builtin_list_once() -> None:
    data = at(MINIMAL, ("blocked_patterns",), [".ssh", "vault"])
    assert parse_policy(data, POLICY_PATH).blocked_patterns == (*DEFAULT_BLOCKED_PATTERNS, "vault")


# --- the policy object --------------------------------------------------------------


def test_the_policy_is_immutable() -> None:
    policy = parse_policy(FULL, POLICY_PATH)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.data_dir = "/"  # type: ignore[misc]
    with pytest.raises(TypeError):
        policy.groups["evil"] = policy.group("main")  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.group("main").mounts[0].writable = False  # type: ignore[misc]
    assert isinstance(policy.group("main").mounts, tuple)


@pytest.mark.parametrize("name", ["nope", "", "MAIN", "main ", "global", "$comment"])
def test_an_unknown_group_raises_unknown_group_not_key_error(name: str) -> None:
    policy = parse_policy(FULL, POLICY_PATH)
    with pytest.raises(UnknownGroup) as info:
        policy.group(name)
    assert not isinstance(info.value, KeyError)
    assert info.value.name == name
    assert repr(name) in str(info.value)


def test_an_unhashable_group_name_is_an_unknown_group() -> None:
    with pytest.raises(UnknownGroup):
        parse_policy(FULL, POLICY_PATH).group(["main"])  # type: ignore[arg-type]


# --- refusals: structure, types and ranges --------------------------------------------


@pytest.mark.parametrize(
    ("location", "value", "key", "fragment"),
    [
        (("extra",), 1, "extra", "unknown key"),
        (("groups", "family", "mount"), [], "groups.family.mount", "did you mean mounts?"),
        (("groups", "family", "mounts", 0, "rw"), True, "groups.family.mounts[0].rw", "unknown"),
        (("groups", "main", "egress", "ports"), [], "groups.main.egress.ports", "unknown"),
        (("groups", "main", "limits", "cpu"), 1, "groups.main.limits.cpu", "unknown"),
        (("defaults", "uid"), 1, "defaults.uid", "unknown"),
        (("defaults", "limits", "memory"), 1, "defaults.limits.memory", "unknown"),
        (("data_dir",), None, "data_dir", "must not be null"),
        (("groups", "family", "main"), None, "groups.family.main", "must not be null"),
        (("$comment",), 1, '"$comment"', "must be a string"),
        (("groups", "$comment"), [], 'groups."$comment"', "must be a string"),
        (("groups", "family", "$comment"), {}, 'groups.family."$comment"', "must be a string"),
        (("groups", "family", "mounts", 0, "$comment"), 2, "groups.family.mounts[0].", "string"),
        (("version",), DELETE, "version", "is required"),
        (("version",), 2, "version", "must be 1"),
        (("version",), "1", "version", "must be 1"),
        (("version",), True, "version", "must be 1"),
        (("version",), 1.0, "version", "must be 1"),
        (("data_dir",), DELETE, "data_dir", "is required"),
        (("data_dir",), "var/lib/nanoclaw", "data_dir", "absolute path"),
        (("data_dir",), "/", "data_dir", "must not be /"),
        (("data_dir",), "//", "data_dir", "must not be /"),
        (("data_dir",), 5, "data_dir", "absolute path"),
        (("data_dir",), "/var/lib/../etc", "data_dir", "'..'"),
        (("data_dir",), "/var/lib/nano\x00claw", "data_dir", "control characters"),
        (("data_dir",), "/var/lib/\udc80", "data_dir", "valid Unicode"),
        (("data_dir",), "/" + "a" * 4095, "data_dir", "at most 4095 bytes"),
        (("protected_paths",), "/etc", "protected_paths", "must be a list"),
        (("protected_paths",), ["/etc", "etc"], "protected_paths[1]", "absolute"),
        (("protected_paths",), ["/etc", "/etc/"], "protected_paths[1]", "listed twice"),
        (("protected_paths",), ["/"], "protected_paths[0]", "must not be /"),
        (("protected_paths",), ["/a\nb"], "protected_paths[0]", "control"),
        (("blocked_patterns",), ["a/b"], "blocked_patterns[0]", "one path component"),
        (("blocked_patterns",), [""], "blocked_patterns[0]", "one path component"),
        (("blocked_patterns",), [".."], "blocked_patterns[0]", "one path component"),
        (("blocked_patterns",), ["."], "blocked_patterns[0]", "one path component"),
        (("blocked_patterns",), ["x" * 256], "blocked_patterns[0]", "one path component"),
        (("blocked_patterns",), ["a\tb"], "blocked_patterns[0]", "one path component"),
        (("blocked_patterns",), [3], "blocked_patterns[0]", "integer 3"),
        (("blocked_patterns",), {}, "blocked_patterns", "must be a list"),
        (("groups",), [], "groups", "must be a table"),
        (("groups", "family"), [], "groups.family", "must be a table"),
        (("defaults",), 1, "defaults", "must be a table"),
        (("defaults", "limits"), [], "defaults.limits", "must be a table"),
    ],
)
def test_structure_and_types_are_checked(
    location: tuple[str | int, ...], value: object, key: str, fragment: str
) -> None:
    error = refusal(at(FULL, location, value))
    assert error.key.startswith(key), str(error)
    assert fragment in error.reason, str(error)


@pytest.mark.parametrize(
    "name", ["Family", "-x", "_x", "fam ily", "family\n", "a" * 17, "", "é", "global", "a.b"]
)
def test_group_names_are_checked(name: str) -> None:
    error = refusal(at(MINIMAL, ("groups",), {name: {"uid": 61000}}))
    assert error.key == "groups." + key_part(name)
    assert ("reserved" if name == "global" else "must match") in error.reason


@pytest.mark.parametrize("name", ["a", "0", "a" * 16, "my-group", "my_group", "9-9"])
def test_good_group_names_are_accepted(name: str) -> None:
    assert parse_policy(at(MINIMAL, ("groups",), {name: {"uid": 61000}}), POLICY_PATH).groups


@pytest.mark.parametrize(
    ("uid", "fragment"),
    [
        (DELETE, "is required"),
        (999, "from 1000 to 2147483646"),
        (0, "from 1000"),
        (-1, "from 1000"),
        (2147483647, "to 2147483646"),
        (4294967295, "to 2147483646"),
        (65534, "nobody"),
        (True, "boolean true"),
        ("61000", 'string "61000"'),
        (61000.0, "float"),
    ],
)
def test_uids_are_checked(uid: object, fragment: str) -> None:
    refused(at(group_with(), ("groups", "g", "uid"), uid), "groups.g.uid", fragment)


def test_uids_are_distinct() -> None:
    data = at(FULL, ("groups", "ops-team", "uid"), 61000)
    refused(data, "groups.ops-team.uid", "uid 61000 is already group main's")


def test_at_most_one_group_is_main() -> None:
    refused(at(FULL, ("groups", "family", "main"), True), "groups.family.main", "main already is")


@pytest.mark.parametrize("main", [1, "true", None])
def test_main_is_a_boolean(main: object) -> None:
    error = refusal(at(FULL, ("groups", "family", "main"), main))
    assert error.key == "groups.family.main"


@pytest.mark.parametrize("name", LIMIT_BOUNDS)
@pytest.mark.parametrize("where", ["defaults", "group"])
def test_limits_are_range_checked(name: str, where: str) -> None:
    low, high = LIMIT_BOUNDS[name]
    for bad in (low - 1, high + 1, True, float(low), str(low), -low):
        if where == "defaults":
            data, key = at(MINIMAL, ("defaults",), {"limits": {name: bad}}), "defaults.limits"
        else:
            data, key = group_with(limits={name: bad}), "groups.g.limits"
        refused(data, f"{key}.{name}", f"from {low} to {high}")


# --- refusals: mounts and read-only paths ---------------------------------------------


@pytest.mark.parametrize(
    ("host", "fragment"),
    [
        ("srv/photos", "absolute path"),
        ("", "absolute path"),
        ("/srv/pho\x00tos", "control characters"),
        ("/srv/pho\ntos", "control characters"),
        ("/srv/pho\u2028tos", "control characters"),
        ("/srv/photos\x9b", "control characters"),
        ("/srv/../etc", "'..'"),
        ("/srv/photos/..", "'..'"),
        ("/", "the whole host file system"),
        ("//", "the whole host file system"),
        ("/./", "the whole host file system"),
        ("/var/lib/nanoclaw", "is /var/lib/nanoclaw, the data directory"),
        ("/var/lib/nanoclaw/groups/other", "is inside /var/lib/nanoclaw, the data directory"),
        ("/var/lib/nanoclaw/global", "is inside /var/lib/nanoclaw, the data"),
        ("/var/lib", "contains /var/lib/nanoclaw, the data directory"),
        ("/var", "contains /var/lib/nanoclaw, the data directory"),
        ("/etc/nanoclaw", "is /etc/nanoclaw, a protected path"),
        ("/etc/nanoclaw/secrets", "is inside /etc/nanoclaw, a protected path"),
        ("/etc", "contains /etc/nanoclaw, a protected path"),
        ("/run/credentials/nanoclaw.service", "is inside /run/credentials, a protected path"),
        ("/etc/nanoclaw/policy.json", "is inside /etc/nanoclaw, a protected path"),
        ("/run", "contains /run/credentials, a protected path"),
        ("/run/dbus", "is inside /run, a path hidden from every tool"),
        ("/run/systemd/journal/socket", "is inside /run, a path hidden"),
        ("/run/user/1000", "is inside /run, a path hidden"),
        ("/var/run/nanoclaw", "is inside /run, a path hidden"),  # /var/run -> /run
        ("/var/log/journal", "is inside /var/log, a path hidden"),
        ("/root", "is /root, a path hidden from every tool"),
        ("/root/project", "is inside /root, a path hidden"),
        ("/proc", "is /proc, a kernel file system"),
        ("/proc/sys/kernel", "is inside /proc, a kernel file system"),
        ("/sys/kernel", "is inside /sys, a kernel file system"),
        ("/dev/shm", "is inside /dev, a kernel file system"),
        ("/tmp/project", "is inside /tmp, a scratch place each unit has its own of"),
        ("/var/tmp", "is /var/tmp, a scratch place"),
    ],
)
def test_mount_hosts_that_expose_what_is_hidden_are_refused(host: str, fragment: str) -> None:
    refused(
        at(FULL, ("groups", "family", "mounts", 0, "host"), host),
        "groups.family.mounts[0].host",
        fragment,
    )


def test_the_policy_file_itself_and_its_parents_are_refused() -> None:
    refused(
        mount("/opt/p/policy.json"),
        "groups.g.mounts[0].host",
        "is /opt/p/policy.json, the policy file",
        policy_path="/opt/p/policy.json",
    )
    refused(
        mount("/opt/p"),
        "groups.g.mounts[0].host",
        "contains /opt/p/policy.json, the policy file",
        policy_path="/opt/p/policy.json",
    )
    refused(
        mount("/opt"),
        "groups.g.mounts[0].host",
        "the policy file",
        policy_path="/opt/p/policy.json",
    )
    assert parse_policy(mount("/opt/q"), "/opt/p/policy.json").groups


@pytest.mark.parametrize(
    ("host", "component", "pattern"),
    [
        ("/home/u/.ssh", ".ssh", ".ssh"),
        ("/srv/u/.ssh/known_hosts", ".ssh", ".ssh"),
        ("/srv/u/.SSH", ".SSH", ".ssh"),
        ("/srv/.gnupg", ".gnupg", ".gnupg"),
        ("/srv/.aws/config", ".aws", ".aws"),
        ("/srv/.kube", ".kube", ".kube"),
        ("/srv/.docker", ".docker", ".docker"),
        ("/srv/app/credentials", "credentials", "credentials"),
        ("/srv/app/credentials.json", "credentials.json", "credentials"),
        ("/srv/app/Credentials.JSON", "Credentials.JSON", "credentials"),
        ("/srv/app/.env", ".env", ".env*"),
        ("/srv/app/.env.local", ".env.local", ".env*"),
        ("/srv/app/.envrc", ".envrc", ".env*"),
        ("/srv/app/.ENV_prod", ".ENV_prod", ".env*"),
        ("/srv/.netrc", ".netrc", ".netrc"),
        ("/srv/.npmrc", ".npmrc", ".npmrc"),
        ("/srv/.pypirc", ".pypirc", ".pypirc"),
        ("/srv/keys/id_rsa", "id_rsa", "id_rsa"),
        ("/srv/keys/id_rsa.pub", "id_rsa.pub", "id_rsa"),
        ("/srv/keys/id_ed25519", "id_ed25519", "id_ed25519"),
        ("/srv/keys/private_key.pem", "private_key.pem", "private_key"),
        ("/srv/.secret", ".secret", ".secret"),
        ("/srv/.gpg", ".gpg", ".gpg"),
        ("/srv/.azure", ".azure", ".azure"),
        ("/srv/.gcloud/x", ".gcloud", ".gcloud"),
        ("/srv/extra-pattern/x", "extra-pattern", "extra-pattern"),
    ],
)
def test_blocked_components_are_refused(host: str, component: str, pattern: str) -> None:
    refused(
        at(FULL, ("groups", "family", "mounts", 0, "host"), host),
        "groups.family.mounts[0].host",
        f"component {component!r}",
        f"pattern {pattern!r}",
    )


@pytest.mark.parametrize(
    "host",
    [
        "/srv/sshfiles",
        "/srv/my.ssh",
        "/srv/notes.ssh",
        "/srv/environment",
        "/srv/credentialsx",
        "/srv/id_rsa_backup",
        "/srv/private_keys",
        "/srv/x.env",
        "/srv/aws",
        "/srv/docker",
    ],
)
def test_near_misses_of_blocked_patterns_are_allowed(host: str) -> None:
    assert parse_policy(mount(host), POLICY_PATH).group("g").mounts[0].host == host


def test_blocked_component_rule() -> None:
    patterns = DEFAULT_BLOCKED_PATTERNS
    assert blocked_component("/a/.ssh/b", patterns) == (".ssh", ".ssh")
    assert blocked_component("/a/.env.production", patterns) == (".env.production", ".env*")
    assert blocked_component("/a/CREDENTIALS.txt", patterns) == ("CREDENTIALS.txt", "credentials")
    assert blocked_component("/a/b/c", patterns) is None
    assert blocked_component("/", patterns) is None
    assert blocked_component("/x/vault.db", ("vault",)) == ("vault.db", "vault")
    assert blocked_component("/x/vaults", ("vault",)) is None


@pytest.mark.parametrize(
    ("sandbox", "fragment"),
    [
        ("/workspace", "must be under /workspace/"),
        ("/workspace/", "must be under /workspace/"),
        ("/workspace/.", "must be under /workspace/"),
        ("/workspace/group", "reserved"),
        ("/workspace/group/photos", "reserved"),
        ("/workspace//group/", "reserved"),
        ("/workspace/./global", "reserved"),
        ("/workspace/global", "reserved"),
        ("/workspace/global/x", "reserved"),
        ("/workspace/a:b", "':'"),
        ("/workspace/../etc", "'..'"),
        ("/workspace/a/../../etc", "'..'"),
        ("/srv/photos", "must be under /workspace/"),
        ("/workspacex/photos", "must be under /workspace/"),
        ("workspace/photos", "absolute"),
        ("/workspace/pho\ntos", "control"),
        ("/workspace/pho\x00tos", "control"),
        ("/", "must be under /workspace/"),
    ],
)
def test_sandbox_places_are_checked(sandbox: str, fragment: str) -> None:
    refused(mount("/srv/photos", sandbox), "groups.g.mounts[0].sandbox", fragment)


@pytest.mark.parametrize(
    "sandbox", ["/workspace/groups", "/workspace/globals", "/workspace/group-b", "/workspace/a b"]
)
def test_sandbox_places_that_only_look_reserved_are_allowed(sandbox: str) -> None:
    assert parse_policy(mount("/srv/x", sandbox), POLICY_PATH).group("g").mounts[0].sandbox


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("/workspace/a", "/workspace/a"),
        ("/workspace/a", "/workspace/a/b"),
        ("/workspace/a/b", "/workspace/a"),
        ("/workspace/a", "/workspace//a/"),
    ],
)
def test_mounts_may_not_share_or_nest_their_places(first: str, second: str) -> None:
    data = group_with(
        mounts=[{"host": "/srv/1", "sandbox": first}, {"host": "/srv/2", "sandbox": second}]
    )
    refused(data, "groups.g.mounts[1].sandbox", "overlaps mounts[0].sandbox")


def test_sibling_places_with_a_common_prefix_are_allowed() -> None:
    data = group_with(
        mounts=[
            {"host": "/srv/1", "sandbox": "/workspace/a"},
            {"host": "/srv/2", "sandbox": "/workspace/ab"},
        ]
    )
    assert len(parse_policy(data, POLICY_PATH).group("g").mounts) == 2


@pytest.mark.parametrize(
    ("mounts", "key", "fragment"),
    [
        ({}, "groups.g.mounts", "must be a list"),
        (["/srv/x"], "groups.g.mounts[0]", "must be a table"),
        ([{"sandbox": "/workspace/x"}], "groups.g.mounts[0].host", "is required"),
        ([{"host": "/srv/x"}], "groups.g.mounts[0].sandbox", "is required"),
        (
            [{"host": "/srv/x", "sandbox": "/workspace/x", "writable": "yes"}],
            "groups.g.mounts[0].writable",
            "true or false",
        ),
        ([{"host": 1, "sandbox": "/workspace/x"}], "groups.g.mounts[0].host", "absolute"),
    ],
)
def test_mount_entries_are_checked(mounts: object, key: str, fragment: str) -> None:
    refused(group_with(mounts=mounts), key, fragment)


@pytest.mark.parametrize(
    ("paths", "key", "fragment"),
    [
        ("/nix/store/x", "groups.g.read_only_paths", "must be a list"),
        ([1], "groups.g.read_only_paths[0]", "absolute"),
        (["bin/rg"], "groups.g.read_only_paths[0]", "absolute"),
        (["/ok", "/home/u/.ssh/id_ed25519"], "groups.g.read_only_paths[1]", "blocked pattern"),
        (["/var/lib/nanoclaw/db"], "groups.g.read_only_paths[0]", "data directory"),
        (["/etc/nanoclaw"], "groups.g.read_only_paths[0]", "protected path"),
        (["/"], "groups.g.read_only_paths[0]", "whole host"),
        (["/workspace"], "groups.g.read_only_paths[0]", "overlaps /workspace"),
        (["/workspace/tools"], "groups.g.read_only_paths[0]", "overlaps /workspace"),
        (["/proc/self"], "groups.g.read_only_paths[0]", "kernel file system"),
        (["/usr/../etc"], "groups.g.read_only_paths[0]", "'..'"),
    ],
)
def test_read_only_paths_are_checked(paths: object, key: str, fragment: str) -> None:
    data = at(group_with(read_only_paths=paths), ("protected_paths",), ["/etc/nanoclaw"])
    refused(data, key, fragment)


@pytest.mark.parametrize("path", ["/srv/project", "/srv/project/bin", "/srv"])
def test_read_only_paths_may_not_overlap_any_groups_mount_source(path: str) -> None:
    data = at(FULL, ("groups", "family", "read_only_paths"), [path])
    refused(data, "groups.family.read_only_paths[0]", "overlaps groups.main.mounts[0].host")


def test_path_and_empty_paths_are_kept_in_order_and_normalised() -> None:
    group = parse_policy(STORE_TOOLS, POLICY_PATH).group("tools")
    assert group.path == ("/nix/store/abc-coreutils/bin", "/usr/local/bin")
    assert group.empty_paths == ("/nix/store",)
    assert group.read_only_paths == ("/nix/store/abc-coreutils", "/nix/store/def-glibc")


def test_path_and_empty_paths_default_to_nothing() -> None:
    group = parse_policy(group_with(), POLICY_PATH).group("g")
    assert group.path == () and group.empty_paths == ()


@pytest.mark.parametrize(
    ("paths", "key", "fragment"),
    [
        ("/nix/store/x/bin", "groups.g.path", "must be a list"),
        (["bin"], "groups.g.path[0]", "absolute"),
        (["/opt/a:/opt/b"], "groups.g.path[0]", "':'"),
        (["/opt/bin", "/opt//bin"], "groups.g.path[1]", "listed twice"),
        (["/home/u/.aws/bin"], "groups.g.path[0]", "blocked pattern"),
        (["/var/lib/nanoclaw/bin"], "groups.g.path[0]", "data directory"),
        (["/etc/nanoclaw"], "groups.g.path[0]", "protected path"),
        (["/proc/self/cwd"], "groups.g.path[0]", "kernel file system"),
        (["/usr/../etc"], "groups.g.path[0]", "'..'"),
    ],
)
def test_path_entries_are_checked(paths: object, key: str, fragment: str) -> None:
    data = at(group_with(path=paths), ("protected_paths",), ["/etc/nanoclaw"])
    refused(data, key, fragment)


@pytest.mark.parametrize(
    ("paths", "key", "fragment"),
    [
        ("/nix/store", "groups.g.empty_paths", "must be a list"),
        (["nix/store"], "groups.g.empty_paths[0]", "absolute"),
        (["/nix/store", "/nix/store/"], "groups.g.empty_paths[1]", "listed twice"),
        (["/"], "groups.g.empty_paths[0]", "see nothing"),
        (["/var"], "groups.g.empty_paths[0]", "contains /var/lib/nanoclaw, the data directory"),
        (["/etc"], "groups.g.empty_paths[0]", "a protected path"),
        (["/etc/nanoclaw/x"], "groups.g.empty_paths[0]", "a protected path"),
        (["/workspace"], "groups.g.empty_paths[0]", "the workspace"),
        (["/workspace/x"], "groups.g.empty_paths[0]", "the workspace"),
        (["/tmp"], "groups.g.empty_paths[0]", "/tmp"),
        (["/run/user"], "groups.g.empty_paths[0]", "hidden from every tool"),
        (["/dev/shm"], "groups.g.empty_paths[0]", "kernel file system"),
    ],
)
def test_empty_paths_are_checked(paths: object, key: str, fragment: str) -> None:
    data = at(group_with(empty_paths=paths), ("protected_paths",), ["/etc/nanoclaw"])
    refused(data, key, fragment)


def test_empty_paths_never_cover_the_policy_file() -> None:
    refused(group_with(empty_paths=["/etc"]), "groups.g.empty_paths[0]", "the policy file")


# --- loading the file -----------------------------------------------------------------


def test_load_policy_refuses_duplicate_keys(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{"version": 1, "data_dir": "/a", "data_dir": "/var/lib/nanoclaw"}')
    with pytest.raises(ConfigError, match="duplicate key 'data_dir'") as info:
        load_policy(path)
    assert info.value.key == str(path)
    path.write_text('{"version": 1, "data_dir": "/d", "groups": {"g": {"uid": 61000, "uid": 0}}}')
    with pytest.raises(ConfigError, match="duplicate key 'uid'"):
        load_policy(path)
    path.write_text(
        '{"version": 1, "data_dir": "/d", "groups": {"g": {"uid": 61000}, "g": {"uid": 61001}}}'
    )
    with pytest.raises(ConfigError, match="duplicate key 'g'"):
        load_policy(path)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{", "invalid JSON"),
        (b"[]", "must hold a JSON object, not a list"),
        (b"1", "must hold a JSON object"),
        (b'{"version": 1, "data_dir": "/d"}\xff', "not UTF-8"),
        (b'{"version": 1e400, "data_dir": "/d"}', "version: must be 1"),
        (b'{"version": NaN, "data_dir": "/d"}', "version: must be 1"),
        (b'{"version": 1' + b"0" * 5000 + b', "data_dir": "/d"}', "invalid JSON"),
    ],
)
def test_load_policy_refuses_bad_files(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "p.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_policy(path)


def test_load_policy_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file: No such file") as info:
        load_policy(tmp_path / "missing.json")
    assert info.value.key == str(tmp_path / "missing.json")


def test_load_policy_protects_its_own_file_even_by_a_relative_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(mount(str(path))))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="the policy file") as info:
        load_policy(Path("policy.json"))
    assert info.value.key == "groups.g.mounts[0].host"


def test_load_policy_records_the_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "p.json").write_text(json.dumps(MINIMAL))
    monkeypatch.chdir(tmp_path)
    assert load_policy(Path("p.json")).policy_path == str(tmp_path / "p.json")


def test_parse_policy_wants_an_absolute_policy_path() -> None:
    with pytest.raises(ValueError, match="absolute"):
        parse_policy(MINIMAL, "policy.json")


def test_a_policy_that_is_not_a_table_is_refused() -> None:
    error = refusal([])
    assert "must be a table" in error.reason


# --- the agent unit's section -----------------------------------------------------------


def test_a_group_without_an_agent_section_gets_no_agent_unit() -> None:
    assert parse_policy(group_with(), POLICY_PATH).group("g").agent is None


def test_agent_limits_default_to_the_documented_values() -> None:
    agent = parse_policy(group_with(agent={"uid": 62000}), POLICY_PATH).group("g").agent
    assert agent == AgentPolicy(uid=62000, memory_max_bytes=GiB, tasks_max=256, cpu_weight=100)


@pytest.mark.parametrize(
    ("agent", "key", "fragment"),
    [
        ({}, "groups.g.agent.uid", "is required"),
        ({"uid": 999}, "groups.g.agent.uid", "from 1000"),
        ({"uid": 65534}, "groups.g.agent.uid", "nobody"),
        ({"uid": 61000}, "groups.g.agent.uid", "must differ from the group's uid"),
        ({"uid": 62000, "memory_max_bytes": 1024}, "groups.g.agent.memory_max_bytes", "from"),
        ({"uid": 62000, "cpu_weight": 0}, "groups.g.agent.cpu_weight", "from 1 to 10000"),
        ({"uid": 62000, "wall_seconds": 5}, "groups.g.agent.wall_seconds", ""),
        ("62000", "groups.g.agent", "must be a table"),
    ],
)
def test_a_bad_agent_section_is_refused_by_key(agent: object, key: str, fragment: str) -> None:
    refused(group_with(agent=agent), key, fragment)


def test_an_agent_uid_taken_by_any_other_user_of_the_policy_is_refused() -> None:
    two = at(
        MINIMAL, ("groups",), {"a": {"uid": 61000}, "b": {"uid": 61001, "agent": {"uid": 61000}}}
    )
    refused(two, "groups.b.agent.uid", "uid 61000 is already group a's")
    agents = at(
        MINIMAL,
        ("groups",),
        {"a": {"uid": 61000, "agent": {"uid": 62000}}, "b": {"uid": 62000}},
    )
    refused(agents, "groups.b.uid", "uid 62000 is already group a's agent's")


def test_defaults_agent_sets_every_groups_agent_limits_and_takes_no_uid() -> None:
    data = at(group_with(agent={"uid": 62000}), ("defaults",), {"agent": {"tasks_max": 64}})
    assert parse_policy(data, POLICY_PATH).group("g").agent == AgentPolicy(62000, GiB, 64, 100)
    refused(at(data, ("defaults", "agent", "uid"), 62001), "defaults.agent.uid", "")


def test_agent_users_count_as_untrusted_for_mount_sources(tmp_path: Path) -> None:
    # A directory the agent user may write is no mount source, like a tool user's.
    owned = tmp_path / "agent-owned"
    (owned / "inner").mkdir(parents=True)
    os.chown(owned, 62077, 62077)
    data = at(
        mount(str(owned / "inner")),
        ("groups", "g", "agent"),
        {"uid": 62077},
    )
    refused(data, "groups.g.mounts[0].host", "group g's agent user (uid 62077) owns")
