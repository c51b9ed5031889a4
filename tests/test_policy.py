"""The sandbox policy gate: good files parse to exact records; every bad one is refused
with the dotted key and a reason, including paths that only go bad through symlinks."""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nanoclaw.broker.config_reader import ConfigError, key_part
from nanoclaw.broker.policy import (
    ALWAYS_HIDDEN,
    DEFAULT_BLOCKED_PATTERNS,
    DEFAULT_LIMITS,
    Egress,
    GroupPolicy,
    Limits,
    Mount,
    Policy,
    UnknownGroup,
    blocked_component,
    domain_allowed,
    is_domain,
)
from nanoclaw.broker.policy_file import load_policy, parse_policy

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "policies" / "example.json"
SCHEMA = REPO / "policies" / "schema.json"
POLICY_PATH = "/etc/nanoclaw/policy.json"
GiB = 1024**3
DELETE = object()

MINIMAL: dict[str, Any] = {"version": 1, "data_dir": "/var/lib/nanoclaw"}

# Every key, with a $comment in every kind of object.
FULL: dict[str, Any] = {
    "$comment": "top",
    "version": 1,
    "data_dir": "/var/lib/nanoclaw",
    "protected_paths": ["/etc/nanoclaw", "/run/credentials"],
    "blocked_patterns": ["extra-pattern"],
    "proxy": {"$comment": "proxy", "address": "127.0.0.1", "port": 3128},
    "defaults": {
        "$comment": "defaults",
        "limits": {"$comment": "limits", "tasks_max": 128, "wall_seconds": 600},
    },
    "groups": {
        "$comment": "groups",
        "main": {
            "uid": 61000,
            "main": True,
            "mounts": [{"host": "/srv/project", "sandbox": "/workspace/project", "writable": True}],
            "egress": {
                "$comment": "egress",
                "cidrs": ["140.82.112.0/20", "2001:db8::/32"],
                "domains": ["github.com", "*.githubusercontent.com"],
            },
            "read_only_paths": ["/nix/store/abc-ripgrep"],
            "limits": {"memory_max_bytes": GiB, "cpu_quota_percent": 50},
        },
        "family": {
            "$comment": "group",
            "uid": 61001,
            "mounts": [
                {"$comment": "mount", "host": "/srv/photos", "sandbox": "/workspace/photos"},
                {"host": "/srv/inbox", "sandbox": "/workspace/inbox", "writable": True},
            ],
        },
        "ops-team": {"uid": 61002, "egress": {"cidrs": ["192.0.2.0/24"]}},
    },
}

# A proxy on IPv6 and a domains-only group; used by the compiler's tests too.
IPV6_PROXY: dict[str, Any] = {
    "version": 1,
    "data_dir": "/srv/nanoclaw",
    "proxy": {"address": "::1", "port": 8080},
    "groups": {"web": {"uid": 62000, "egress": {"domains": ["example.org"]}}},
}

# A group whose tools come from the Nix store: its closure only, and on PATH.
STORE_TOOLS: dict[str, Any] = {
    "version": 1,
    "data_dir": "/var/lib/nanoclaw",
    "groups": {
        "tools": {
            "uid": 61000,
            "read_only_paths": ["/nix/store/abc-coreutils", "/nix/store/def-glibc"],
            "path": ["/nix/store/abc-coreutils/bin", "/usr/local//bin/"],
            "empty_paths": ["/nix/store"],
        }
    },
}

