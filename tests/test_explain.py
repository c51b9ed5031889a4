"""`nanoclaw policy explain`: a plan as unit-file lines, one per property, quoted so that
no argument starts a line of its own, and with proxy credentials masked."""

from __future__ import annotations

import re

import pytest

from nanoclaw.broker.compiler import (
    SYSCALL_DENY,
    UnitPlan,
    compile_unit,
)
from nanoclaw.broker.explain import explain
from nanoclaw.broker.policy import Policy
from nanoclaw.broker.policy_file import parse_policy
from tests.support.compiling import (
    TOKEN,
    UNIT_ID,
    full_policy,  # noqa: F401 -- the `policy` fixture
    request,
)
from tests.support.policies import FULL, POLICY_PATH, at

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
        "RestrictAddressFamilies=AF_UNIX AF_INET",
        "PrivateNetwork=yes",
        "JoinsNamespaceOf=nanoclaw-egress-main.socket",
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
