"""The sandbox policy: what each group's tool units may see, reach and use.

This module is the policy as the broker and the compiler use it (its types, the paths
every unit hides, the rules for host paths, blocked patterns and domains);
`nanoclaw.broker.policy_file` reads and checks the JSON file into it. The root broker imports
both and nothing from the agent side.

Host paths are checked after resolving symlinks, and their components against the blocked
patterns (see `blocked_component` for the exact rule). A path to bind must also have no
ancestor a tool user can write (`nanoclaw.broker.mount_sources` says why that makes the broker's
re-check race-free). Paths can change after the policy is read, so the broker re-runs
`Policy.check_binds` at every unit start.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from nanoclaw.broker.config_reader import (
    CONTROL_CHARACTERS,
    ConfigError,
    describe,
    key_part,
)
from nanoclaw.broker.mount_sources import ToolUser, tool_user, writable_ancestor
from nanoclaw.broker.protocol import MAIN_AGENT as MAIN_AGENT

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# A group's tool units run as user and group nanoclaw-tool-<name>, its agent unit as
# nanoclaw-agent-<name> (nanoclaw.broker.agent_unit), and a user name may have at most 31
# characters (systemd and NixOS refuse longer ones): so a group name has at most 16.
TOOL_USER_PREFIX = "nanoclaw-tool-"
AGENT_USER_PREFIX = "nanoclaw-agent-"
MAX_USER_NAME = 31
MAX_GROUP_NAME = MAX_USER_NAME - max(len(TOOL_USER_PREFIX), len(AGENT_USER_PREFIX))
GROUP_PATTERN = rf"[a-z0-9][a-z0-9_-]{{0,{MAX_GROUP_NAME - 1}}}"
RESERVED_GROUPS = frozenset({"global"})  # DATA/global is the memory all groups share
# A group's subagents, by the name the model starts them with. "main" is the name a tool
# request gives the group's own agent; "fork" and "general-purpose" are the CLI's own kinds.
SUBAGENT_PATTERN = r"[a-z][a-z0-9-]{0,31}"
RESERVED_SUBAGENTS = frozenset({MAIN_AGENT, "fork", "general-purpose"})
MIN_UID, MAX_UID = 1000, 2147483646
NOBODY_UID = 65534

# Inside every unit: a tmpfs at WORKSPACE holding the group's own folder, the shared
# memory and the group's mounts. The two reserved paths are bound by the broker.
WORKSPACE = "/workspace"
GROUP_SANDBOX = "/workspace/group"
GLOBAL_SANDBOX = "/workspace/global"
RESERVED_SANDBOX = (GROUP_SANDBOX, GLOBAL_SANDBOX)
# Under data_dir: each group's workspace, its tool user's own and bound at GROUP_SANDBOX;
# and the global memory, written by the host alone and bound read-only at GLOBAL_SANDBOX.
WORKSPACES = "groups"
GLOBAL_MEMORY = "memory/global"

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
# Each unit's own writable scratch places, each a tmpfs of the group's limits.tmp_bytes:
# PrivateTmp= would give it a directory of its own on the host's /tmp file system, which
# one group could fill for every other group and the host.
SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")
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


_PATH_MAX = 4095  # bytes, without the terminating NUL
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


class UnknownSubagent(Exception):
    """A subagent the policy does not declare for the group: its calls get no unit."""

    def __init__(self, group: str, name: str) -> None:
        super().__init__(group, name)
        self.group, self.name = group, name

    def __str__(self) -> str:
        return (
            f"subagent {self.name!r} is not declared for group {self.group!r} in the sandbox policy"
        )


class UnknownGroup(Exception):
    """A group the policy does not know: it gets no unit at all."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"group {self.name!r} is not in the sandbox policy"


# name, default, lowest, highest
LIMIT_RANGES = (
    ("memory_max_bytes", 512 * MiB, 16 * MiB, 64 * GiB),
    ("tasks_max", 64, 8, 4096),
    ("cpu_quota_percent", 100, 1, 6400),
    ("wall_seconds", 300, 1, 86400),
    ("output_bytes", MiB, KiB, 64 * MiB),
    ("tmp_bytes", 256 * MiB, MiB, 64 * GiB),
)


@dataclass(frozen=True)
class Limits:
    memory_max_bytes: int
    tasks_max: int
    cpu_quota_percent: int  # of one CPU; 200 is two CPUs
    wall_seconds: int  # the longest timeout a request may ask for
    output_bytes: int  # kept of stdout and of stderr each; the rest is dropped
    # Each of the unit's own /tmp, /var/tmp and /dev/shm: a tmpfs of this size, so no
    # group can fill a file system another group or the host writes to.
    tmp_bytes: int


DEFAULT_LIMITS = Limits(**{name: default for name, default, _, _ in LIMIT_RANGES})

# The group's agent runtime (the Claude Code CLI) runs as user nanoclaw-agent-<name>: an
# own uid, neither the tool user's nor the host's (nanoclaw.broker.agent_unit).
# name, default, lowest, highest: the CLI alone needs about 220 MiB.
AGENT_LIMIT_RANGES = (
    ("memory_max_bytes", GiB, 256 * MiB, 64 * GiB),
    ("tasks_max", 256, 32, 16384),
    ("cpu_weight", 100, 1, 10000),
)


@dataclass(frozen=True)
class AgentPolicy:
    uid: int  # the agent unit's User= and Group=
    memory_max_bytes: int
    tasks_max: int
    cpu_weight: int  # CPUWeight=: its share against the group's tool units beside it


