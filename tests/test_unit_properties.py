"""The compiler: a policy and a request give exactly the unit the brief asks for, with
systemd's D-Bus signatures, and no request, however hostile, adds or changes a property."""

from __future__ import annotations

import copy
import dataclasses
import io
import ipaddress
import re
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
    UnitPlan,
    compile_unit,
    slice_name,
    unit_name,
)
from nanoclaw.broker.explain import explain
from nanoclaw.broker.policy import ALWAYS_HIDDEN, Policy
from nanoclaw.broker.policy_file import parse_policy
from nanoclaw.broker.tool_request import RequestError, ToolRequest
from tests.test_policy import FULL, IPV6_PROXY, POLICY_PATH, STORE_TOOLS, at

UNIT_ID = "0123456789abcdef"
TOKEN = "s3cret-s3cret-s3cret"
CLONE_NEW = {  # linux/sched.h
    "mnt": 0x00020000,
    "cgroup": 0x02000000,
    "uts": 0x04000000,
    "ipc": 0x08000000,
    "user": 0x10000000,
    "pid": 0x20000000,
    "net": 0x40000000,
}


@pytest.fixture(scope="module")
def policy() -> Policy:
    return parse_policy(FULL, POLICY_PATH)


def request(group: str = "family", **changes: Any) -> ToolRequest:
    base = ToolRequest(
        group=group, argv=("/bin/sh", "-c", "ls"), cwd="/workspace/group", timeout_seconds=30
    )
    return dataclasses.replace(base, **changes)


def props(plan: UnitPlan) -> dict[str, Any]:
    """name -> value; SystemCallFilter, given twice, as a list of both; a second
    TemporaryFileSystem (a group's empty_paths) joined to the first, as systemd does."""
    result: dict[str, Any] = {}
    for name, _, value in plan.properties:
        if name == "SystemCallFilter":
            result.setdefault(name, []).append(value)
        elif name == "TemporaryFileSystem" and name in result:
            result[name] += value
        else:
            assert name not in result, f"{name} given twice"
            result[name] = value
    return result


def compiled(policy: Policy, group: str = "family", **changes: Any) -> dict[str, Any]:
    return props(compile_unit(policy, request(group, **changes), UNIT_ID))


def refused(policy: Policy, fragment: str, group: str = "family", **changes: Any) -> None:
    with pytest.raises(RequestError) as info:
        compile_unit(policy, request(group, **changes), UNIT_ID)
    assert fragment in str(info.value), str(info.value)


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


def test_cidrs_only_allow_exactly_those_networks(policy: Policy) -> None:
    unit = compiled(policy, "ops-team", proxy_token=TOKEN)
    assert unit["PrivateNetwork"] is False
    assert unit["RestrictAddressFamilies"] == (True, ("AF_UNIX", "AF_INET", "AF_INET6"))
    assert unit["IPAddressDeny"] == ((AF_INET, bytes(4), 0), (AF_INET6, bytes(16), 0))
    assert unit["IPAddressAllow"] == ((AF_INET, bytes([192, 0, 2, 0]), 24),)  # no proxy
    assert not any("PROXY" in entry.upper() for entry in unit["Environment"])


def test_domains_add_the_proxy_address_and_its_environment(policy: Policy) -> None:
    unit = compiled(policy, "main", proxy_token=TOKEN)
    assert unit["IPAddressAllow"] == (
        (AF_INET, bytes([140, 82, 112, 0]), 20),
        (AF_INET6, ipaddress.IPv6Address("2001:db8::").packed, 32),
        (AF_INET, bytes([127, 0, 0, 1]), 32),
    )
    url = f"http://main:{TOKEN}@127.0.0.1:3128"
    assert unit["Environment"][4:] == (
        f"HTTP_PROXY={url}",
        f"HTTPS_PROXY={url}",
        f"http_proxy={url}",
        f"https_proxy={url}",
    )


def test_domains_without_a_token_get_no_proxy_environment(policy: Policy) -> None:
    assert compiled(policy, "main")["Environment"] == compiled(policy)["Environment"]


def test_an_ipv6_proxy_is_allowed_as_a_128_and_bracketed_in_its_url() -> None:
    unit = compiled(parse_policy(IPV6_PROXY, POLICY_PATH), "web", proxy_token=TOKEN)
    assert unit["IPAddressAllow"] == ((AF_INET6, bytes(15) + b"\x01", 128),)
    assert f"HTTPS_PROXY=http://web:{TOKEN}@[::1]:8080" in unit["Environment"]


