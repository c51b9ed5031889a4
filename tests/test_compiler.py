"""The compiler: a policy and a request give exactly the unit the brief asks for, with
systemd's D-Bus signatures."""

from __future__ import annotations

import io
import ipaddress
import shutil
import socket
import subprocess
from typing import Any

import pytest

from nanoclaw.broker.compiler import (
    AF_INET,
    AF_INET6,
    SIGNATURES,
    SYSCALL_DENY,
    compile_unit,
    slice_name,
    unit_name,
)
from nanoclaw.broker.explain import explain
from nanoclaw.broker.policy import ALWAYS_HIDDEN, Policy
from nanoclaw.broker.policy_file import parse_policy
from nanoclaw.broker.tool_request import RequestError
from tests.support.compiling import (
    CLONE_NEW,
    TOKEN,
    UNIT_ID,
    compiled,
    conforms,
    full_policy,  # noqa: F401 -- the `policy` fixture
    parent_slices,
    props,
    request,
    unit_name_is_valid,
)
from tests.support.policies import DOMAINS_ONLY, FULL, POLICY_PATH, STORE_TOOLS, at

# --- the unit every call gets ---------------------------------------------------------


def test_a_group_without_egress_gets_exactly_this_unit(policy: Policy) -> None:
    plan = compile_unit(policy, request(), UNIT_ID)
    assert plan.name == "nanoclaw-tool-family-0123456789abcdef.service"
    assert plan.slice == "nanoclaw-tools-family.slice"
    hidden = (
        "/var/lib/nanoclaw",
        POLICY_PATH,
        "-/etc/nanoclaw",
        *("-" + path for path in ALWAYS_HIDDEN if path != "/run"),
        "-/srv/inbox",
        "-/srv/photos",
        "-/srv/project",
    )
    limits = policy.group("family").limits
    assert plan.properties == (
        ("Description", "s", "nanoclaw tool call for group family"),
        ("Type", "s", "exec"),
        ("ExecStart", "a(sasb)", (("/bin/sh", ("/bin/sh", "-c", "ls"), False),)),
        ("User", "s", "61001"),
        ("Group", "s", "61001"),
        ("WorkingDirectory", "s", "/workspace/group"),
        (
            "Environment",
            "as",
            (
                "HOME=/workspace/group",
                "PATH=/usr/local/bin:/usr/bin:/bin",
                "LANG=C.UTF-8",
                "TMPDIR=/tmp",
            ),
        ),
        ("Slice", "s", "nanoclaw-tools-family.slice"),
        ("CollectMode", "s", "inactive-or-failed"),
        ("KillMode", "s", "control-group"),
        ("SendSIGKILL", "b", True),
        ("TimeoutStopUSec", "t", 2_000_000),
        ("RuntimeMaxUSec", "t", 30_000_000),
        ("MemoryMax", "t", limits.memory_max_bytes),
        ("MemorySwapMax", "t", 0),
        ("TasksMax", "t", 128),
        ("CPUQuotaPerSecUSec", "t", 1_000_000),
        ("ProtectSystem", "s", "strict"),
        ("ProtectHome", "s", "yes"),
        ("PrivateDevices", "b", True),
        ("PrivateIPC", "b", True),
        (
            "TemporaryFileSystem",
            "a(ss)",
            (
                ("/workspace", "mode=0755"),
                ("/run", "mode=0755"),
                ("/tmp", "mode=1777,size=268435456"),
                ("/var/tmp", "mode=1777,size=268435456"),
                ("/dev/shm", "mode=1777,size=268435456"),
            ),
        ),
        (
            "BindPaths",
            "a(ssbt)",
            (
                ("/var/lib/nanoclaw/groups/family", "/workspace/group", False, 0),
                ("/srv/inbox", "/workspace/inbox", False, 0),
            ),
        ),
        (
            "BindReadOnlyPaths",
            "a(ssbt)",
            (
                ("/var/lib/nanoclaw/memory/global", "/workspace/global", True, 0),
                ("/srv/photos", "/workspace/photos", False, 0),
            ),
        ),
        ("InaccessiblePaths", "as", hidden),
        ("NoNewPrivileges", "b", True),
        ("CapabilityBoundingSet", "t", 0),
        ("AmbientCapabilities", "t", 0),
        ("RestrictSUIDSGID", "b", True),
        ("LockPersonality", "b", True),
        ("ProtectKernelTunables", "b", True),
        ("ProtectKernelModules", "b", True),
        ("ProtectKernelLogs", "b", True),
        ("ProtectControlGroups", "b", True),
        ("ProtectClock", "b", True),
        ("ProtectHostname", "b", True),
        ("ProtectProc", "s", "invisible"),
        ("ProcSubset", "s", "pid"),
        ("RestrictRealtime", "b", True),
        ("RestrictNamespaces", "t", 0),
        ("SystemCallArchitectures", "as", ("native",)),
        ("SystemCallFilter", "(bas)", (True, ("@system-service",))),
        ("SystemCallFilter", "(bas)", (False, SYSCALL_DENY)),
        ("SystemCallErrorNumber", "i", 1),
        ("RestrictAddressFamilies", "(bas)", (True, ("AF_UNIX",))),
        ("PrivateNetwork", "b", True),
    )


