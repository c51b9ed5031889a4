"""The sandbox policy: what each group's tool units may see, reach and use.

The file is JSON, written by the NixOS module as root and read by the root broker, which
imports this module and nothing from the agent side. Everything is checked here, once,
with errors that name the dotted key like the configuration's (`ConfigError`): unknown
keys, types and ranges, and the rules that keep a mount from exposing what the sandbox
hides (the data directory, protected paths, the policy file itself, credentials).

Host paths are checked after resolving symlinks, and their components against the blocked
patterns (see `blocked_component` for the exact rule). Paths can change after the policy
is read, so the broker must re-run `Policy.check_host_path` at unit start.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from nanoclaw.config_reader import (
    ConfigError,
    Table,
    describe,
    key_part,
    parse_json_object,
    read_text,
)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

GROUP_PATTERN = r"[a-z0-9][a-z0-9_-]{0,63}"
RESERVED_GROUPS = frozenset({"global"})  # DATA/global is the memory all groups share
MIN_UID, MAX_UID = 1000, 2147483646
NOBODY_UID = 65534

# Inside every unit: a tmpfs at WORKSPACE holding the group's own folder, the shared
# memory and the group's mounts. The two reserved paths are bound by the broker.
WORKSPACE = "/workspace"
GROUP_SANDBOX = "/workspace/group"
GLOBAL_SANDBOX = "/workspace/global"
RESERVED_SANDBOX = (GROUP_SANDBOX, GLOBAL_SANDBOX)

# Made inaccessible in every unit (beside data_dir, protected_paths and the policy file);
# so no mount may expose them under another name either. /run is replaced by an empty
# tmpfs (one mount for D-Bus, systemd's and nscd's sockets, the users' runtime
# directories, the world-writable /run/lock and the broker's own socket).
RUN = "/run"
ALWAYS_HIDDEN = (
    RUN,
    "/var/lib",
    "/var/log",
    "/root",
)
# A bind of these would bypass PrivateDevices=, ProtectProc= and ProtectKernelTunables=.
KERNEL_FILE_SYSTEMS = ("/proc", "/sys", "/dev")

# NanoClaw's list, matched by `blocked_component`; a policy's blocked_patterns extend it.
DEFAULT_BLOCKED_PATTERNS = (
    ".ssh",
    ".gnupg",
    ".gpg",
    ".aws",
    ".azure",
    ".gcloud",
    ".kube",
    ".docker",
    "credentials",
    ".env",
    ".netrc",
    ".npmrc",
    ".pypirc",
    "id_rsa",
    "id_ed25519",
    "private_key",
    ".secret",
)
ENV_FILE_PREFIX = ".env"  # .env.local, .envrc, .env-prod: all dotenv files hold secrets

_COMMENT = "$comment"
_TOP_KEYS = (
    "version",
    "data_dir",
    "protected_paths",
    "blocked_patterns",
    "proxy",
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
)
_MOUNT_KEYS = ("host", "sandbox", "writable")
_EGRESS_KEYS = ("cidrs", "domains")
_PROXY_KEYS = ("address", "port")
# name, default, lowest, highest
_LIMITS = (
    ("memory_max_bytes", 512 * MiB, 16 * MiB, 64 * GiB),
    ("tasks_max", 64, 8, 4096),
    ("cpu_quota_percent", 100, 1, 6400),
    ("wall_seconds", 300, 1, 86400),
    ("output_bytes", MiB, KiB, 64 * MiB),
)

# C0 and C1 controls (NUL and newlines among them) and the Unicode line separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_PATH_MAX = 4095  # bytes, without the terminating NUL
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PATTERN_WHAT = "one path component: 1 to 255 characters, no '/' or control characters"


class UnknownGroup(Exception):
    """A group the policy does not know: it gets no unit at all."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"group {self.name!r} is not in the sandbox policy"