def test_a_hand_made_policy_with_domains_but_no_proxy_allows_nothing(policy: Policy) -> None:
    bare = dataclasses.replace(policy, proxy=None)
    unit = compiled(bare, "main")
    assert unit["IPAddressAllow"] == (
        (AF_INET, bytes([140, 82, 112, 0]), 20),
        (AF_INET6, ipaddress.IPv6Address("2001:db8::").packed, 32),
    )


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


# --- hostile requests -----------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ("/bin/sh", "--property=User=0", "-p", "User=root"),
        ("/bin/sh", "-c", "x\nUser=0\n[Service]\nExecStartPre=/bin/rm -rf /"),
        ("/usr/bin/env", "Environment=LD_PRELOAD=/tmp/x.so", "--uid=0"),
        ("/bin/sh", "-c", "echo ${HOME} $PATH $$ $", "$HOME", "$", "${X:-y}"),
        ("/bin/sh", "%n %i %u %h %%", "'\"\\"),
        ("/bin/sh", "", " ", "\t", "\u2028", "\x1b[31m"),
        ("/bin/ls", "--", "-rf", "/"),
        ("/opt/tools/bin/rg",) + ("x",) * 255,
        ("/bin/cat", "a" * 65536),
        ("/bin/cat",) + ("b" * 65536,) * 15,
        ("/bin/x y", "with space"),
        ("/bin/ünïcode", "ok"),
    ],
)
def test_accepted_argv_changes_nothing_but_exec_start(
    policy: Policy, argv: tuple[str, ...]
) -> None:
    baseline = compile_unit(policy, request(), UNIT_ID).properties
    plan = compile_unit(policy, request(argv=argv), UNIT_ID)
    assert [p for p in plan.properties if p[0] != "ExecStart"] == [
        p for p in baseline if p[0] != "ExecStart"
    ]
    ((path, args, ignore),) = props(plan)["ExecStart"]
    assert (path, ignore) == (argv[0], False)
    assert systemd_expand(args, {"HOME": "/workspace/group", "PATH": "/bin", "X": "z"}) == list(
        argv
    )


def test_accepted_cwd_and_timeout_change_only_their_own_property(policy: Policy) -> None:
    baseline = props(compile_unit(policy, request(), UNIT_ID))
    other = props(
        compile_unit(policy, request(cwd="/workspace/photos/2024", timeout_seconds=600), UNIT_ID)
    )
    changed = {name for name in baseline if baseline[name] != other[name]}
    assert changed == {"WorkingDirectory", "RuntimeMaxUSec"}
    assert other["WorkingDirectory"] == "/workspace/photos/2024"