def test_the_syscall_deny_list_is_the_briefs() -> None:
    assert SYSCALL_DENY == (
        "@privileged", "@resources", "@mount", "@debug", "@cpu-emulation", "@obsolete",
        "@raw-io", "@reboot", "@swap", "@module", "@clock",
        "bpf", "keyctl", "add_key", "request_key", "ptrace", "userfaultfd",
        "io_uring_setup", "io_uring_enter", "io_uring_register",
    )  # fmt: skip


def test_every_property_uses_its_signature_and_only_known_ones(policy: Policy) -> None:
    for group in policy.groups:
        plan = compile_unit(policy, request(group, proxy_token=TOKEN), UNIT_ID)
        for name, signature, value in plan.properties:
            assert SIGNATURES[name] == signature
            assert conforms(signature, value), (name, signature, value)


def test_memory_deny_write_execute_is_not_set(policy: Policy) -> None:
    for group in policy.groups:
        assert "MemoryDenyWriteExecute" not in compiled(policy, group)


def test_restrict_namespaces_allows_no_namespace_at_all(policy: Policy) -> None:
    # The bus value is the set of namespaces the unit MAY create: 0 is "yes".
    allowed = compiled(policy)["RestrictNamespaces"]
    everything = 0
    for flag in CLONE_NEW.values():
        everything |= flag
    assert everything == 0x7E020000
    assert allowed & everything == 0


def test_limits_become_cgroup_values(policy: Policy) -> None:
    main = compiled(policy, "main", cwd="/workspace/project", timeout_seconds=600)
    assert main["MemoryMax"] == 1024**3
    assert main["CPUQuotaPerSecUSec"] == 500_000  # 50 % of one CPU
    assert main["TasksMax"] == 128
    assert main["RuntimeMaxUSec"] == 600_000_000


def test_every_group_reads_the_global_memory_and_none_writes_it(policy: Policy) -> None:
    global_memory = ("/var/lib/nanoclaw/memory/global", "/workspace/global", True, 0)
    main = compiled(policy, "main")
    assert main["BindPaths"] == (
        ("/var/lib/nanoclaw/groups/main", "/workspace/group", False, 0),
        ("/srv/project", "/workspace/project", False, 0),
    )
    assert main["BindReadOnlyPaths"] == (
        global_memory,
        ("/nix/store/abc-ripgrep", "/nix/store/abc-ripgrep", False, 0),
    )
    family = compiled(policy, "family")
    assert global_memory in family["BindReadOnlyPaths"]
    assert all(dst != "/workspace/global" for _, dst, _, _ in family["BindPaths"])


def test_a_group_with_nothing_read_only_still_reads_the_global_memory() -> None:
    data = at(FULL, ("groups", "main", "read_only_paths"), [])
    binds = compiled(parse_policy(data, POLICY_PATH), "main")["BindReadOnlyPaths"]
    assert [destination for _, destination, _, _ in binds] == ["/workspace/global"]