@dataclass(frozen=True)
class Mount:
    host: str  # resolved when the policy was read
    sandbox: str  # under /workspace/
    writable: bool
    # Hide what the owner's own tools load from inside it (and secrets) from every unit;
    # see nanoclaw.broker.mount_covers. False is the policy's explicit opt-out.
    protect: bool = True


@dataclass(frozen=True)
class Egress:
    cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    domains: tuple[str, ...]  # reached only through the proxy

    @property
    def any(self) -> bool:
        return bool(self.cidrs or self.domains)


@dataclass(frozen=True)
class Subagent:
    """How one subagent's tool units are narrower than its group's; never wider."""

    name: str
    readonly: bool = False  # the workspace and every mount read-only
    no_egress: bool = False  # none of the group's egress: a network of the unit's own


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
    agent: AgentPolicy | None = None  # None: the broker starts no agent unit for it
    subagents: tuple[Subagent, ...] = ()
    workspace_writable: bool = True  # False only for a readonly subagent's units

    def narrowed(self, name: str) -> GroupPolicy:
        """The group as subagent `name`'s units get it: grants only taken away. A name the
        policy does not declare for the group is UnknownSubagent."""
        if name == MAIN_AGENT:
            return self
        sub = next((s for s in self.subagents if s.name == name), None)
        if sub is None:
            raise UnknownSubagent(self.name, str(name))
        group = self
        if sub.readonly:
            mounts = tuple(dataclasses.replace(m, writable=False) for m in self.mounts)
            group = dataclasses.replace(group, mounts=mounts, workspace_writable=False)
        if sub.no_egress:
            group = dataclasses.replace(group, egress=Egress((), ()))
        return group


@dataclass(frozen=True)
class Policy:
    data_dir: str
    protected_paths: tuple[str, ...]
    blocked_patterns: tuple[str, ...]  # the defaults, then the file's own
    groups: Mapping[str, GroupPolicy]  # read-only (a MappingProxyType)
    policy_path: str  # the file itself: protected like protected_paths

    def group(self, name: str) -> GroupPolicy:
        try:
            return self.groups[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name from a bad request
            raise UnknownGroup(str(name)) from None

    def tool_users(self) -> dict[str, ToolUser]:
        """Every user the policy runs untrusted code as, as the user database knows it now:
        each group's tool user, and its agent runtime's."""
        users = {f"group {name}'s tool user": tool_user(g.uid) for name, g in self.groups.items()}
        for name, group in self.groups.items():
            if group.agent is not None:
                users[f"group {name}'s agent user"] = tool_user(group.agent.uid)
        return users

    def check_binds(self, group: GroupPolicy, users: Mapping[str, ToolUser]) -> None:
        """ConfigError unless every path bound into `group`'s units still resolves to
        itself and has no ancestor a tool user can write."""
        for key, path in bind_sources(group):
            if self.check_host_path(path, key) != path:
                raise ConfigError(key, f"{path} now resolves elsewhere")
            why = writable_ancestor(path, users)
            if why:
                raise ConfigError(
                    key,
                    f"{path}: {why}; bind only directories that no tool user can reach "
                    "from above (only root or their owner may write their parents)",
                )

    def sealed_paths(self) -> tuple[tuple[str, str], ...]:
        """(what, path) for every path no mount may be inside, equal to, or a parent of."""
        return (
            ("the data directory", self.data_dir),
            *(("a protected path", path) for path in self.protected_paths),
            ("the policy file", self.policy_path),
            *(("a path hidden from every tool", path) for path in ALWAYS_HIDDEN),
            *(("a kernel file system", path) for path in KERNEL_FILE_SYSTEMS),
            # Every unit has its own; and the broker, which checks sources, has a private /tmp.
            *(("a scratch place each unit has its own of", path) for path in SCRATCH),
        )

    def check_host_path(self, value: object, key: str) -> str:
        """The resolved form of a host path to bind, or a ConfigError saying why not.

        Every check runs on both the path as written and as resolved (os.path.realpath,
        strict=False, so a missing path is still judged), against both forms of each
        sealed path: a symlink leads around none of them. The result can go stale when a
        symlink on the way changes, so the broker is to re-run this at unit start.
        """
        path = absolute_path(value, key)
        resolved = _resolve(path, key)
        for candidate in dict.fromkeys((path, resolved)):
            if candidate == "/":
                raise ConfigError(key, f"{_shown(path, resolved)} is the whole host file system")
            for what, sealed in self.sealed_paths():
                for form in dict.fromkeys((sealed, _resolve(sealed, key))):
                    relation = path_relation(candidate, form)
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


def bind_sources(group: GroupPolicy) -> Iterator[tuple[str, str]]:
    """(policy key, host path) of everything the policy binds into the group's units."""
    key = "groups." + key_part(group.name)
    for index, mount in enumerate(group.mounts):
        yield f"{key}.mounts[{index}].host", mount.host
    for index, path in enumerate(group.read_only_paths):
        yield f"{key}.read_only_paths[{index}]", path


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


def absolute_path(value: object, key: str) -> str:
    """An absolute path without control characters or '..' components, normalised."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(key, f"must be an absolute path, not {describe(value)}")
    if CONTROL_CHARACTERS.search(value):
        raise ConfigError(key, "must not contain control characters (NUL, newline, ...)")
    if not is_text(value) or len(value.encode()) > _PATH_MAX:
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


def path_relation(path: str, other: str) -> str:
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


def is_text(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate from a JSON "\udc80"
        return False
    return True