def test_dollar_signs_are_escaped_against_systemds_expansion(policy: Policy) -> None:
    argv = ("/bin/$x", "$", "$HOME", "${HOME}", "$$", "a$b", "$${HOME}", "${")
    ((path, args, _),) = compiled(policy, argv=argv)["ExecStart"]
    assert path == "/bin/$x"  # the path is never expanded
    assert args == ("/bin/$$x", "$$", "$$HOME", "$${HOME}", "$$$$", "a$$b", "$$$${HOME}", "$${")
    env = {"HOME": "/workspace/group"}
    assert systemd_expand(args, env) == list(argv)
    # The model is not trivially the identity: unescaped, systemd would change these.
    assert systemd_expand(argv[1:5], env) == ["/workspace/group", "/workspace/group", "$"]


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"group": "nope"}, "'nope' is not in the sandbox policy"),
        ({"group": "global"}, "not in the sandbox policy"),
        ({"group": "Family"}, "not in the sandbox policy"),
        ({"group": 1}, "group must be a string"),
        ({"group": ["family"]}, "group must be a string"),
        ({"argv": ()}, "1 to 256 arguments, not 0"),
        ({"argv": ("/bin/true",) * 257}, "not 257"),
        ({"argv": ("/bin/true",) * 10_000}, "not 10000"),
        ({"argv": "/bin/sh"}, "argv must be a list"),
        ({"argv": None}, "argv must be a list"),
        ({"argv": ("/bin/sh", 1)}, "argv[1] must be a string"),
        ({"argv": ("/bin/sh", b"x")}, "argv[1] must be a string"),
        ({"argv": ("/bin/sh", "a\x00b")}, "argv[1] contains a NUL byte"),
        ({"argv": ("/bin/sh\x00", "x")}, "argv[0] contains a NUL byte"),
        ({"argv": ("/bin/sh", "\udc80")}, "argv[1] is not valid Unicode"),
        ({"argv": ("/bin/cat", "a" * 65537)}, "argv[1] is 65537 bytes"),
        ({"argv": ("/bin/cat", "é" * 32769)}, "argv[1] is 65538 bytes"),
        ({"argv": ("/bin/cat",) + ("b" * 65536,) * 32}, "bytes in all, more than 1048576"),
        ({"argv": ("/bin/cat",) + ("b" * 8192,) * 255}, "bytes in all"),
        ({"argv": ("sh", "-c", "x")}, "argv[0] must be a normalised absolute path"),
        ({"argv": ("./sh",)}, "argv[0]"),
        ({"argv": ("",)}, "argv[0]"),
        ({"argv": ("/bin/../usr/bin/sh",)}, "argv[0]"),
        ({"argv": ("/../bin/sh",)}, "argv[0]"),
        ({"argv": ("/bin/./sh",)}, "argv[0]"),
        ({"argv": ("/bin//sh",)}, "argv[0]"),
        ({"argv": ("//bin/sh",)}, "argv[0]"),
        ({"argv": ("/bin/sh/",)}, "argv[0]"),
        ({"argv": ("/",)}, "argv[0]"),
        ({"argv": ("/bin/s\nh",)}, "argv[0]"),
        ({"argv": ("-/bin/sh",)}, "argv[0]"),
        ({"argv": ("@/bin/sh", "sh")}, "argv[0]"),
        ({"argv": ("+/bin/sh",)}, "argv[0]"),
        ({"argv": ("!/bin/sh",)}, "argv[0]"),
        ({"cwd": "/workspace/../etc"}, "'..'"),
        ({"cwd": "/workspace/group/../../etc"}, "'..'"),
        ({"cwd": "/workspace/group/.."}, "'..'"),
        ({"cwd": "/workspace/group\x00"}, "control characters"),
        ({"cwd": "/workspace/group\n"}, "control characters"),
        ({"cwd": "/workspace/gr\udc80oup"}, "not valid Unicode"),
        ({"cwd": "workspace/group"}, "absolute path"),
        ({"cwd": ""}, "absolute path"),
        ({"cwd": "/workspace/group/" + "a" * 4096}, "at most 4095 bytes"),
        (
            {"cwd": "/workspace"},
            "cwd must be in /workspace/group or /workspace/photos or /workspace/inbox",
        ),
        ({"cwd": "/workspace/global"}, "cwd must be in"),
        ({"cwd": "/workspace/groupx"}, "cwd must be in"),
        ({"cwd": "/workspace/project"}, "cwd must be in"),  # another group's mount
        ({"cwd": "/etc"}, "cwd must be in"),
        ({"cwd": "/"}, "cwd must be in"),
        ({"cwd": "/tmp"}, "cwd must be in"),
        ({"cwd": "/var/lib/nanoclaw/groups/family"}, "cwd must be in"),
        ({"cwd": None}, "cwd must be a string"),
        ({"timeout_seconds": 0}, "from 1 to 600"),
        ({"timeout_seconds": -1}, "from 1 to 600"),
        ({"timeout_seconds": 601}, "from 1 to 600 (group family's limit), not 601"),
        ({"timeout_seconds": 10**30}, "from 1 to 600"),
        ({"timeout_seconds": True}, "not True"),
        ({"timeout_seconds": 1.5}, "from 1 to 600"),
        ({"timeout_seconds": 30.0}, "from 1 to 600"),
        ({"timeout_seconds": "30"}, "from 1 to 600"),
        ({"timeout_seconds": None}, "from 1 to 600"),
    ],
)
def test_hostile_requests_are_refused(
    policy: Policy, changes: dict[str, Any], fragment: str
) -> None:
    refused(policy, fragment, **changes)


