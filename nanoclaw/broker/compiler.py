"""The compiler: a policy and one tool request in, the properties of a transient unit out.

Pure and total: the same inputs give the same plan, and every property comes from the
policy and this module. The request (nanoclaw.broker.tool_request, which judges it)
chooses only the group (narrowed for a declared subagent), argv, the working directory
inside the sandbox and a timeout within the group's bound; nothing in it is ever parsed as
a property, so it can add or change none (argv is one ExecStart= entry, verbatim).
nanoclaw.broker.explain shows a plan as unit-file lines.

Each property is a (name, D-Bus signature, value) triple for StartTransientUnit, with the
signature from SIGNATURES (those systemd 252 reads in dbus-execute.c, dbus-cgroup.c,
dbus-service.c and dbus-unit.c). Values are immutable: tuples for arrays and structs,
bytes for `ay`; the bus layer turns tuples into the lists dbus-next wants. Standard input
and output are the broker's to add (file descriptors), not the compiler's.
"""

from __future__ import annotations

import errno
import ipaddress
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from nanoclaw.broker.policy import (
    ALWAYS_HIDDEN,
    GLOBAL_MEMORY,
    GLOBAL_SANDBOX,
    GROUP_SANDBOX,
    MAIN_AGENT,
    RUN,
    SCRATCH,
    WORKSPACE,
    WORKSPACES,
    GroupPolicy,
    Policy,
)
from nanoclaw.broker.tool_request import ToolRequest, check

_UNIT_ID = re.compile(r"[a-z0-9]{8,32}")

SIGNATURES: Mapping[str, str] = MappingProxyType(
    {
        "Description": "s",
        "Type": "s",
        "ExecStart": "a(sasb)",  # (path, argv, ignore-failure)
        "User": "s",
        "Group": "s",
        "WorkingDirectory": "s",
        "Environment": "as",
        "Slice": "s",
        "CollectMode": "s",
        "KillMode": "s",
        "SendSIGKILL": "b",
        "TimeoutStopUSec": "t",
        "RuntimeMaxUSec": "t",
        "MemoryMax": "t",
        "CPUWeight": "t",
        "StateDirectory": "as",
        "StateDirectoryMode": "u",
        "StandardError": "s",
        "MemorySwapMax": "t",
        "TasksMax": "t",
        "CPUQuotaPerSecUSec": "t",
        "ProtectSystem": "s",
        "ProtectHome": "s",
        "PrivatePIDs": "b",  # systemd 257 and later
        "PrivateDevices": "b",
        "PrivateIPC": "b",
        "TemporaryFileSystem": "a(ss)",  # (path, mount options)
        "BindPaths": "a(ssbt)",  # (source, destination, ignore-ENOENT, 0 or MS_REC)
        "BindReadOnlyPaths": "a(ssbt)",
        "InaccessiblePaths": "as",  # a leading '-' ignores a missing path
        "NoNewPrivileges": "b",
        "CapabilityBoundingSet": "t",
        "AmbientCapabilities": "t",
        "RestrictSUIDSGID": "b",
        "LockPersonality": "b",
        "ProtectKernelTunables": "b",
        "ProtectKernelModules": "b",
        "ProtectKernelLogs": "b",
        "ProtectControlGroups": "b",
        "ProtectClock": "b",
        "ProtectHostname": "b",
        "ProtectProc": "s",
        "ProcSubset": "s",
        "RestrictRealtime": "b",
        "RestrictNamespaces": "t",
        "SystemCallArchitectures": "as",
        "SystemCallFilter": "(bas)",  # (allow-list?, names); entries accumulate
        "SystemCallErrorNumber": "i",
        "RestrictAddressFamilies": "(bas)",  # (allow-list?, families)
        "PrivateNetwork": "b",
        "JoinsNamespaceOf": "as",  # the egress relay's socket unit, for groups with domains
        "IPAddressDeny": "a(iayu)",  # (AF_INET or AF_INET6, address bytes, prefix length)
        "IPAddressAllow": "a(iayu)",
    }
)

# systemd 257 gave units a PID namespace of their own (PrivatePIDs=); before, a unit can
# tell which PIDs exist on the machine (kill(pid, 0) says EPERM or ESRCH).
PRIVATE_PIDS_SINCE = 257

