"""A tool request as the compiler takes it, and what the policy lets it be.

The request chooses only the group (and which of its agents calls: a subagent the policy
declares gets the group narrowed by it, never widened), argv, the working directory inside
the sandbox, a timeout within the group's bound and the host's proxy secret; `check`
judges each against the policy and the limits of systemd and D-Bus, and nothing in a
request is ever parsed as a property.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from nanoclaw.broker.config_reader import CONTROL_CHARACTERS
from nanoclaw.broker.policy import (
    GROUP_SANDBOX,
    MAIN_AGENT,
    GroupPolicy,
    Policy,
    UnknownGroup,
    UnknownSubagent,
)

MAX_ARGS = 256
MAX_ARG_BYTES = 64 * 1024
MAX_ARGV_BYTES = 1024 * 1024
_PATH_MAX = 4095
PROXY_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")


class RequestError(Exception):
    """A tool request the policy does not allow; the message says why."""


@dataclass(frozen=True)
class ToolRequest:
    group: str
    argv: tuple[str, ...]  # argv[0] an absolute path; sent as it is, never re-parsed
    cwd: str  # in the sandbox: /workspace/group, or a mount's place, or below either
    timeout_seconds: int  # 1 to the group's limits.wall_seconds
    # The host's per-call secret for its egress proxy; used only for groups with domains.
    proxy_token: str | None = None
    agent: str = MAIN_AGENT  # the group's own agent, or one of its declared subagents


@dataclass(frozen=True)
class Checked:
    """A request the policy allows, in the form the compiler uses."""

    group: GroupPolicy  # narrowed for the request's subagent
    argv: tuple[str, ...]
    cwd: str  # normalised
    timeout_seconds: int
    proxy_token: str | None
    agent: str = MAIN_AGENT


def check(policy: Policy, request: ToolRequest) -> Checked:
    """The request, judged; RequestError says what is not allowed."""
    try:
        group = _group(policy, request.group).narrowed(request.agent)
    except UnknownSubagent as exc:
        raise RequestError(str(exc)) from None
    token = request.proxy_token
    if token is not None and (not isinstance(token, str) or not PROXY_TOKEN.fullmatch(token)):
        raise RequestError(f"proxy_token must match {PROXY_TOKEN.pattern}")
    return Checked(
        group=group,
        argv=_argv(request.argv),
        cwd=_cwd(request.cwd, group),
        timeout_seconds=_timeout(request.timeout_seconds, group),
        proxy_token=token,
        agent=request.agent,
    )


def _group(policy: Policy, name: object) -> GroupPolicy:
    if not isinstance(name, str):
        raise RequestError(f"group must be a string, not {type(name).__name__}")
    try:
        return policy.group(name)
    except UnknownGroup as exc:
        raise RequestError(str(exc)) from None


def _argv(argv: object) -> tuple[str, ...]:
    if not isinstance(argv, tuple | list):
        raise RequestError("argv must be a list of strings")
    if not 1 <= len(argv) <= MAX_ARGS:
        raise RequestError(f"argv must have 1 to {MAX_ARGS} arguments, not {len(argv)}")
    total = 0
    for index, arg in enumerate(argv):
        if not isinstance(arg, str):
            raise RequestError(f"argv[{index}] must be a string, not {type(arg).__name__}")
        if "\0" in arg:
            raise RequestError(f"argv[{index}] contains a NUL byte")
        try:
            size = len(arg.encode())
        except UnicodeEncodeError:  # a lone surrogate: D-Bus strings are UTF-8
            raise RequestError(f"argv[{index}] is not valid Unicode text") from None
        if size > MAX_ARG_BYTES:
            raise RequestError(f"argv[{index}] is {size} bytes, more than {MAX_ARG_BYTES}")
        total += size
    if total > MAX_ARGV_BYTES:
        raise RequestError(f"argv is {total} bytes in all, more than {MAX_ARGV_BYTES}")
    program = argv[0]
    if (
        not program.startswith("/")
        or program.startswith("//")
        or program == "/"
        or posixpath.normpath(program) != program
        or CONTROL_CHARACTERS.search(program)
    ):
        raise RequestError(
            "argv[0] must be a normalised absolute path (no '.', '..' or '//'), "
            f"not {program[:200]!r}"
        )
    return tuple(argv)


def _cwd(cwd: object, group: GroupPolicy) -> str:
    if not isinstance(cwd, str):
        raise RequestError(f"cwd must be a string, not {type(cwd).__name__}")
    if CONTROL_CHARACTERS.search(cwd):
        raise RequestError("cwd must not contain control characters (NUL, newline, ...)")
    try:
        size = len(cwd.encode())
    except UnicodeEncodeError:
        raise RequestError("cwd is not valid Unicode text") from None
    if not cwd.startswith("/") or size > _PATH_MAX:
        raise RequestError(f"cwd must be an absolute path of at most {_PATH_MAX} bytes")
    parts = [part for part in cwd.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise RequestError("cwd must not contain a '..' component")
    path = "/" + "/".join(parts)
    roots = (GROUP_SANDBOX, *(mount.sandbox for mount in group.mounts))
    if not any(path == root or path.startswith(root + "/") for root in roots):
        raise RequestError(f"cwd must be in {' or '.join(roots)}, not {path}")
    return path


def _timeout(value: object, group: GroupPolicy) -> int:
    bound = group.limits.wall_seconds
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= bound:
        raise RequestError(
            f"timeout_seconds must be an integer from 1 to {bound} (group {group.name}'s "
            f"limit), not {value!r}"
        )
    return value
