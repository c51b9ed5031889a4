"""The compiler's test helpers: a policy and requests to compile, a plan's properties by
name, and models of what systemd does with them (D-Bus signatures, $ expansion, slices)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from nanoclaw.broker.compiler import (
    UnitPlan,
    compile_unit,
)
from nanoclaw.broker.policy import Policy
from nanoclaw.broker.policy_file import parse_policy
from nanoclaw.broker.tool_request import RequestError, ToolRequest
from tests.support.policies import FULL, POLICY_PATH

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


@pytest.fixture(name="policy", scope="module")
def full_policy() -> Policy:
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


# --- models of systemd ----------------------------------------------------------------


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