@pytest.mark.parametrize(
    ("cwd", "expected"),
    [
        ("/workspace/group", "/workspace/group"),
        ("/workspace/group/", "/workspace/group"),
        ("/workspace/group/./a//b/", "/workspace/group/a/b"),
        ("//workspace/group", "/workspace/group"),
        ("/workspace/photos", "/workspace/photos"),
        ("/workspace/inbox/x", "/workspace/inbox/x"),
        ("/workspace/group/..x", "/workspace/group/..x"),
    ],
)
def test_cwd_is_normalised(policy: Policy, cwd: str, expected: str) -> None:
    assert compiled(policy, cwd=cwd)["WorkingDirectory"] == expected


def test_a_list_argv_is_accepted_and_stored_as_a_tuple(policy: Policy) -> None:
    plan = compile_unit(policy, request(argv=["/bin/ls", "-l"]), UNIT_ID)
    assert props(plan)["ExecStart"] == (("/bin/ls", ("/bin/ls", "-l"), False),)


def test_the_timeout_may_reach_the_groups_bound(policy: Policy) -> None:
    assert compiled(policy, timeout_seconds=600)["RuntimeMaxUSec"] == 600 * 1_000_000
    assert compiled(policy, timeout_seconds=1)["RuntimeMaxUSec"] == 1_000_000


def test_compiling_is_deterministic_and_the_plan_deeply_immutable(policy: Policy) -> None:
    first = compile_unit(policy, request("main", proxy_token=TOKEN), UNIT_ID)
    assert first == compile_unit(policy, request("main", proxy_token=TOKEN), UNIT_ID)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.name = "x"  # type: ignore[misc]

    def mutable(value: object) -> bool:
        if isinstance(value, tuple):
            return any(mutable(item) for item in value)
        return not isinstance(value, str | int | bytes)  # bool is an int

    assert not mutable(first.properties)


def test_the_policy_is_not_changed_by_compiling(policy: Policy) -> None:
    before = copy.deepcopy(dict(policy.groups))
    compile_unit(policy, request("main", argv=("/bin/sh", "$x"), proxy_token=TOKEN), UNIT_ID)
    assert dict(policy.groups) == before


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


# --- explain --------------------------------------------------------------------------


def test_explain_shows_one_unit_file_line_per_property(policy: Policy) -> None:
    plan = compile_unit(
        policy, request("main", cwd="/workspace/project", proxy_token=TOKEN), UNIT_ID
    )
    lines = explain(plan).splitlines()
    assert lines[0] == "# nanoclaw-tool-main-0123456789abcdef.service"
    assert len(lines) == len(plan.properties) + 1
    assert all(re.fullmatch(r"[A-Za-z]+=.*", line) for line in lines[1:])
    for expected in (
        "Description=nanoclaw tool call for group main",
        "ExecStart=/bin/sh -c ls",
        "User=61000",
        "WorkingDirectory=/workspace/project",
        "Slice=nanoclaw-tools-main.slice",
        "SendSIGKILL=yes",
        "TimeoutStopSec=2",
        "RuntimeMaxSec=30",
        "MemoryMax=1073741824",
        "MemorySwapMax=0",
        "CPUQuota=50%",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "TemporaryFileSystem=/workspace:mode=0755 /run:mode=0755"
        " /tmp:mode=1777,size=268435456 /var/tmp:mode=1777,size=268435456"
        " /dev/shm:mode=1777,size=268435456",
        "BindPaths=/var/lib/nanoclaw/groups/main:/workspace/group:norbind"
        " /srv/project:/workspace/project:norbind",
        "BindReadOnlyPaths=-/var/lib/nanoclaw/memory/global:/workspace/global:norbind"
        " /nix/store/abc-ripgrep:/nix/store/abc-ripgrep:norbind",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "RestrictNamespaces=yes",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~" + " ".join(SYSCALL_DENY),
        "SystemCallErrorNumber=EPERM",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "PrivateNetwork=no",
        "IPAddressDeny=any",
        "IPAddressAllow=140.82.112.0/20 2001:db8::/32 127.0.0.1/32",
    ):
        assert expected in lines, expected


def test_explain_masks_proxy_credentials(policy: Policy) -> None:
    text = explain(compile_unit(policy, request("main", proxy_token=TOKEN), UNIT_ID))
    assert "s3cret" not in text
    assert '"HTTPS_PROXY=http://***@127.0.0.1:3128"' in text


