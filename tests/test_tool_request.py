"""Tool requests: no request, however hostile, adds or changes a property; what the
policy does not allow is refused with the reason."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from nanoclaw.broker.compiler import (
    compile_unit,
)
from nanoclaw.broker.policy import Policy
from tests.support.compiling import (
    TOKEN,
    UNIT_ID,
    compiled,
    full_policy,  # noqa: F401 -- the `policy` fixture
    props,
    refused,
    request,
    systemd_expand,
)

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