def test_binds_are_not_recursive_and_only_the_global_memory_may_be_missing(
    policy: Policy,
) -> None:
    for group in policy.groups:
        unit = compiled(policy, group)
        for source, destination, ignore_missing, flags in unit["BindPaths"] + unit.get(
            "BindReadOnlyPaths", ()
        ):
            assert flags == 0
            assert ignore_missing is (destination == "/workspace/global")  # made by the host
            assert source.startswith("/") and destination.startswith("/")


def test_covers_are_hidden_after_everything_else_and_may_have_gone(policy: Policy) -> None:
    covers = ("/workspace/inbox/.git", "/workspace/photos/a/.env")
    plan = compile_unit(policy, request(), UNIT_ID, covers=covers)
    hidden = props(plan)["InaccessiblePaths"]
    base = props(compile_unit(policy, request(), UNIT_ID))["InaccessiblePaths"]
    assert hidden == (*base, "-/workspace/inbox/.git", "-/workspace/photos/a/.env")


@pytest.mark.parametrize(
    "cover",
    ["/workspace/inbox", "/workspace/group/.git", "/workspace/inboxes/.git", "/etc/.git"],
)
def test_a_cover_outside_the_groups_mounts_is_the_brokers_bug(policy: Policy, cover: str) -> None:
    with pytest.raises(ValueError, match="not inside one of family's mounts"):
        compile_unit(policy, request(), UNIT_ID, covers=(cover,))


def test_private_pids_only_where_systemd_has_them(policy: Policy) -> None:
    assert "PrivatePIDs" not in props(compile_unit(policy, request(), UNIT_ID))
    plan = compile_unit(policy, request(), UNIT_ID, private_pids=True)
    assert props(plan)["PrivatePIDs"] is True
    assert "PrivatePIDs=yes" in explain(plan).splitlines()


def test_each_scratch_place_is_a_tmpfs_of_the_groups_size() -> None:
    data = at(FULL, ("groups", "family", "limits"), {"tmp_bytes": 8 * 1024**2})
    scratch = dict(compiled(parse_policy(data, POLICY_PATH))["TemporaryFileSystem"])
    for path in ("/tmp", "/var/tmp", "/dev/shm"):
        assert scratch[path] == "mode=1777,size=8388608"


def test_a_groups_path_goes_before_the_default_one() -> None:
    unit = compiled(parse_policy(STORE_TOOLS, POLICY_PATH), "tools")
    assert (
        "PATH=/nix/store/abc-coreutils/bin:/usr/local/bin:/usr/local/bin:/usr/bin:/bin"
        in (unit["Environment"])
    )
    assert sum(entry.startswith("PATH=") for entry in unit["Environment"]) == 1


def test_without_a_path_the_environment_is_the_default(policy: Policy) -> None:
    assert "PATH=/usr/local/bin:/usr/bin:/bin" in compiled(policy)["Environment"]


def test_empty_paths_are_a_second_tmpfs_and_the_closure_is_bound_into_it() -> None:
    plan = compile_unit(parse_policy(STORE_TOOLS, POLICY_PATH), request("tools"), UNIT_ID)
    tmpfs = [value for name, _, value in plan.properties if name == "TemporaryFileSystem"]
    assert tmpfs[1:] == [(("/nix/store", "mode=0755"),)]
    assert ("/nix/store/def-glibc", "/nix/store/def-glibc", False, 0) in props(plan)[
        "BindReadOnlyPaths"
    ]
    assert "TemporaryFileSystem=/nix/store:mode=0755" in explain(plan).splitlines()


def test_a_group_without_empty_paths_gets_one_tmpfs_line(policy: Policy) -> None:
    plan = compile_unit(policy, request(), UNIT_ID)
    assert [name for name, _, _ in plan.properties].count("TemporaryFileSystem") == 1