def test_explain_keeps_hostile_arguments_on_their_line(policy: Policy) -> None:
    argv = (
        "/bin/sh",
        "-c",
        "x\nUser=0\r\n[Service]",
        "a b",
        'q"uote',
        "back\\slash",
        "100%",
        "\x1b",
    )
    plan = compile_unit(policy, request(argv=argv), UNIT_ID)
    lines = explain(plan).splitlines()
    assert len(lines) == len(plan.properties) + 1
    exec_line = next(line for line in lines if line.startswith("ExecStart="))
    assert exec_line == (
        'ExecStart=/bin/sh -c "x\\x0aUser=0\\x0d\\x0a[Service]" "a b" "q\\"uote" '
        '"back\\\\slash" "100%%" "\\x1b"'
    )
    assert not any(line.startswith("User=0") for line in lines)


def test_explain_escapes_colons_in_paths() -> None:
    data = at(FULL, ("groups", "family", "mounts", 0, "host"), "/srv/a:b c")
    plan = compile_unit(parse_policy(data, POLICY_PATH), request(), UNIT_ID)
    line = next(
        line for line in explain(plan).splitlines() if line.startswith("BindReadOnlyPaths=")
    )
    assert '"/srv/a\\\\:b c:/workspace/photos:norbind"' in line


def test_explain_refuses_what_it_cannot_show() -> None:
    with pytest.raises(ValueError, match="cannot show"):
        explain(UnitPlan("x.service", "x.slice", (("Odd", "v", 1),)))


# --- models of systemd, for the tests above -------------------------------------------


def conforms(signature: str, value: object) -> bool:
    """Whether a Python value fits a D-Bus signature the way dbus-next will marshal it."""
    if signature == "s":
        return isinstance(value, str) and "\0" not in value
    if signature == "b":
        return isinstance(value, bool)
    if signature in ("t", "u", "i", "y"):
        low, high = {
            "t": (0, 2**64 - 1),
            "u": (0, 2**32 - 1),
            "i": (-(2**31), 2**31 - 1),
            "y": (0, 255),
        }[signature]
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    if signature == "ay":
        return isinstance(value, bytes)
    if signature.startswith("a"):
        return isinstance(value, tuple) and all(conforms(signature[1:], item) for item in value)
    if signature.startswith("("):
        parts = split_struct(signature[1:-1])
        return (
            isinstance(value, tuple)
            and len(value) == len(parts)
            and all(conforms(part, item) for part, item in zip(parts, value, strict=True))
        )
    raise AssertionError(f"no model for {signature}")


def split_struct(inner: str) -> list[str]:
    parts, start, depth = [], 0, 0
    for index, char in enumerate(inner):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and char != "a":
            parts.append(inner[start : index + 1])
            start = index + 1
    return parts


def systemd_expand(argv: tuple[str, ...] | list[str], env: dict[str, str]) -> list[str]:
    """systemd 252's replace_env_argv() (src/basic/env-util.c), as ExecStart= gets it."""
    result: list[str] = []
    for word in argv:
        if word.startswith("$") and word[1:2] not in ("{", "$"):
            result += env.get(word[1:], "").split()  # a lone "$" vanishes
        else:
            result.append(replace_env(word, env))
    return result


def replace_env(text: str, env: dict[str, str]) -> str:
    out, start, state = [], 0, "word"
    for index, char in enumerate(text):
        if state == "word":
            state = "dollar" if char == "$" else "word"
        elif state == "dollar":
            if char == "{":
                out.append(text[start : index - 1])
                start, state = index - 1, "name"
            elif char == "$":  # "$$" is one literal "$"
                out.append(text[start:index])
                start, state = index + 1, "word"
            else:
                state = "word"
        elif state == "name":
            if char == "}":
                out.append(env.get(text[start + 2 : index], ""))
                start, state = index + 1, "word"
            elif char == ":":  # ${X:-y} is not supported here: left as it is
                state = "word"
    return "".join(out) + text[start:]


def parent_slices(name: str) -> list[str]:
    """systemd's slice_build_parent_slice(), applied until the root slice."""
    parents = []
    while name != "-.slice":
        stem = name.removesuffix(".slice")
        name = stem[: stem.rindex("-")] + ".slice" if "-" in stem else "-.slice"
        parents.append(name)
    return parents


def unit_name_is_valid(name: str) -> bool:
    return (
        len(name) <= 255 and re.fullmatch(r"[A-Za-z0-9:_.\\-]+\.(service|slice)", name) is not None
    )