# Linux's values: IPAddress*= takes raw families, not systemd-run's keywords like "any".
AF_INET = 2
AF_INET6 = 10
# The value is the set of namespace kinds the unit MAY create, as CLONE_NEW* flags: 0
# refuses all seven systemd 252 knows (cgroup, ipc, net, mnt, pid, user, uts; together
# 0x7e020000), as RestrictNamespaces=yes does. The full mask would mean "no restriction".
ALLOWED_NAMESPACES = 0
# Not MS_REC: a bind then carries only the file system the checked path is on, never a
# mount below it that the policy's path checks could not see (a bind of the data
# directory somewhere under a mounted tree, say). Declare a submount as its own mount.
BIND_FLAGS = 0
SYSCALL_ALLOW = ("@system-service",)
SYSCALL_DENY = (
    "@privileged",
    "@resources",
    "@mount",
    "@debug",
    "@cpu-emulation",
    "@obsolete",
    "@raw-io",
    "@reboot",
    "@swap",
    "@module",
    "@clock",
    "bpf",
    "keyctl",
    "add_key",
    "request_key",
    "ptrace",
    "userfaultfd",
    # io_uring works around the filter: IORING_OP_SOCKET opened AF_INET, AF_NETLINK and
    # AF_VSOCK sockets in a unit restricted to AF_UNIX (seen), and its other operations
    # are as unchecked. @system-service allows it.
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
)
BASE_ENVIRONMENT = (
    f"HOME={GROUP_SANDBOX}",
    "PATH=/usr/local/bin:/usr/bin:/bin",
    "LANG=C.UTF-8",
    "TMPDIR=/tmp",
)
# curl reads only the lowercase http_proxy; other tools only the uppercase names.
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
# The relays (nanoclaw.broker.relay) listen on the loopback of a private network namespace.
RELAY_ADDRESS = "127.0.0.1"


@dataclass(frozen=True)
class Route:
    """A kind of relay: its socket unit's name prefix and the port it listens on."""

    prefix: str
    port: int

    def socket_name(self, group: str) -> str:
        """The socket unit whose network namespace the group's units join."""
        return f"{self.prefix}{group}.socket"


# Where a tool unit of a group with domains finds the egress proxy, and where a group's
# agent unit finds the credential proxy, the model API's only way in.
EGRESS = Route("nanoclaw-egress-", 3128)
MODEL = Route("nanoclaw-model-", 8080)
USEC_PER_SECOND = 1_000_000
STOP_TIMEOUT_USEC = 2 * USEC_PER_SECOND


@dataclass(frozen=True)
class UnitPlan:
    name: str
    slice: str
    properties: tuple[tuple[str, str, object], ...]


def unit_name(group: str, unit_id: str) -> str:
    return f"nanoclaw-tool-{group}-{unit_id}.service"


def slice_name(group: str) -> str:
    # In a slice name each '-' opens a level: nanoclaw-tools-my-group.slice would sit in
    # nanoclaw-tools-my.slice. systemd-escape turns '-' into \x2d, and of the characters
    # a group name may have ([a-z0-9_-]) it changes only that one.
    return f"nanoclaw-tools-{group.replace('-', chr(92) + 'x2d')}.slice"