# Every policy these tests accept; each must also conform to policies/schema.json.
VALID_FIXTURES: dict[str, dict[str, Any]] = {
    "minimal": MINIMAL,
    "full": FULL,
    "ipv6-proxy": IPV6_PROXY,
    "store-tools": STORE_TOOLS,
    "limits-at-bounds": {
        "version": 1,
        "data_dir": "/d",
        "defaults": {
            "limits": {
                "memory_max_bytes": 16 * 1024**2,
                "tasks_max": 8,
                "cpu_quota_percent": 1,
                "wall_seconds": 1,
                "output_bytes": 1024,
            }
        },
        "groups": {
            "g": {
                "uid": 2147483646,
                "limits": {
                    "memory_max_bytes": 64 * GiB,
                    "tasks_max": 4096,
                    "cpu_quota_percent": 6400,
                    "wall_seconds": 86400,
                    "output_bytes": 64 * 1024**2,
                },
            },
            "h": {"uid": 1000},
        },
    },
}


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A directory of real files outside /tmp: the policy refuses mount sources in /tmp
    (every unit has its own), so trees made there could not be mounted at all."""
    base = Path("/var/cache/nanoclaw-tests")
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=base))
    yield path
    shutil.rmtree(path)


def at(data: dict[str, Any], location: tuple[str | int, ...], value: object) -> dict[str, Any]:
    """A deep copy of `data` with the item at `location` set (or removed, for DELETE)."""
    result = copy.deepcopy(data)
    target: Any = result
    for part in location[:-1]:
        target = target[part]
    if value is DELETE:
        del target[location[-1]]
    else:
        target[location[-1]] = value
    return result


def refusal(data: object, policy_path: str = POLICY_PATH) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_policy(data, policy_path)  # type: ignore[arg-type]
    return info.value


def refused(data: object, key: str, *fragments: str, policy_path: str = POLICY_PATH) -> None:
    error = refusal(data, policy_path)
    assert error.key == key, str(error)
    for fragment in fragments:
        assert fragment in error.reason, str(error)


def group_with(**entries: object) -> dict[str, Any]:
    """MINIMAL with one group "g" (uid 61000) plus `entries`."""
    return at(MINIMAL, ("groups",), {"g": {"uid": 61000, **entries}})


def mount(host: str, sandbox: str = "/workspace/m", **extra: object) -> dict[str, Any]:
    return group_with(mounts=[{"host": host, "sandbox": sandbox, **extra}])


# --- what a good file gives ---------------------------------------------------------


def test_the_full_policy_parses_to_exact_records() -> None:
    policy = parse_policy(FULL, POLICY_PATH)
    defaults = dataclasses.replace(DEFAULT_LIMITS, tasks_max=128, wall_seconds=600)
    assert policy == Policy(
        data_dir="/var/lib/nanoclaw",
        protected_paths=("/etc/nanoclaw", "/run/credentials"),
        blocked_patterns=(*DEFAULT_BLOCKED_PATTERNS, "extra-pattern"),
        proxy=("127.0.0.1", 3128),
        groups=policy.groups,
        policy_path=POLICY_PATH,
    )
    assert dict(policy.groups) == {
        "main": GroupPolicy(
            name="main",
            uid=61000,
            main=True,
            mounts=(Mount("/srv/project", "/workspace/project", True),),
            egress=Egress(
                cidrs=(
                    ipaddress.IPv4Network("140.82.112.0/20"),
                    ipaddress.IPv6Network("2001:db8::/32"),
                ),
                domains=("github.com", "*.githubusercontent.com"),
            ),
            read_only_paths=("/nix/store/abc-ripgrep",),
            limits=dataclasses.replace(defaults, memory_max_bytes=GiB, cpu_quota_percent=50),
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
        ),
        "ops-team": GroupPolicy(
            name="ops-team",
            uid=61002,
            main=False,
            mounts=(),
            egress=Egress((ipaddress.IPv4Network("192.0.2.0/24"),), ()),
            read_only_paths=(),
            limits=defaults,
        ),
    }
    assert list(policy.groups) == ["main", "family", "ops-team"]  # the file's order


def test_a_minimal_policy_has_no_groups_no_proxy_and_the_builtin_patterns() -> None:
    policy = parse_policy(MINIMAL, POLICY_PATH)
    assert policy.groups == {}
    assert policy.proxy is None
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
    assert main.egress.cidrs == (ipaddress.IPv4Network("140.82.112.0/20"),)
    assert family.mounts == (Mount("/srv/photos", "/workspace/photos", False),)
    assert not family.egress.any and main.egress.any
    assert policy.proxy == ("127.0.0.9", 3128)


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


def test_the_proxy_address_is_normalised() -> None:
    data = at(IPV6_PROXY, ("proxy", "address"), "0:0:0:0:0:0:0:1")
    assert parse_policy(data, POLICY_PATH).proxy == ("::1", 8080)


def test_a_proxy_without_domain_groups_is_allowed() -> None:
    data = at(MINIMAL, ("proxy",), {"address": "127.0.0.2", "port": 1})
    assert parse_policy(data, POLICY_PATH).proxy == ("127.0.0.2", 1)


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
        (("proxy", "host"), "x", "proxy.host", "unknown"),
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
        (("proxy",), "127.0.0.1:3128", "proxy", "must be a table"),
    ],
)
def test_structure_and_types_are_checked(
    location: tuple[str | int, ...], value: object, key: str, fragment: str
) -> None:
    error = refusal(at(FULL, location, value))
    assert error.key.startswith(key), str(error)
    assert fragment in error.reason, str(error)


@pytest.mark.parametrize(
    "name", ["Family", "-x", "_x", "fam ily", "family\n", "a" * 18, "", "é", "global", "a.b"]
)
def test_group_names_are_checked(name: str) -> None:
    error = refusal(at(MINIMAL, ("groups",), {name: {"uid": 61000}}))
    assert error.key == "groups." + key_part(name)
    assert ("reserved" if name == "global" else "must match") in error.reason


@pytest.mark.parametrize("name", ["a", "0", "a" * 17, "my-group", "my_group", "9-9"])
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


LIMIT_BOUNDS = {
    "memory_max_bytes": (16 * 1024**2, 64 * GiB),
    "tasks_max": (8, 4096),
    "cpu_quota_percent": (1, 6400),
    "wall_seconds": (1, 86400),
    "output_bytes": (1024, 64 * 1024**2),
}


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


# --- symlinks -------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Any]:
    """A data dir, a protected dir and a policy file under tmp_path, with a policy naming them."""
    for name in ("data", "protected", "keys/.ssh", "plain", "etc"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "etc" / "policy.json").write_text("{}")
    return {
        "version": 1,
        "data_dir": str(tmp_path / "data"),
        "protected_paths": [str(tmp_path / "protected")],
        "groups": {"g": {"uid": 61000, "mounts": []}},
    }


def link_mount(tree: dict[str, Any], tmp_path: Path, link: str, target: Path) -> dict[str, Any]:
    (tmp_path / link).symlink_to(target)
    return at(
        tree, ("groups", "g", "mounts"), [{"host": str(tmp_path / link), "sandbox": "/workspace/x"}]
    )


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("data", "the data directory"),
        ("data/groups/other", "the data directory"),
        ("protected", "protected path"),
        ("etc/policy.json", "the policy file"),
        ("etc", "the policy file"),
        ("keys/.ssh", "blocked pattern '.ssh'"),
        ("keys/.ssh/id_rsa", "blocked pattern '.ssh'"),
        ("/", "whole host file system"),
        ("/var/lib", "path hidden from every tool"),
        ("/proc/self", "kernel file system"),
    ],
)
def test_symlinks_are_resolved_before_every_check(
    tree: dict[str, Any], tmp_path: Path, target: str, fragment: str
) -> None:
    data = link_mount(tree, tmp_path, "innocent", tmp_path / target)
    error = refusal(data, str(tmp_path / "etc" / "policy.json"))
    assert error.key == "groups.g.mounts[0].host"
    assert fragment in error.reason and "(resolved: " in error.reason, str(error)


def test_a_path_that_cannot_be_resolved_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def realpath(path: str, strict: bool = False) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os.path, "realpath", realpath)
    refused(mount("/srv/x"), "groups.g.mounts[0].host", "cannot resolve /srv/x: Permission denied")


def test_a_chain_of_symlinks_is_followed(tree: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "hop").symlink_to(tmp_path / "data")
    data = link_mount(tree, tmp_path, "innocent", tmp_path / "hop" / "groups")
    assert "the data directory" in refusal(data, str(tmp_path / "p.json")).reason


def test_a_symlinked_parent_component_is_resolved(tree: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "keys" / ".ssh" / "sub").mkdir()
    (tmp_path / "k").symlink_to(tmp_path / "keys")
    data = at(
        tree,
        ("groups", "g", "mounts"),
        [{"host": str(tmp_path / "k/.ssh/sub"), "sandbox": "/workspace/x"}],
    )
    assert "'.ssh'" in refusal(data, str(tmp_path / "p.json")).reason


def test_a_blocked_name_on_the_link_itself_is_refused(tree: dict[str, Any], tmp_path: Path) -> None:
    # The written path has the blocked component, the resolved one does not.
    data = link_mount(tree, tmp_path, ".aws", tmp_path / "plain")
    assert "'.aws'" in refusal(data, str(tmp_path / "p.json")).reason


def test_protected_paths_that_are_symlinks_protect_their_target(
    tree: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "real-secret").mkdir()
    (tmp_path / "protected-link").symlink_to(tmp_path / "real-secret")
    data = at(tree, ("protected_paths",), [str(tmp_path / "protected-link")])
    data = at(
        data,
        ("groups", "g", "mounts"),
        [{"host": str(tmp_path / "real-secret/x"), "sandbox": "/workspace/x"}],
    )
    assert "a protected path" in refusal(data, str(tmp_path / "p.json")).reason


def test_a_symlinked_data_dir_protects_its_target(tree: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "data-link").symlink_to(tmp_path / "data")
    data = at(tree, ("data_dir",), str(tmp_path / "data-link"))
    data = at(
        data,
        ("groups", "g", "mounts"),
        [{"host": str(tmp_path / "data"), "sandbox": "/workspace/x"}],
    )
    assert "the data directory" in refusal(data, str(tmp_path / "p.json")).reason


def test_a_good_symlink_is_stored_resolved(tree: dict[str, Any], tmp_path: Path) -> None:
    data = link_mount(tree, tmp_path, "photos", tmp_path / "plain")
    policy = parse_policy(data, str(tmp_path / "p.json"))
    assert policy.group("g").mounts[0].host == str(tmp_path / "plain")


def test_check_host_path_catches_a_link_swapped_after_loading(
    tree: dict[str, Any], tmp_path: Path
) -> None:
    data = link_mount(tree, tmp_path, "photos", tmp_path / "plain")
    policy = parse_policy(data, str(tmp_path / "p.json"))
    assert policy.check_host_path(str(tmp_path / "photos"), "x") == str(tmp_path / "plain")
    (tmp_path / "photos").unlink()
    (tmp_path / "photos").symlink_to(tmp_path / "data")
    with pytest.raises(ConfigError, match="the data directory"):
        policy.check_host_path(str(tmp_path / "photos"), "x")


def test_missing_host_paths_are_still_judged(tree: dict[str, Any], tmp_path: Path) -> None:
    data = at(
        tree,
        ("groups", "g", "mounts"),
        [{"host": str(tmp_path / "nope/.ssh"), "sandbox": "/workspace/x"}],
    )
    assert "'.ssh'" in refusal(data, str(tmp_path / "p.json")).reason
    data = at(
        tree,
        ("groups", "g", "mounts"),
        [{"host": str(tmp_path / "nope/y"), "sandbox": "/workspace/x"}],
    )
    assert parse_policy(data, str(tmp_path / "p.json")).group("g").mounts[0].host.endswith("nope/y")


def test_the_hidden_paths_are_what_the_units_hide() -> None:
    policy = parse_policy(FULL, POLICY_PATH)
    sealed = [path for _, path in policy.sealed_paths()]
    assert sealed[:4] == ["/var/lib/nanoclaw", "/etc/nanoclaw", "/run/credentials", POLICY_PATH]
    assert set(ALWAYS_HIDDEN) | {"/proc", "/sys", "/dev"} <= set(sealed)


# --- refusals: egress and proxy -------------------------------------------------------


@pytest.mark.parametrize(
    ("cidr", "fragment"),
    [
        ("140.82.112.1/20", "140.82.112.1/20 has host bits set: the network is 140.82.112.0/20"),
        ("2001:db8::1/32", "has host bits set: the network is 2001:db8::/32"),
        ("10.0.0.0/33", "must be an IP network"),
        ("github.com", "must be an IP network"),
        ("10.0.0.0 /8", "must be an IP network"),
        (" 10.0.0.0/8", "must be an IP network"),
        ("fe80::1%eth0/128", "must be an IP network"),
        ("010.0.0.0/8", "must be an IP network"),
        ("", "must be an IP network"),
        (167772160, "must be an IP network"),
        (["10.0.0.0/8"], "must be an IP network"),
    ],
)
def test_cidrs_are_checked(cidr: object, fragment: str) -> None:
    refused(group_with(egress={"cidrs": [cidr]}), "groups.g.egress.cidrs[0]", fragment)


def test_duplicate_cidrs_are_refused() -> None:
    data = group_with(egress={"cidrs": ["10.0.0.0/8", "10.0.0.0/255.0.0.0"]})
    refused(data, "groups.g.egress.cidrs[1]", "listed twice")


def test_single_addresses_are_networks() -> None:
    data = group_with(egress={"cidrs": ["192.0.2.7", "2001:db8::7"]})
    cidrs = parse_policy(data, POLICY_PATH).group("g").egress.cidrs
    assert [str(c) for c in cidrs] == ["192.0.2.7/32", "2001:db8::7/128"]


BAD_DOMAINS = [
    "GitHub.com",
    "*",
    "*.",
    "*.com",
    "**.github.com",
    "*.*.com",
    "a.*.com",
    "*github.com",
    "github.com.",
    ".github.com",
    "1.2.3.4",
    "10.0.0.1",
    "[::1]",
    "::1",
    "github.com:443",
    "https://github.com",
    "github.com/path",
    "a..b.com",
    "-a.com",
    "a-.com",
    "a_b.com",
    "ex ample.com",
    "",
    "x" * 64 + ".com",
    ".".join(["a" * 63] * 4) + ".com",
    "bücher.de",
    "github.com\n",
    "user@github.com",
]


@pytest.mark.parametrize("domain", BAD_DOMAINS)
def test_domains_are_checked(domain: str) -> None:
    data = at(
        group_with(egress={"domains": [domain]}), ("proxy",), {"address": "127.0.0.1", "port": 1}
    )
    refused(data, "groups.g.egress.domains[0]", "lowercase DNS name")


@pytest.mark.parametrize(
    "domain",
    [
        "github.com",
        "localhost",
        "a-b.co",
        "xn--bcher-kva.de",
        "*.co.uk",
        "1password.com",
        "x" * 63 + ".com",
    ],
)
def test_good_domains_are_accepted(domain: str) -> None:
    data = at(
        group_with(egress={"domains": [domain]}), ("proxy",), {"address": "127.0.0.1", "port": 1}
    )
    assert parse_policy(data, POLICY_PATH).group("g").egress.domains == (domain,)


def test_duplicate_domains_are_refused() -> None:
    data = at(
        FULL, ("groups", "main", "egress", "domains"), ["a.example", "b.example", "a.example"]
    )
    refused(data, "groups.main.egress.domains[2]", "listed twice (also at [0])")


def test_domains_need_a_proxy() -> None:
    refused(at(FULL, ("proxy",), DELETE), "proxy", "groups.main.egress.domains", "is required")


@pytest.mark.parametrize(
    ("proxy", "key", "fragment"),
    [
        ({"address": "localhost", "port": 3128}, "proxy.address", "IP address"),
        ({"address": "0.0.0.0", "port": 3128}, "proxy.address", "IP address"),
        ({"address": "::", "port": 3128}, "proxy.address", "IP address"),
        ({"address": "224.0.0.1", "port": 3128}, "proxy.address", "IP address"),
        ({"address": "fe80::1%eth0", "port": 3128}, "proxy.address", "IP address"),
        ({"address": "127.0.0.1:3128", "port": 3128}, "proxy.address", "IP address"),
        ({"address": 2130706433, "port": 3128}, "proxy.address", "IP address"),
        ({"port": 3128}, "proxy.address", "is required"),
        ({"address": "127.0.0.1"}, "proxy.port", "is required"),
        ({"address": "127.0.0.1", "port": 0}, "proxy.port", "from 1 to 65535"),
        ({"address": "127.0.0.1", "port": 65536}, "proxy.port", "from 1 to 65535"),
        ({"address": "127.0.0.1", "port": "3128"}, "proxy.port", "from 1 to 65535"),
        ({"address": "127.0.0.1", "port": True}, "proxy.port", "from 1 to 65535"),
    ],
)
def test_the_proxy_is_checked(proxy: object, key: str, fragment: str) -> None:
    refused(at(FULL, ("proxy",), proxy), key, fragment)


# --- domain matching ------------------------------------------------------------------

ALLOWED = ("github.com", "*.githubusercontent.com")


@pytest.mark.parametrize(
    "domain",
    [
        "github.com",
        "GitHub.COM",
        "github.com.",
        "raw.githubusercontent.com",
        "a.b.githubusercontent.com",
        "RAW.GithubUserContent.com.",
    ],
)
def test_domain_allowed(domain: str) -> None:
    assert domain_allowed(domain, ALLOWED)


@pytest.mark.parametrize(
    "domain",
    [
        "githubusercontent.com",  # *.suffix does not match the suffix itself
        "api.github.com",  # an exact entry does not match names below it
        "evilgithub.com",
        "github.com.evil.com",
        "evilgithubusercontent.com",
        "githubusercontent.com.evil.net",
        "x.githubusercontent.com.evil.net",
        "github.com..",
        ".github.com",
        "github.com:443",
        "github.com/",
        "user@github.com",
        "140.82.112.3",
        "[::1]",
        "",
        ".",
        "*.githubusercontent.com",
        "x.githubusercontent.com\x00",
        "\u212aube.githubusercontent.com",  # KELVIN SIGN lowers to an ASCII "k"
        "g\u0131thub.com",  # dotless i
        "github.com\n",
        "a" * 64 + ".githubusercontent.com",
    ],
)
def test_domain_refused(domain: str) -> None:
    assert not domain_allowed(domain, ALLOWED)


def test_domain_allowed_with_nothing_allowed() -> None:
    assert not domain_allowed("github.com", ())
    assert not domain_allowed("github.com", ("*",))
    assert domain_allowed("github.com", ("GITHUB.COM",))


def test_is_domain() -> None:
    assert is_domain("a.b") and is_domain("a")
    assert not is_domain("a.1") and not is_domain("1.2.3.4") and not is_domain("A.b")


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


# --- the schema -----------------------------------------------------------------------


def schema_problems(
    schema: dict[str, Any], value: object, root: dict[str, Any], where: str = ""
) -> list[str]:
    """A small JSON Schema check, for the keywords schema.json uses (no dependency)."""
    problems: list[str] = []
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        problems += schema_problems(target, value, root, where)
    kinds = {
        "object": dict,
        "array": list,
        "string": str,
        "boolean": bool,
        "integer": int,
    }
    kind = schema.get("type")
    if kind and (
        not isinstance(value, kinds[kind]) or (kind == "integer" and isinstance(value, bool))
    ):
        return [f"{where}: not {kind}"]
    if "const" in schema and (value != schema["const"] or type(value) is not type(schema["const"])):
        problems.append(f"{where}: not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: not in enum")
    if "not" in schema and not schema_problems(schema["not"], value, root, where):
        problems.append(f"{where}: matches 'not'")
    if "anyOf" in schema and all(schema_problems(s, value, root, where) for s in schema["anyOf"]):
        problems.append(f"{where}: matches nothing in anyOf")
    for sub in schema.get("allOf", []):
        problems += schema_problems(sub, value, root, where)
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{where}: does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get(
            "maxLength", len(value)
        ):
            problems.append(f"{where}: bad length")
    if isinstance(value, int) and not isinstance(value, bool):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            problems.append(f"{where}: out of range")
    if isinstance(value, list):
        if schema.get("uniqueItems") and len({json.dumps(v) for v in value}) < len(value):
            problems.append(f"{where}: items not unique")
        for index, item in enumerate(value):
            problems += schema_problems(schema.get("items", {}), item, root, f"{where}[{index}]")
    if isinstance(value, dict):
        problems += [
            f"{where}.{name}: missing" for name in schema.get("required", []) if name not in value
        ]
        properties = schema.get("properties", {})
        for name, item in value.items():
            if "propertyNames" in schema:
                problems += schema_problems(
                    schema["propertyNames"], name, root, f"{where}.{name} (name)"
                )
            if name in properties:
                problems += schema_problems(properties[name], item, root, f"{where}.{name}")
            elif schema.get("additionalProperties") is False:
                problems.append(f"{where}.{name}: not allowed")
            elif isinstance(schema.get("additionalProperties"), dict):
                problems += schema_problems(
                    schema["additionalProperties"], item, root, f"{where}.{name}"
                )
    return problems


def schema_valid(value: object) -> bool:
    """Both the hand check and, when it is installed, the jsonschema package agree."""
    schema = json.loads(SCHEMA.read_text())
    ours = not schema_problems(schema, value, schema)
    try:
        import jsonschema
    except ImportError:
        return ours
    theirs = jsonschema.Draft202012Validator(schema).is_valid(value)
    assert ours == theirs, (value, schema_problems(schema, value, schema))
    return ours


def test_the_schema_is_a_valid_2020_12_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("name", VALID_FIXTURES)
def test_every_valid_fixture_conforms_to_the_schema(name: str) -> None:
    parse_policy(VALID_FIXTURES[name], POLICY_PATH)  # valid to the parser, too
    assert schema_valid(VALID_FIXTURES[name])


def test_the_example_conforms_to_the_schema() -> None:
    assert schema_valid(json.loads(EXAMPLE.read_text()))


@pytest.mark.parametrize(
    ("location", "value"),
    [
        (("version",), 2),
        (("extra",), 1),
        (("data_dir",), DELETE),
        (("data_dir",), "relative"),
        (("groups", "family", "uid"), 65534),
        (("groups", "family", "uid"), DELETE),
        (("groups", "global"), {"uid": 61009}),
        (("groups", "Bad"), {"uid": 61009}),
        (("groups", "family", "mounts", 0, "sandbox"), "/workspace/group"),
        (("groups", "family", "mounts", 0, "sandbox"), "/srv/x"),
        (("groups", "family", "mounts", 0, "sandbox"), "/workspace/a:b"),
        (("groups", "family", "mounts", 0, "host"), "/srv/../etc"),
        (("groups", "main", "egress", "domains", 0), "*.com"),
        (("groups", "main", "egress", "domains", 0), "GitHub.com"),
        (("groups", "main", "limits", "tasks_max"), 4097),
        (("groups", "main", "path"), ["bin"]),
        (("groups", "main", "path"), ["/opt/a:/opt/b"]),
        (("groups", "main", "empty_paths"), ["/"]),
        (("groups", "main", "empty_paths"), ["relative"]),
        (("proxy", "port"), 0),
        (("$comment",), 1),
    ],
)
def test_the_schema_refuses_what_the_parser_refuses(
    location: tuple[str | int, ...], value: object
) -> None:
    data = at(FULL, location, value)
    with pytest.raises(ConfigError):
        parse_policy(data, POLICY_PATH)
    assert not schema_valid(data)


def test_schema_and_parser_agree_on_the_limits() -> None:
    schema = json.loads(SCHEMA.read_text())["$defs"]["limits"]["properties"]
    for name, (low, high) in LIMIT_BOUNDS.items():
        assert (schema[name]["minimum"], schema[name]["maximum"]) == (low, high)
        assert schema[name]["default"] == getattr(DEFAULT_LIMITS, name)


# --- bind sources no tool can change between the check and the bind --------------------


def entry(host: str, sandbox: str = "/workspace/m", **extra: object) -> dict[str, Any]:
    return {"host": host, "sandbox": sandbox, **extra}


def two_groups(*mounts: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """A policy of groups a (uid 61000) and b (61001), each with the mounts given to it."""
    groups: dict[str, Any] = {"a": {"uid": 61000, "mounts": []}, "b": {"uid": 61001, "mounts": []}}
    for group, entry in mounts:
        groups[group]["mounts"].append(entry)
    return {**MINIMAL, "groups": groups}


@pytest.mark.parametrize(
    ("first", "second", "relation"),
    [
        ("/srv/proj", "/srv/proj/sub", "is inside"),
        ("/srv/proj/sub", "/srv/proj", "contains"),
    ],
)
@pytest.mark.parametrize("same_group", [True, False])
def test_mounts_may_not_nest_within_or_across_groups(
    first: str, second: str, relation: str, same_group: bool
) -> None:
    # The red-team case: /srv/proj writable and /srv/proj/sub read-only; the inner one was
    # writable through the outer, and its source swappable by whoever wrote the outer.
    data = two_groups(
        ("a", entry(first, "/workspace/proj", writable=True)),
        ("a" if same_group else "b", entry(second, "/workspace/sub")),
    )
    key = "groups.a.mounts[1].host" if same_group else "groups.b.mounts[0].host"
    refused(data, key, f"{second} {relation} groups.a.mounts[0].host {first}", "may not nest")


def test_one_group_may_not_mount_a_directory_twice() -> None:
    data = two_groups(
        ("a", entry("/srv/proj", "/workspace/one", writable=True)),
        ("a", entry("/srv/proj", "/workspace/two")),
    )
    refused(data, "groups.a.mounts[1].host", "/srv/proj is groups.a.mounts[0].host")


def test_two_groups_may_share_one_directory() -> None:
    data = two_groups(
        ("a", entry("/srv/shared", "/workspace/shared", writable=True)),
        ("b", entry("/srv/shared", "/workspace/shared")),
    )
    policy = parse_policy(data, POLICY_PATH)
    assert policy.group("b").mounts[0].host == "/srv/shared"


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """/<tmp>/top/proj, made of directories root owns and only root may write."""
    (tmp_path / "top" / "proj").mkdir(parents=True)
    for directory in (tmp_path, tmp_path / "top"):
        os.chown(directory, 0, 0)
        directory.chmod(0o755)
    return tmp_path


def with_source(path: Path, **extra: object) -> dict[str, Any]:
    return two_groups(("a", entry(str(path), "/workspace/proj", **extra)))


def test_a_source_whose_ancestors_only_root_writes_is_accepted(sources: Path) -> None:
    # The control for the refusals below: the same tree, nothing changed in it.
    policy = parse_policy(with_source(sources / "top" / "proj", writable=True), POLICY_PATH)
    assert policy.group("a").mounts[0].host == str(sources / "top" / "proj")


@pytest.mark.parametrize(
    ("change", "how"),
    [
        (lambda top: os.chown(top, 61001, 61001), "owns"),  # another group's tool user
        (lambda top: os.chown(top, 61000, 0), "owns"),  # the group's own
        (lambda top: (os.chown(top, 0, 61000), top.chmod(0o775)), "may write to"),
        (lambda top: top.chmod(0o757), "may write to"),
    ],
    ids=["owned-by-another-group", "owned-by-the-group", "group-writable", "world-writable"],
)
def test_a_source_below_a_directory_a_tool_user_can_write_is_refused(
    sources: Path, change: Any, how: str
) -> None:
    top = sources / "top"
    change(top)
    error = refusal(with_source(top / "proj"))
    assert error.key == "groups.a.mounts[0].host"
    assert "tool user (uid 6100" in error.reason and f"{how} {top}," in error.reason
    assert "swap a path component" in error.reason


def test_a_read_only_path_below_a_directory_a_tool_user_owns_is_refused(sources: Path) -> None:
    os.chown(sources / "top", 61001, 61001)
    data = at(two_groups(), ("groups", "a", "read_only_paths"), [str(sources / "top" / "proj")])
    refused(data, "groups.a.read_only_paths[0]", "group b's tool user (uid 61001) owns")


def test_a_sticky_directory_is_safe_unless_a_tool_user_owns_the_next_component(
    sources: Path,
) -> None:
    top = sources / "top"
    top.chmod(0o1777)  # like /tmp: anyone creates, only an entry's owner renames it
    assert parse_policy(with_source(top / "proj"), POLICY_PATH).group("a").mounts
    os.chown(top / "proj", 61000, 61000)
    refused(with_source(top / "proj"), "groups.a.mounts[0].host", f"may write to {top},")


def test_a_supplementary_group_of_a_tool_user_counts(
    sources: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # systemd gives a unit its user's supplementary groups, from the user database; here
    # group a's tool user is in group 4242, which may write to top.
    top = sources / "top"
    os.chown(top, 0, 4242)
    top.chmod(0o775)
    assert parse_policy(with_source(top / "proj"), POLICY_PATH).group("a").mounts
    users = {61000: pwd.struct_passwd(("tool-a", "x", 61000, 61000, "", "/", "/bin/false"))}

    def getpwuid(uid: int) -> pwd.struct_passwd:
        return users[uid]  # KeyError for the others, as for a user the database lacks

    monkeypatch.setattr(pwd, "getpwuid", getpwuid)
    monkeypatch.setattr(os, "getgrouplist", lambda name, gid: [gid, 4242])
    refused(with_source(top / "proj"), "groups.a.mounts[0].host", f"may write to {top},")


@pytest.fixture(scope="module")
def setfacl() -> str:
    """setfacl, installed with the project's script when missing."""
    subprocess.run([REPO / "scripts" / "host-deps"], check=True)
    found = shutil.which("setfacl")
    assert found, "scripts/host-deps succeeded but setfacl is not on PATH"
    return found