@dataclass(frozen=True)
class Limits:
    memory_max_bytes: int
    tasks_max: int
    cpu_quota_percent: int  # of one CPU; 200 is two CPUs
    wall_seconds: int  # the longest timeout a request may ask for
    output_bytes: int  # kept of stdout and of stderr each; the rest is dropped


DEFAULT_LIMITS = Limits(**{name: default for name, default, _, _ in _LIMITS})


@dataclass(frozen=True)
class Mount:
    host: str  # resolved when the policy was read
    sandbox: str  # under /workspace/
    writable: bool


@dataclass(frozen=True)
class Egress:
    cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    domains: tuple[str, ...]  # reached only through the proxy

    @property
    def any(self) -> bool:
        return bool(self.cidrs or self.domains)


@dataclass(frozen=True)
class GroupPolicy:
    name: str
    uid: int  # the unit's User= and Group=
    main: bool  # may write the global memory
    mounts: tuple[Mount, ...]
    egress: Egress
    read_only_paths: tuple[str, ...]  # resolved; bound read-only at the same path
    limits: Limits
    path: tuple[str, ...] = ()  # directories put before the default PATH, in this order
    # Directories the unit sees empty (a tmpfs) but for the read_only_paths below them:
    # ["/nix/store"] with a package closure in read_only_paths hides the rest of the store.
    empty_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    data_dir: str
    protected_paths: tuple[str, ...]
    blocked_patterns: tuple[str, ...]  # the defaults, then the file's own
    proxy: tuple[str, int] | None
    groups: Mapping[str, GroupPolicy]  # read-only (a MappingProxyType)
    policy_path: str  # the file itself: protected like protected_paths

    def group(self, name: str) -> GroupPolicy:
        try:
            return self.groups[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name from a bad request
            raise UnknownGroup(str(name)) from None

    def sealed_paths(self) -> tuple[tuple[str, str], ...]:
        """(what, path) for every path no mount may be inside, equal to, or a parent of."""
        return (
            ("the data directory", self.data_dir),
            *(("a protected path", path) for path in self.protected_paths),
            ("the policy file", self.policy_path),
            *(("a path hidden from every tool", path) for path in ALWAYS_HIDDEN),
            *(("a kernel file system", path) for path in KERNEL_FILE_SYSTEMS),
        )

    def check_host_path(self, value: object, key: str) -> str:
        """The resolved form of a host path to bind, or a ConfigError saying why not.

        Every check runs on both the path as written and as resolved (os.path.realpath,
        strict=False, so a missing path is still judged), against both forms of each
        sealed path: a symlink leads around none of them. The result can go stale when a
        symlink on the way changes, so the broker is to re-run this at unit start.
        """
        path = _absolute(value, key)
        resolved = _resolve(path, key)
        for candidate in dict.fromkeys((path, resolved)):
            if candidate == "/":
                raise ConfigError(key, f"{_shown(path, resolved)} is the whole host file system")
            for what, sealed in self.sealed_paths():
                for form in dict.fromkeys((sealed, _resolve(sealed, key))):
                    relation = _relation(candidate, form)
                    if relation:
                        raise ConfigError(
                            key,
                            f"{_shown(path, resolved)} {relation} {form}, {what}, "
                            "which tool units must not see",
                        )
            hit = blocked_component(candidate, self.blocked_patterns)
            if hit:
                raise ConfigError(
                    key,
                    f"{_shown(path, resolved)} has the component {hit[0]!r}, which matches "
                    f"the blocked pattern {hit[1]!r} (credentials are never mounted)",
                )
        return resolved


def blocked_component(path: str, patterns: Sequence[str]) -> tuple[str, str] | None:
    """The first (component, pattern) of `path` that is blocked, or None.

    The rule, compared case-insensitively for each '/'-separated component C and pattern P:
    C equals P; or C starts with P followed by '.' (id_rsa.pub, credentials.json,
    private_key.pem, .env.local); or C starts with '.env' at all (.envrc, .env_prod).
    """
    for component in path.split("/"):
        folded = component.casefold()
        if folded.startswith(ENV_FILE_PREFIX):
            return component, ENV_FILE_PREFIX + "*"
        for pattern in patterns:
            wanted = pattern.casefold()
            if folded == wanted or folded.startswith(wanted + "."):
                return component, pattern
    return None


def domain_allowed(domain: str, allowed: Sequence[str]) -> bool:
    """Whether a proxy may connect to `domain` for a group allowed `allowed`.

    Case-insensitive, one trailing dot ignored. "github.com" allows exactly github.com;
    "*.githubusercontent.com" allows any name below it (a.b.githubusercontent.com too) but
    not githubusercontent.com itself, which needs its own entry. A name that is not a
    valid DNS name (an IP literal, a port, non-ASCII text) is never allowed.
    """
    if not domain.isascii():  # "\u212a".lower() is "k": no Unicode look-alikes
        return False
    name = domain.lower().removesuffix(".")
    if not is_domain(name):
        return False
    for entry in allowed:
        pattern = entry.lower()
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
        if name == pattern:
            return True
    return False


def is_domain(name: str) -> bool:
    """A lowercase DNS name: labels of 1 to 63 letters, digits and inner '-', ≤ 253 in all,
    and not an IPv4 address (no all-numeric top label)."""
    return (
        len(name) <= 253
        and _DNS_NAME.fullmatch(name) is not None
        and not name.rsplit(".", 1)[-1].isdigit()
    )


def load_policy(path: Path) -> Policy:
    """Read and validate the policy file; its own path is protected."""
    data = parse_json_object(read_text(path), path)
    return parse_policy(data, os.path.abspath(path))


def parse_policy(data: Mapping[str, Any], policy_path: str) -> Policy:
    """Validate an already parsed policy; `policy_path` is the file's absolute path."""
    if not os.path.isabs(policy_path):
        raise ValueError(f"the policy path must be absolute, not {policy_path!r}")
    top = _table(data, "", _TOP_KEYS)
    for name in ("version", "data_dir"):
        if name not in top.data:
            raise ConfigError(name, "is required")
    version = top.data["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version != 1:
        raise ConfigError("version", f"must be 1, the only policy format, not {describe(version)}")
    data_dir = _absolute(top.data["data_dir"], "data_dir")
    if data_dir == "/":
        raise ConfigError("data_dir", "must not be / (it is hidden from every tool)")
    protected = _paths(top, "protected_paths")
    for index, path in enumerate(protected):
        if path == "/":
            raise ConfigError(f"protected_paths[{index}]", "must not be / (it would hide all)")
    extra_patterns = _strings(top, "blocked_patterns", _PATTERN_WHAT, _is_pattern)
    # Without groups first: their host paths are checked against this policy's rules.
    policy = Policy(
        data_dir=data_dir,
        protected_paths=protected,
        blocked_patterns=tuple(dict.fromkeys(DEFAULT_BLOCKED_PATTERNS + extra_patterns)),
        proxy=_proxy(top),
        groups=MappingProxyType({}),
        policy_path=os.path.normpath(policy_path),
    )
    defaults = _table(top.data.get("defaults", {}), "defaults", ("limits",))
    default_limits = _limits(defaults, DEFAULT_LIMITS)
    groups = _groups(top, policy, default_limits)
    needing = next((g for g in groups.values() if g.egress.domains), None)
    if needing is not None and policy.proxy is None:
        raise ConfigError(
            "proxy",
            f"is required: groups.{needing.name}.egress.domains are reached only through "
            'the proxy; add "proxy": {"address": "127.0.0.1", "port": 3128}',
        )
    _check_read_only_overlaps(groups)
    return dataclasses.replace(policy, groups=MappingProxyType(groups))


def _groups(top: Table, policy: Policy, default_limits: Limits) -> dict[str, GroupPolicy]:
    tables = top.data.get("groups", {})
    if not isinstance(tables, Mapping):
        raise ConfigError("groups", f"must be a table of groups by name, not {describe(tables)}")
    groups: dict[str, GroupPolicy] = {}
    for name, value in tables.items():
        if name == _COMMENT:
            _comment(value, "groups." + key_part(name))
            continue
        group = _group(name, value, policy, default_limits)
        key = "groups." + key_part(name)
        owner = next((g.name for g in groups.values() if g.uid == group.uid), None)
        if owner is not None:
            raise ConfigError(
                key + ".uid", f"uid {group.uid} is already group {owner}'s; each needs its own"
            )
        main = next((g.name for g in groups.values() if g.main), None)
        if group.main and main is not None:
            raise ConfigError(key + ".main", f"only one group may be main, and {main} already is")
        groups[name] = group
    return groups


def _group(name: str, value: object, policy: Policy, default_limits: Limits) -> GroupPolicy:
    key = "groups." + key_part(name)
    if not re.fullmatch(GROUP_PATTERN, name):
        raise ConfigError(
            key, f"group name must match {GROUP_PATTERN} (lowercase letters, digits, '_' or '-')"
        )
    if name in RESERVED_GROUPS:
        raise ConfigError(key, f"group name {name!r} is reserved (the memory all groups share)")
    table = _table(value, key, _GROUP_KEYS)
    if "uid" not in table.data:
        raise ConfigError(table.at("uid"), f"is required: the group's own user ID, {MIN_UID} up")
    uid = table.integer("uid", 0, MIN_UID, MAX_UID)
    if uid == NOBODY_UID:
        raise ConfigError(table.at("uid"), "must not be 65534 (nobody), which others share")
    mounts = tuple(
        _mount(item, f"{table.at('mounts')}[{index}]", policy)
        for index, item in enumerate(_list(table, "mounts"))
    )
    for index, mount in enumerate(mounts):
        for earlier, other in enumerate(mounts[:index]):
            if _relation(mount.sandbox, other.sandbox):
                raise ConfigError(
                    f"{table.at('mounts')}[{index}].sandbox",
                    f"{mount.sandbox} overlaps mounts[{earlier}].sandbox {other.sandbox}; "
                    "mounts may not share or nest their places",
                )
    read_only = tuple(
        policy.check_host_path(item, f"{table.at('read_only_paths')}[{index}]")
        for index, item in enumerate(_list(table, "read_only_paths"))
    )
    for index, path in enumerate(read_only):
        if _relation(path, WORKSPACE):
            raise ConfigError(
                f"{table.at('read_only_paths')}[{index}]",
                f"{path} overlaps {WORKSPACE}, where only mounts go",
            )
    return GroupPolicy(
        name=name,
        uid=uid,
        main=table.flag("main", False),
        mounts=mounts,
        egress=_egress(table),
        read_only_paths=read_only,
        limits=_limits(table, default_limits),
        path=_search_path(table, policy),
        empty_paths=_empty_paths(table, policy),
    )


def _search_path(table: Table, policy: Policy) -> tuple[str, ...]:
    """`path`: as written (normalised), and judged like a host path to bind, since the
    unit runs what it finds there."""
    result: list[str] = []
    for index, item in enumerate(_list(table, "path")):
        key = f"{table.at('path')}[{index}]"
        policy.check_host_path(item, key)
        path = _absolute(item, key)
        if ":" in path:  # PATH's separator: one entry would become two
            raise ConfigError(key, "must not contain ':'")
        if path in result:
            raise ConfigError(key, f"{path} is listed twice (also at [{result.index(path)}])")
        result.append(path)
    return tuple(result)


def _empty_paths(table: Table, policy: Policy) -> tuple[str, ...]:
    """`empty_paths`: never a place the broker or the policy already decides about (an
    empty tree over the data directory would make every unit fail to start)."""
    result = _paths(table, "empty_paths")
    decided = (
        *policy.sealed_paths(),
        ("the workspace", WORKSPACE),
        ("the unit's private /tmp", "/tmp"),
    )
    for index, path in enumerate(result):
        key = f"{table.at('empty_paths')}[{index}]"
        if path == "/":
            raise ConfigError(key, "must not be / (the unit would see nothing at all)")
        for what, other in decided:
            relation = _relation(path, other)
            if relation:
                raise ConfigError(key, f"{path} {relation} {other}, {what}")
    return result


def _mount(value: object, key: str, policy: Policy) -> Mount:
    table = _table(value, key, _MOUNT_KEYS)
    for name in ("host", "sandbox"):
        if name not in table.data:
            raise ConfigError(table.at(name), "is required")
    return Mount(
        host=policy.check_host_path(table.data["host"], table.at("host")),
        sandbox=_sandbox_path(table.data["sandbox"], table.at("sandbox")),
        writable=table.flag("writable", False),
    )


def _sandbox_path(value: object, key: str) -> str:
    path = _absolute(value, key)
    if ":" in path:  # the separator of BindPaths= in unit files
        raise ConfigError(key, "must not contain ':'")
    if not path.startswith(WORKSPACE + "/"):
        raise ConfigError(key, f"must be under {WORKSPACE}/, like {WORKSPACE}/photos")
    if any(_relation(path, reserved) for reserved in RESERVED_SANDBOX):
        raise ConfigError(
            key,
            f"{path} is reserved: the broker binds the group's folder at {GROUP_SANDBOX} "
            f"and the global memory at {GLOBAL_SANDBOX}",
        )
    return path


def _egress(group: Table) -> Egress:
    table = _table(group.data.get("egress", {}), group.at("egress"), _EGRESS_KEYS)
    cidrs: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for index, item in enumerate(_list(table, "cidrs")):
        key = f"{table.at('cidrs')}[{index}]"
        network = _network(item, key)
        if network in cidrs:
            raise ConfigError(key, f"{network} is listed twice (also at [{cidrs.index(network)}])")
        cidrs.append(network)
    domains = _strings(
        table,
        "domains",
        "a lowercase DNS name like github.com, or *.example.com for the names below it",
        _is_domain_pattern,
    )
    for index, domain in enumerate(domains):
        if domain in domains[:index]:
            raise ConfigError(
                f"{table.at('domains')}[{index}]",
                f"{domain} is listed twice (also at [{domains.index(domain)}])",
            )
    return Egress(cidrs=tuple(cidrs), domains=domains)


def _network(value: object, key: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    what = "an IP network like 140.82.112.0/20 or 2001:db8::/32"
    if not isinstance(value, str) or re.search(r"[\s%]", value) or _CONTROL.search(value):
        raise ConfigError(key, f"must be {what}, not {describe(value)}")
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ConfigError(key, f"must be {what}, not {describe(value)}") from None
    raise ConfigError(key, f"{value} has host bits set: the network is {loose}")


def _proxy(top: Table) -> tuple[str, int] | None:
    if "proxy" not in top.data:
        return None
    table = _table(top.data["proxy"], "proxy", _PROXY_KEYS)
    if "port" not in table.data:
        raise ConfigError(table.at("port"), "is required: the proxy's TCP port")
    address = table.require("address", "an IP address like 127.0.0.1 or ::1", _is_proxy_address)
    return str(ipaddress.ip_address(address)), table.integer("port", 0, 1, 65535)


def _limits(parent: Table, defaults: Limits) -> Limits:
    table = _table(
        parent.data.get("limits", {}), parent.at("limits"), tuple(n for n, *_ in _LIMITS)
    )
    values = {
        name: table.integer(name, getattr(defaults, name), low, high)
        for name, _, low, high in _LIMITS
    }
    return Limits(**values)


def _check_read_only_overlaps(groups: Mapping[str, GroupPolicy]) -> None:
    # Every mount's host path is hidden in every unit (it is seen only at its sandbox
    # place), while a read-only path is bound where it is: the two must stay apart.
    for group in groups.values():
        for index, path in enumerate(group.read_only_paths):
            for other in groups.values():
                for number, mount in enumerate(other.mounts):
                    if _relation(path, mount.host):
                        raise ConfigError(
                            f"groups.{key_part(group.name)}.read_only_paths[{index}]",
                            f"{path} overlaps groups.{other.name}.mounts[{number}].host "
                            f"{mount.host}, which every unit hides",
                        )


def _table(value: object, key: str, allowed: tuple[str, ...]) -> Table:
    table = Table(value, key, (*allowed, _COMMENT))
    if _COMMENT in table.data:
        _comment(table.data[_COMMENT], table.at(_COMMENT))
    return table


def _comment(value: object, key: str) -> None:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string (it is ignored), not {describe(value)}")


def _list(table: Table, name: str) -> list[Any]:
    values = table.data.get(name, [])
    if not isinstance(values, list):
        raise ConfigError(table.at(name), f"must be a list, not {describe(values)}")
    return values


def _strings(table: Table, name: str, what: str, valid: Callable[[str], bool]) -> tuple[str, ...]:
    result: list[str] = []
    for index, value in enumerate(_list(table, name)):
        if not isinstance(value, str) or not valid(value):
            raise ConfigError(
                f"{table.at(name)}[{index}]", f"must be {what}, not {describe(value)}"
            )
        result.append(value)
    return tuple(result)


def _paths(table: Table, name: str) -> tuple[str, ...]:
    paths: list[str] = []
    for index, value in enumerate(_list(table, name)):
        key = f"{table.at(name)}[{index}]"
        path = _absolute(value, key)
        if path in paths:
            raise ConfigError(key, f"{path} is listed twice (also at [{paths.index(path)}])")
        paths.append(path)
    return tuple(paths)


def _absolute(value: object, key: str) -> str:
    """An absolute path without control characters or '..' components, normalised."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(key, f"must be an absolute path, not {describe(value)}")
    if _CONTROL.search(value):
        raise ConfigError(key, "must not contain control characters (NUL, newline, ...)")
    if not _is_text(value) or len(value.encode()) > _PATH_MAX:
        raise ConfigError(key, f"must be valid Unicode text of at most {_PATH_MAX} bytes")
    parts = [part for part in value.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ConfigError(key, "must not contain a '..' component")
    return "/" + "/".join(parts)


def _resolve(path: str, key: str) -> str:
    try:
        return os.path.realpath(path, strict=False)
    except OSError as exc:  # a link it may not read, like /proc/1/root
        raise ConfigError(
            key, f"cannot resolve {path}: {exc.strerror or type(exc).__name__}"
        ) from None


def _relation(path: str, other: str) -> str:
    """How `path` stands to `other`: "is", "is inside", "contains", or "" (apart)."""
    if path == other:
        return "is"
    if other == "/" or path.startswith(other + "/"):
        return "is inside"
    if path == "/" or other.startswith(path + "/"):
        return "contains"
    return ""


def _shown(path: str, resolved: str) -> str:
    return path if path == resolved else f"{path} (resolved: {resolved})"


def _is_text(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate from a JSON "\udc80"
        return False
    return True


def _is_pattern(value: str) -> bool:
    return (
        0 < len(value) <= 255
        and value not in (".", "..")
        and "/" not in value
        and not _CONTROL.search(value)
        and _is_text(value)
    )


def _is_domain_pattern(value: str) -> bool:
    if value.startswith("*."):
        suffix = value[2:]
        return is_domain(suffix) and "." in suffix  # no *.com: at least two labels
    return is_domain(value)


def _is_proxy_address(value: str) -> bool:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    # Scope IDs cannot go into IPAddressAllow=, and 0.0.0.0 or multicast is no proxy.
    return "%" not in value and not (address.is_unspecified or address.is_multicast)
