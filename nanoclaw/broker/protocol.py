"""The broker's protocol: the grammar of the boundary between the host and root, in one place.

One request per connection, one line of JSON each way; a client that closes the
connection early stops its unit. Both sides import this module: the broker reads requests
with it (whatever is not in this grammar is refused, never ignored) and writes answers;
the host writes requests and reads answers. It does no I/O.

- run: {"group", "argv", "cwd", "timeout", "stdin" (base64, optional), "proxy_token"
  (optional), "policy" (optional), "subagent" (optional: one the policy declares for the
  group, whose units get the group's sandbox narrowed; absent, the group's own agent)}
  answered by {"ok": true, "unit", "result", "exit_status", "signal", "stdout", "stderr"
  (base64), "truncated", "duration_ms", "timeout", "properties_sha256"}. The broker
  clamps `timeout` to the group's wall_seconds and answers the one it used;
  `properties_sha256` is the digest of the unit's properties as sent to systemd
  (nanoclaw.broker.unit_digest). `policy` is the generation of the summary the client
  relied on (for the proxy secret and the domains the host's egress proxy grants with it):
  when it is not the broker's, or when a group with domains comes without a secret, the
  broker refuses and sends its current summary along, so the client acts on that and asks
  once more. So a call is one round trip unless the policy changed.
- agent: {"agent": group, "argv", "env"} asks for the group's agent unit
  (nanoclaw.broker.agent_unit judges argv and env). The broker answers {"ok": true,
  "send": "stdio"}; the client then sends one byte with two file descriptors
  (SCM_RIGHTS): the read end of the CLI's stdin and the write end of its stdout. The
  broker answers {"ok": true, "unit"} once the unit runs, and {"ok": true, "ended":
  {"result", "exit_status", "signal"}} when it has stopped. Closing the connection stops
  the unit.
- {"describe": true} answered by the summary: {"ok": true, "generation", "groups":
  {name: {"wall_seconds", "domains", "agent"}}, "enforced": {"ip_filtering", "pid_isolation",
  "refused": {name: why}}}.
- {"usage": true} answered by {"ok": true, "free_bytes", "groups": {name: {"bytes",
  "complete"}}}.
- Any refusal: {"ok": false, "error": "why"}, with "policy": the summary where it helps.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_STDIN_BYTES = 8 * 1024 * 1024
MAX_REQUEST_BYTES = 12 * 1024 * 1024  # argv (1 MiB) + base64 stdin (8 MiB) + framing
MAX_REPLY_BYTES = 160 * 1024 * 1024  # two capped outputs in base64, with room to spare
# Where the host's egress proxy listens, and the relays of groups with domains lead.
DEFAULT_EGRESS_SOCKET = "/run/nanoclaw-egress/proxy.sock"
# Where the host's credential proxy listens, and the model relays of agent units lead.
DEFAULT_CREDENTIAL_SOCKET = "/run/nanoclaw-credentials/proxy.sock"
DESCRIBE = {"describe": True}
USAGE = {"usage": True}
_RUN_FIELDS = frozenset(
    {"group", "argv", "cwd", "timeout", "stdin", "proxy_token", "policy", "subagent"}
)
MAIN_AGENT = "main"  # the group's own agent (nanoclaw.broker.policy.MAIN_AGENT)


class ProtocolError(Exception):
    """A message outside the grammar; the text says what is wrong with it."""


@dataclass(frozen=True)
class RunRequest:
    group: str
    argv: tuple[str, ...]
    cwd: str
    timeout: int  # seconds wanted; the broker clamps it to the group's bound
    stdin: bytes = b""
    proxy_token: str | None = None  # the host's per-call secret for its egress proxy
    policy: str | None = None  # the generation of the summary the client relied on
    agent: str = MAIN_AGENT  # which of the group's agents calls

    def to_wire(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "group": self.group,
            "argv": list(self.argv),
            "cwd": self.cwd,
            "timeout": self.timeout,
            "stdin": base64.b64encode(self.stdin).decode(),
        }
        for name in ("proxy_token", "policy"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        if self.agent != MAIN_AGENT:  # "agent" names the request for an agent unit
            data["subagent"] = self.agent
        return data

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> RunRequest:
        """Only these fields exist; anything else is refused, not ignored. Values are
        checked for their type here, and against the policy by the compiler."""
        extra = set(data) - _RUN_FIELDS
        if extra:
            raise ProtocolError(f"unknown request fields: {', '.join(sorted(extra))}")
        group, argv, cwd, timeout = (data.get(k) for k in ("group", "argv", "cwd", "timeout"))
        if not isinstance(group, str) or not isinstance(cwd, str):
            raise ProtocolError("group and cwd must be strings")
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ProtocolError("argv must be a list of strings")
        if isinstance(timeout, bool) or not isinstance(timeout, int):
            raise ProtocolError("timeout must be an integer number of seconds")
        for name in ("proxy_token", "policy", "subagent"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise ProtocolError(f"{name} must be a string")
        try:
            stdin = base64.b64decode(data.get("stdin", ""), validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise ProtocolError("stdin must be base64") from None
        if len(stdin) > MAX_STDIN_BYTES:
            raise ProtocolError(f"stdin is limited to {MAX_STDIN_BYTES} bytes")
        return cls(group, tuple(argv), cwd, timeout, stdin, data.get("proxy_token"),
                   data.get("policy"), data.get("subagent") or MAIN_AGENT)  # fmt: skip


@dataclass(frozen=True)
class AgentRequest:
    group: str
    argv: tuple[str, ...]  # the CLI's arguments, without the program
    env: Mapping[str, str]

    def to_wire(self) -> dict[str, Any]:
        return {"agent": self.group, "argv": list(self.argv), "env": dict(self.env)}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> AgentRequest:
        extra = set(data) - {"agent", "argv", "env"}
        if extra:
            raise ProtocolError(f"unknown request fields: {', '.join(sorted(extra))}")
        group, argv, env = data.get("agent"), data.get("argv"), data.get("env")
        if not isinstance(group, str):
            raise ProtocolError("agent must be a group's name")
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ProtocolError("argv must be a list of strings")
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise ProtocolError("env must be a table of strings")
        return cls(group, tuple(argv), dict(env))


SEND_STDIO = {"ok": True, "send": "stdio"}
STDIO_FDS = 2  # the CLI's stdin (read end) and stdout (write end)


@dataclass(frozen=True)
class RunResult:
    unit: str
    result: str  # systemd's Result=: success, exit-code, signal, timeout, oom-kill, ...
    exit_status: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    truncated: bool
    duration_ms: int
    timeout: int  # the seconds the unit was given, after the broker's clamp
    properties_sha256: str  # nanoclaw.broker.unit_digest of the properties systemd was given

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def to_wire(self) -> dict[str, Any]:
        return {
            "ok": True,
            **{name: getattr(self, name) for name in _RESULT_PLAIN},
            "stdout": base64.b64encode(self.stdout).decode(),
            "stderr": base64.b64encode(self.stderr).decode(),
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> RunResult:
        return cls(
            **{name: data[name] for name in _RESULT_PLAIN},
            stdout=base64.b64decode(data["stdout"]),
            stderr=base64.b64decode(data["stderr"]),
        )


_RESULT_PLAIN = (
    "unit",
    "result",
    "exit_status",
    "signal",
    "truncated",
    "duration_ms",
    "timeout",
    "properties_sha256",
)


@dataclass(frozen=True)
class GroupGrant:
    wall_seconds: int
    domains: tuple[str, ...]
    agent: bool = False  # whether the broker starts an agent unit for the group


@dataclass(frozen=True)
class Enforcement:
    """What the broker's start-up checks found: whether IPAddressDeny= holds (groups with
    cidrs need it), whether units get a PID namespace of their own (PrivatePIDs=, systemd
    257 and later), and which groups it therefore refuses here, each with the reason."""

    ip_filtering: bool
    pid_isolation: bool
    refused: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicySummary:
    """What the host needs of the policy: each group's bound and domains (for whom it
    runs its egress proxy). `generation` names exactly this content."""

    groups: Mapping[str, GroupGrant]
    enforced: Enforcement | None = None
    generation: str = field(default="", compare=False)

    @classmethod
    def of(
        cls, groups: Mapping[str, GroupGrant], enforced: Enforcement | None = None
    ) -> PolicySummary:
        content = json.dumps(
            sorted((n, g.wall_seconds, list(g.domains), g.agent) for n, g in groups.items())
        )
        return cls(groups, enforced, hashlib.sha256(content.encode()).hexdigest()[:16])

    def to_wire(self) -> dict[str, Any]:
        groups = {
            name: {"wall_seconds": g.wall_seconds, "domains": list(g.domains), "agent": g.agent}
            for name, g in self.groups.items()
        }
        data: dict[str, Any] = {"ok": True, "generation": self.generation, "groups": groups}
        if self.enforced is not None:
            data["enforced"] = {
                "ip_filtering": self.enforced.ip_filtering,
                "pid_isolation": self.enforced.pid_isolation,
                "refused": dict(self.enforced.refused),
            }
        return data

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> PolicySummary:
        enforced = data.get("enforced")
        return cls(
            groups={
                name: GroupGrant(
                    int(g["wall_seconds"]), tuple(map(str, g["domains"])), bool(g.get("agent"))
                )
                for name, g in data["groups"].items()
            },
            enforced=None
            if enforced is None
            else Enforcement(
                bool(enforced["ip_filtering"]),
                bool(enforced["pid_isolation"]),
                {str(name): str(why) for name, why in enforced["refused"].items()},
            ),
            generation=str(data["generation"]),
        )


@dataclass(frozen=True)
class Usage:
    bytes: int
    complete: bool  # False: the walk stopped at its bound; there is more


@dataclass(frozen=True)
class UsageReport:
    free_bytes: int  # on the file system the workspaces share, for unprivileged writers
    groups: Mapping[str, Usage]

    def to_wire(self) -> dict[str, Any]:
        groups = {n: {"bytes": u.bytes, "complete": u.complete} for n, u in self.groups.items()}
        return {"ok": True, "free_bytes": self.free_bytes, "groups": groups}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> UsageReport:
        return cls(
            free_bytes=int(data["free_bytes"]),
            groups={
                n: Usage(int(g["bytes"]), bool(g["complete"])) for n, g in data["groups"].items()
            },
        )


@dataclass(frozen=True)
class Refusal:
    error: str
    policy: PolicySummary | None = None  # the broker's current summary, where it helps

    def to_wire(self) -> dict[str, Any]:
        data: dict[str, Any] = {"ok": False, "error": self.error}
        if self.policy is not None:
            data["policy"] = self.policy.to_wire()
        return data

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Refusal:
        policy = data.get("policy")
        return cls(
            str(data.get("error", "refused without a reason")),
            None if policy is None else PolicySummary.from_wire(policy),
        )


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One line of JSON holding an object, or ProtocolError."""
    if not line.endswith(b"\n"):
        raise ProtocolError("a message must be one line of JSON")
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("a message must be a JSON object")
    return data