@pytest.mark.parametrize(
    ("entries", "refused_"),
    [
        ("u:61000:rwx", True),
        ("g:61001:rwx", True),
        ("u:61000:rwx,m::r-x", False),  # the mask takes write away
        ("u:61000:r-x", False),
    ],
)
def test_a_posix_acl_that_lets_a_tool_user_write_counts(
    setfacl: str, sources: Path, entries: str, refused_: bool
) -> None:
    top = sources / "top"
    subprocess.run([setfacl, "-m", entries, str(top)], check=True)
    if refused_:
        refused(with_source(top / "proj"), "groups.a.mounts[0].host", f"may write to {top},")
    else:
        assert parse_policy(with_source(top / "proj"), POLICY_PATH).group("a").mounts


def test_check_binds_catches_an_ancestor_made_writable_after_loading(sources: Path) -> None:
    # The broker re-runs check_binds at each unit start: the owner's later chown counts.
    policy = parse_policy(with_source(sources / "top" / "proj"), POLICY_PATH)
    os.chown(sources / "top", 61000, 61000)
    with pytest.raises(ConfigError, match=re.escape("tool user (uid 61000) owns")):
        policy.check_binds(policy.group("a"), policy.tool_users())


def test_protect_defaults_to_true_and_may_be_switched_off() -> None:
    data = two_groups(
        ("a", entry("/srv/one", "/workspace/one")),
        ("a", entry("/srv/two", "/workspace/two", protect=False)),
    )
    mounts = parse_policy(data, POLICY_PATH).group("a").mounts
    assert [m.protect for m in mounts] == [True, False]
    refused(
        two_groups(("a", entry("/srv/one", protect="no"))),
        "groups.a.mounts[0].protect",
        "must be true or false",
    )