def test_hidden_paths(policy: Policy) -> None:
    hidden = compiled(policy)["InaccessiblePaths"]
    assert hidden[:2] == ("/var/lib/nanoclaw", POLICY_PATH)  # these must exist
    assert len(set(hidden)) == len(hidden)
    assert {p.lstrip("-") for p in hidden} >= {"/var/lib", "/var/log", "/root", "/etc/nanoclaw"}
    # /run (D-Bus, systemd's and nscd's sockets, /run/user, /run/lock, protected paths
    # such as /run/credentials) is an empty tmpfs instead, so nothing below it is listed.
    assert not any(p.lstrip("-").startswith("/run") for p in hidden), hidden
    assert ("/run", "mode=0755") in compiled(policy)["TemporaryFileSystem"]
    # Every group's mount sources, its own included: mounts are seen only in /workspace.
    assert {"-/srv/project", "-/srv/photos", "-/srv/inbox"} <= set(hidden)


def test_a_protected_path_equal_to_the_data_dir_is_hidden_once() -> None:
    data = at(FULL, ("protected_paths",), ["/var/lib/nanoclaw", "/var/log"])
    hidden = compiled(parse_policy(data, POLICY_PATH))["InaccessiblePaths"]
    assert hidden.count("/var/lib/nanoclaw") == 1 and "-/var/lib/nanoclaw" not in hidden
    assert hidden.count("-/var/log") == 1


# --- the network ----------------------------------------------------------------------


def test_no_egress_means_a_private_network_and_unix_sockets_only(policy: Policy) -> None:
    unit = compiled(policy, "family", proxy_token=TOKEN)
    assert unit["PrivateNetwork"] is True
    assert unit["RestrictAddressFamilies"] == (True, ("AF_UNIX",))
    assert "IPAddressDeny" not in unit and "IPAddressAllow" not in unit
    assert not any("PROXY" in entry.upper() for entry in unit["Environment"])


def test_cidrs_put_the_unit_on_the_hosts_network_allowing_exactly_those(policy: Policy) -> None:
    unit = compiled(policy, "ops-team", proxy_token=TOKEN)
    assert unit["PrivateNetwork"] is False and "JoinsNamespaceOf" not in unit
    assert unit["RestrictAddressFamilies"] == (True, ("AF_UNIX", "AF_INET", "AF_INET6"))
    assert unit["IPAddressDeny"] == ((AF_INET, bytes(4), 0), (AF_INET6, bytes(16), 0))
    assert unit["IPAddressAllow"] == (
        (AF_INET, bytes([192, 0, 2, 0]), 24),
        (AF_INET6, ipaddress.IPv6Address("2001:db8::").packed, 32),
    )
    assert not any("PROXY" in entry.upper() for entry in unit["Environment"])


def test_domains_join_the_relays_network_and_name_it_as_the_proxy(policy: Policy) -> None:
    """No host network and no IP filter: the namespace of nanoclaw-egress-main.socket,
    whose loopback holds the relay to the egress proxy, and nothing else."""
    unit = compiled(policy, "main", proxy_token=TOKEN)
    assert unit["PrivateNetwork"] is True
    assert unit["JoinsNamespaceOf"] == ("nanoclaw-egress-main.socket",)
    assert unit["RestrictAddressFamilies"] == (True, ("AF_UNIX", "AF_INET"))
    assert "IPAddressDeny" not in unit and "IPAddressAllow" not in unit
    url = f"http://main:{TOKEN}@127.0.0.1:3128"
    assert unit["Environment"][4:] == (
        f"HTTP_PROXY={url}",
        f"HTTPS_PROXY={url}",
        f"http_proxy={url}",
        f"https_proxy={url}",
    )


def test_each_domain_group_joins_its_own_relay() -> None:
    policy = parse_policy(
        at(
            DOMAINS_ONLY,
            ("groups", "wiki"),
            {"uid": 62001, "egress": {"domains": ["wikipedia.org"]}},
        ),
        POLICY_PATH,
    )
    assert compiled(policy, "web")["JoinsNamespaceOf"] == ("nanoclaw-egress-web.socket",)
    assert compiled(policy, "wiki")["JoinsNamespaceOf"] == ("nanoclaw-egress-wiki.socket",)


def test_domains_without_a_token_get_no_proxy_environment(policy: Policy) -> None:
    assert compiled(policy, "main")["Environment"] == compiled(policy)["Environment"]
    assert "HTTP_PROXY" not in str(compiled(policy, "main")["Environment"])