def compile_unit(
    policy: Policy,
    request: ToolRequest,
    unit_id: str,
    covers: tuple[str, ...] = (),
    private_pids: bool = False,
) -> UnitPlan:
    """The unit for one tool call. RequestError for a request the policy does not allow;
    ValueError for a bad unit_id, which is the broker's own.

    `covers` are the sandbox paths inside the group's mounts to make inaccessible (the
    broker finds them: nanoclaw.broker.mount_covers); `private_pids` says whether this systemd
    can give the unit a PID namespace of its own."""
    check_unit_id(unit_id)
    checked = check(policy, request)
    group, argv = checked.group, checked.argv
    for path in covers:  # the broker's own: a bug there must not hide or show elsewhere
        if not any(path.startswith(mount.sandbox + "/") for mount in group.mounts):
            raise ValueError(f"cover {path!r} is not inside one of {group.name}'s mounts")
    cwd, timeout = checked.cwd, checked.timeout_seconds
    environment = _base_environment(group) + _proxy_environment(group, checked.proxy_token)
    # cidrs: the host's network, filtered by IP; domains: a network of the group's own,
    # joined from the relay to the egress proxy; neither: a network of the unit's own.
    on_host_network = bool(group.egress.cidrs)
    slice_ = slice_name(group.name)
    values: list[tuple[str, object]] = [
        ("Description", _description(group.name, checked.agent)),
        ("Type", "exec"),
        ("ExecStart", ((argv[0], tuple(no_expansion(arg) for arg in argv), False),)),
        ("User", str(group.uid)),
        ("Group", str(group.uid)),
        ("WorkingDirectory", cwd),
        ("Environment", environment),
        ("Slice", slice_),
        ("CollectMode", "inactive-or-failed"),
        ("KillMode", "control-group"),
        ("SendSIGKILL", True),
        ("TimeoutStopUSec", STOP_TIMEOUT_USEC),
        ("RuntimeMaxUSec", timeout * USEC_PER_SECOND),
        ("MemoryMax", group.limits.memory_max_bytes),
        ("MemorySwapMax", 0),
        ("TasksMax", group.limits.tasks_max),
        ("CPUQuotaPerSecUSec", group.limits.cpu_quota_percent * USEC_PER_SECOND // 100),
        *confinement(private_pids),
        # PrivateDevices= binds the host's /dev/shm into the unit: shared by every unit and
        # the host, it would be a channel between groups. Each unit gets its own bounded
        # scratch places instead (SCRATCH), and an empty /run (cheaper than hiding what is
        # in it path by path).
        (
            "TemporaryFileSystem",
            (
                (WORKSPACE, "mode=0755"),
                (RUN, "mode=0755"),
                *((path, f"mode=1777,size={group.limits.tmp_bytes}") for path in SCRATCH),
            ),
        ),
        *_empty_paths(group),
        *_binds(policy, group),
        ("InaccessiblePaths", hidden(policy) + tuple("-" + path for path in covers)),
        *kernel_and_privileges(),
        ("RestrictAddressFamilies", (True, _address_families(group))),
        ("PrivateNetwork", not on_host_network),
        *_network_namespace(group),
        *_ip_filter(group),
    ]
    return UnitPlan(
        name=unit_name(group.name, unit_id),
        slice=slice_,
        properties=tuple((name, SIGNATURES[name], value) for name, value in values),
    )


def _description(group: str, agent: str) -> str:
    whose = "" if agent == MAIN_AGENT else f" (subagent {agent})"
    return f"nanoclaw tool call for group {group}{whose}"


def check_unit_id(unit_id: object) -> None:
    """ValueError for a unit ID that is not the broker's form (its own, never a client's)."""
    if not isinstance(unit_id, str) or not _UNIT_ID.fullmatch(unit_id):
        raise ValueError(f"unit_id must match {_UNIT_ID.pattern}, not {unit_id!r}")


def confinement(private_pids: bool) -> list[tuple[str, object]]:
    """The file system and IPC every unit of the broker's starts with: nothing of the host
    writable, no home directories, devices, IPC or (where systemd can) PIDs of others."""
    return [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateDevices", True),
        ("PrivateIPC", True),
        *([("PrivatePIDs", True)] if private_pids else []),
    ]


def kernel_and_privileges() -> list[tuple[str, object]]:
    """No privileges to gain, no kernel interface to change, a syscall filter: the same
    for tool units and agent units."""
    return [
        ("NoNewPrivileges", True),
        ("CapabilityBoundingSet", 0),
        ("AmbientCapabilities", 0),
        ("RestrictSUIDSGID", True),
        ("LockPersonality", True),
        ("ProtectKernelTunables", True),
        ("ProtectKernelModules", True),
        ("ProtectKernelLogs", True),
        ("ProtectControlGroups", True),
        ("ProtectClock", True),
        ("ProtectHostname", True),
        ("ProtectProc", "invisible"),
        ("ProcSubset", "pid"),
        ("RestrictRealtime", True),
        ("RestrictNamespaces", ALLOWED_NAMESPACES),
        # MemoryDenyWriteExecute= stays off: it breaks every JIT (node, the JVM, PyPy, and
        # the agent runtime's JavaScriptCore).
        ("SystemCallArchitectures", ("native",)),
        # Transient properties accumulate like unit-file lines: allow the service set,
        # then take the dangerous groups back out of it.
        ("SystemCallFilter", (True, SYSCALL_ALLOW)),
        ("SystemCallFilter", (False, SYSCALL_DENY)),
        ("SystemCallErrorNumber", errno.EPERM),
    ]


def no_expansion(arg: str) -> str:
    # systemd expands $NAME and ${NAME} in ExecStart= arguments, even ones from the bus
    # (and drops a lone "$"); "$$" is its escape for one literal "$". The path is not
    # expanded, so only argv is escaped.
    return arg.replace("$", "$$")


def _base_environment(group: GroupPolicy) -> tuple[str, ...]:
    if not group.path:
        return BASE_ENVIRONMENT
    # The group's own directories first: on NixOS the default ones hold next to nothing.
    return tuple(
        "PATH=" + ":".join((*group.path, entry.removeprefix("PATH=")))
        if entry.startswith("PATH=")
        else entry
        for entry in BASE_ENVIRONMENT
    )


def _empty_paths(group: GroupPolicy) -> list[tuple[str, object]]:
    # A second TemporaryFileSystem= adds to the first, as a second line in a unit file does;
    # the group's read-only paths are bound below these afterwards.
    if not group.empty_paths:
        return []
    return [("TemporaryFileSystem", tuple((path, "mode=0755") for path in group.empty_paths))]


def _proxy_environment(group: GroupPolicy, token: str | None) -> tuple[str, ...]:
    # The relay on the unit's loopback leads to the proxy, which admits only this secret.
    if not group.egress.domains or token is None:
        return ()
    url = f"http://{group.name}:{token}@{RELAY_ADDRESS}:{EGRESS.port}"
    return tuple(f"{name}={url}" for name in PROXY_VARIABLES)


def _binds(policy: Policy, group: GroupPolicy) -> list[tuple[str, object]]:
    own = (posixpath.join(policy.data_dir, WORKSPACES, group.name), GROUP_SANDBOX)
    # Read-only for the main group too: the host reads it into every group's prompt, so
    # only write_memory, in the host, changes it.
    shared = (posixpath.join(policy.data_dir, GLOBAL_MEMORY), GLOBAL_SANDBOX)
    writable: list[tuple[str, str, bool, int]] = []
    read_only = [(*shared, True, BIND_FLAGS)]  # the host makes it with its first session
    # A readonly subagent's units (GroupPolicy.narrowed) get their own workspace read-only.
    (writable if group.workspace_writable else read_only).append((*own, False, BIND_FLAGS))
    for mount in group.mounts:
        (writable if mount.writable else read_only).append(
            (mount.host, mount.sandbox, False, BIND_FLAGS)
        )
    read_only += [(path, path, False, BIND_FLAGS) for path in group.read_only_paths]
    binds: list[tuple[str, object]] = [("BindPaths", tuple(writable))] if writable else []
    if read_only:
        binds.append(("BindReadOnlyPaths", tuple(read_only)))
    return binds


def hidden(policy: Policy) -> tuple[str, ...]:
    # The data directory and the policy file exist; if not, the unit must fail to start.
    # Every group's mount sources are hidden too: a group sees a mount only at its place
    # in /workspace, and another group's sources not at all.
    required = (policy.data_dir, policy.policy_path)
    optional = (
        *policy.protected_paths,
        *ALWAYS_HIDDEN,
        *sorted({mount.host for g in policy.groups.values() for mount in g.mounts}),
    )
    paths = dict.fromkeys(required, "")
    for path in optional:
        paths.setdefault(path, "-")
    # Below /run there is only the unit's own empty tmpfs.
    return tuple(prefix + p for p, prefix in paths.items() if not _is_below(p, RUN))


def _is_below(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent + "/")


def _address_families(group: GroupPolicy) -> tuple[str, ...]:
    if group.egress.cidrs:
        return ("AF_UNIX", "AF_INET", "AF_INET6")
    if group.egress.domains:
        return ("AF_UNIX", "AF_INET")  # the relay listens on 127.0.0.1
    return ("AF_UNIX",)


def _network_namespace(group: GroupPolicy) -> list[tuple[str, object]]:
    if not group.egress.domains:
        return []  # PrivateNetwork= alone leaves only a loopback of the unit's own
    # The relay's namespace: its loopback holds the relay, and nothing leads elsewhere.
    return [("JoinsNamespaceOf", (EGRESS.socket_name(group.name),))]


def _ip_filter(group: GroupPolicy) -> list[tuple[str, object]]:
    if not group.egress.cidrs:
        return []  # no host network: nothing to filter
    deny_all = ((AF_INET, bytes(4), 0), (AF_INET6, bytes(16), 0))
    return [
        ("IPAddressDeny", deny_all),
        ("IPAddressAllow", tuple(_ip_entry(network) for network in group.egress.cidrs)),
    ]


def _ip_entry(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, bytes, int]:
    family = AF_INET if network.version == 4 else AF_INET6
    return (family, network.network_address.packed, network.prefixlen)