@pytest.mark.parametrize(
    "token",
    [
        "short",
        "x" * 129,
        "s3cret-s3cret-s3cret\n--property=User=0",
        "s3cret-s3cret-s3cret\x00",
        "s3cret@s3cret:s3cret/x",
        5,
    ],
)
@pytest.mark.parametrize("group", ["main", "family"])
def test_a_malformed_proxy_token_is_refused(policy: Policy, token: Any, group: str) -> None:
    """Refused whether or not the group uses the proxy: the token never shapes a URL."""
    with pytest.raises(RequestError, match="proxy_token"):
        compile_unit(policy, request(group, proxy_token=token), UNIT_ID)


def test_address_families_are_linuxs() -> None:
    assert (AF_INET, AF_INET6) == (socket.AF_INET, socket.AF_INET6) == (2, 10)


# --- names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        ("family", "nanoclaw-tools-family.slice"),
        ("my-group", "nanoclaw-tools-my\\x2dgroup.slice"),
        ("a-b-c", "nanoclaw-tools-a\\x2db\\x2dc.slice"),
        ("my_group", "nanoclaw-tools-my_group.slice"),
        ("0-", "nanoclaw-tools-0\\x2d.slice"),
    ],
)
def test_slice_names_escape_dashes_so_they_do_not_nest(group: str, expected: str) -> None:
    assert slice_name(group) == expected
    assert parent_slices(expected) == ["nanoclaw-tools.slice", "nanoclaw.slice", "-.slice"]
    assert unit_name_is_valid(expected)


@pytest.mark.skipif(shutil.which("systemd-escape") is None, reason="needs systemd-escape")
@pytest.mark.parametrize(
    "group", ["family", "my-group", "a_b", "x-y-z", "0-9", "a" * 64, "-", "_-_"]
)
def test_slice_escaping_matches_systemd_escape(group: str) -> None:
    escaped = subprocess.run(
        ["systemd-escape", "--", group], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert slice_name(group) == f"nanoclaw-tools-{escaped}.slice"


def test_unit_names_are_valid_even_at_the_longest(policy: Policy) -> None:
    name = unit_name("a" * 64, "z" * 32)
    assert unit_name_is_valid(name) and len(name) <= 255
    assert unit_name_is_valid(slice_name("a-" * 32))


@pytest.mark.parametrize(
    "unit_id",
    ["short", "0123456", "ABCDEF0123", "abc-def012", "a" * 33, "abcdefgh\n", "", 12345678],
)
def test_unit_ids_are_checked(policy: Policy, unit_id: Any) -> None:
    with pytest.raises(ValueError, match="unit_id"):
        compile_unit(policy, request(), unit_id)


# --- on the wire ----------------------------------------------------------------------


def test_every_plan_marshals_into_start_transient_unit(policy: Policy) -> None:
    message_module = pytest.importorskip("dbus_next.message")
    signature_module = pytest.importorskip("dbus_next.signature")
    unmarshaller = pytest.importorskip("dbus_next._private.unmarshaller")

    def wire(value: object) -> object:  # dbus-next wants lists where we keep tuples
        return [wire(item) for item in value] if isinstance(value, tuple) else value

    for group in policy.groups:
        plan = compile_unit(policy, request(group, proxy_token=TOKEN), UNIT_ID)
        body = [
            plan.name,
            "fail",
            [[n, signature_module.Variant(s, wire(v))] for n, s, v in plan.properties],
            [],
        ]
        message = message_module.Message(
            destination="org.freedesktop.systemd1",
            path="/org/freedesktop/systemd1",
            interface="org.freedesktop.systemd1.Manager",
            member="StartTransientUnit",
            signature="ssa(sv)a(sa(sv))",
            body=body,
        )
        back = unmarshaller.Unmarshaller(io.BytesIO(message._marshall())).unmarshall()
        received = [(n, v.signature, v.value) for n, v in back.body[2]]
        assert received == [(n, s, wire(v)) for n, s, v in plan.properties]
