"""The agent unit: a group's agent runtime (the Claude Code CLI) in a transient unit of its own.

The host asks for it when it opens a group's session, and hands over the pipes the SDK
talks to the CLI through (nanoclaw.broker.agent_runs). What the unit is comes from the
policy and this module alone; the request names the group, the CLI's arguments and some of
its environment, each judged against the allow-lists below, and nothing in it becomes a
property. The unit:

- runs as the group's agent user (policy `agent.uid`): not its tool user, not the host's;
- sees the file system read-only, with one writable place, its state directory
  (/var/lib/nanoclaw-agent/<group>: HOME, CLAUDE_CONFIG_DIR, the transcripts), an empty
  /run (no D-Bus, broker socket, credentials or proxy sockets), and none of what tool units
  never see either (the data directory, the policy, protected paths, every mount source);
- has a network namespace whose only way out is the model relay to the credential proxy,
  which knows the key and accepts only a live placeholder the host issued for the group;
- is bounded by the policy's `agent` limits (MemoryMax=, TasksMax=, CPUWeight=) and has the
  tool units' syscall filter and kernel protections; writable executable memory stays
  allowed, since the runtime compiles JavaScript.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable, Mapping
from functools import partial

from nanoclaw.broker.compiler import (
    MODEL,
    RELAY_ADDRESS,
    SIGNATURES,
    USEC_PER_SECOND,
    UnitPlan,
    check_unit_id,
    confinement,
    hidden,
    kernel_and_privileges,
    no_expansion,
    slice_name,
)
from nanoclaw.broker.config_reader import CONTROL_CHARACTERS
from nanoclaw.broker.policy import (
    RUN,
    SCRATCH,
    AgentPolicy,
    GroupPolicy,
    Policy,
    path_relation,
)
from nanoclaw.broker.protocol import AgentRequest
from nanoclaw.broker.tool_request import MAX_ARGV_BYTES, PROXY_TOKEN, RequestError

VAR_LIB = "/var/lib"
STATE_DIRECTORY = "nanoclaw-agent"  # under /var/lib, one directory per group
STATE_ROOT = f"{VAR_LIB}/{STATE_DIRECTORY}"
SCRATCH_BYTES = 256 * 1024 * 1024  # each of its /tmp, /var/tmp and /dev/shm
STOP_TIMEOUT_USEC = 10 * USEC_PER_SECOND  # time to write its transcript on SIGTERM
MAX_ENV_VALUE = 256
_ENV_TEXT = re.compile(r"[ -~]*")  # printable ASCII


def _exactly(*values: str) -> Callable[[str], bool]:
    return lambda value: value in values


def _mcp_config(value: str) -> bool:
    """Only in-process servers of the host's (type "sdk"): none the CLI would start."""
    try:
        servers = json.loads(value)["mcpServers"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(servers, dict) and all(
        isinstance(server, dict) and server.get("type") == "sdk" for server in servers.values()
    )


def _any_text(value: str) -> bool:
    return True


# The CLI's built-in tool that starts a subagent: offered only to a group whose policy
# declares subagents (their tool calls are the group's MCP tools, each in a tool unit).
SUBAGENT_TOOL = "Agent"


def _builtins(value: str, allowed: frozenset[str]) -> bool:
    return value == "" or set(value.split(",")) <= allowed


def _allowed_tools(value: str, builtins: frozenset[str]) -> bool:
    return all(name.startswith("mcp__nanoclaw__") or name in builtins for name in value.split(","))


# The CLI's options the host's SDK passes, and what each may be; None: takes no value.
# Built-in tools stay off (every tool runs in a tool unit) but for SUBAGENT_TOOL where the
# policy declares subagents, no settings are loaded and no MCP server is started by the
# CLI; an option not listed here is refused.
FLAGS: Mapping[str, Callable[[str], bool] | None] = {
    "--output-format": _exactly("stream-json"),
    "--input-format": _exactly("stream-json"),
    "--verbose": None,
    "--system-prompt": _any_text,
    "--tools": _exactly(""),
    "--allowedTools": partial(_allowed_tools, builtins=frozenset()),
    "--model": _any_text,
    "--fallback-model": _any_text,
    "--resume": _any_text,
    "--mcp-config": _mcp_config,
    "--strict-mcp-config": None,
    "--setting-sources": _exactly(""),
}
SWARM_FLAGS: Mapping[str, Callable[[str], bool] | None] = {
    **FLAGS,
    "--tools": partial(_builtins, allowed=frozenset({SUBAGENT_TOOL})),
    "--allowedTools": partial(_allowed_tools, builtins=frozenset({SUBAGENT_TOOL})),
}
# The environment the host may give the CLI, by name; the broker sets the rest (HOME, the
# CLI's state, the model relay's address) and nothing else is inherited.
ENVIRONMENT: Mapping[str, Callable[[str], bool]] = {
    "ANTHROPIC_API_KEY": lambda value: (
        value.startswith("sk-nanoclaw-")
        and PROXY_TOKEN.fullmatch(value.removeprefix("sk-nanoclaw-")) is not None
    ),
    "CLAUDE_CODE_ENTRYPOINT": _any_text,
    "CLAUDE_AGENT_SDK_VERSION": _any_text,
    "CLAUDE_AGENT_SDK_CLIENT_APP": _any_text,
    "CLAUDE_CODE_SDK_READS_SESSION_STATE": _any_text,
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": _any_text,
    "DISABLE_AUTOUPDATER": _any_text,
    "CLAUDE_CODE_MAX_RETRIES": _any_text,
    "ENABLE_TOOL_SEARCH": _any_text,
    "CLAUDE_CODE_DISABLE_CRON": _any_text,
    "CLAUDE_CODE_DISABLE_BACKGROUND_TASKS": _any_text,
}


def _hidden(policy: Policy) -> tuple[str, ...]:
    """What tool units never see, but for what is in /var/lib: that is an empty tmpfs here."""
    return tuple(path for path in hidden(policy) if not path_relation(path.lstrip("-"), VAR_LIB))


def state_directory(group: str) -> str:
    return posixpath.join(STATE_ROOT, group)


def agent_unit_name(group: str, unit_id: str) -> str:
    return f"nanoclaw-agent-{group}-{unit_id}.service"


def agent_of(group: GroupPolicy) -> AgentPolicy:
    if group.agent is None:
        raise RequestError(
            f"group {group.name} has no agent unit: give it groups.{group.name}.agent.uid "
            "in the policy"
        )
    return group.agent


def check_argv(
    argv: tuple[str, ...], flags: Mapping[str, Callable[[str], bool] | None] = FLAGS
) -> tuple[str, ...]:
    """The arguments, when every one is an allowed option with an allowed value."""
    if sum(len(arg.encode(errors="surrogatepass")) + 1 for arg in argv) > MAX_ARGV_BYTES:
        raise RequestError(f"the CLI's arguments are limited to {MAX_ARGV_BYTES} bytes")
    index = 0
    while index < len(argv):
        arg = argv[index]
        name, has_value, value = arg.partition("=")
        if name not in flags:
            raise RequestError(f"the agent runtime may not be given {name[:40]!r}")
        valid = flags[name]
        if valid is None:
            if has_value:
                raise RequestError(f"{name} takes no value")
        else:
            if not has_value:  # "--flag value", as the SDK passes some options
                index += 1
                if index == len(argv):
                    raise RequestError(f"{name} needs a value")
                value = argv[index]
            if "\0" in value or not valid(value):
                raise RequestError(f"{name} may not be {value[:60]!r}")
        index += 1
    return argv


def check_env(env: Mapping[str, str]) -> tuple[str, ...]:
    """NAME=value lines, when every name is allowed and every value is short plain text."""
    lines = []
    for name, value in sorted(env.items()):
        valid = ENVIRONMENT.get(name)
        if valid is None:
            raise RequestError(f"the agent runtime may not be given the variable {name[:40]!r}")
        if len(value) > MAX_ENV_VALUE or not _ENV_TEXT.fullmatch(value) or not valid(value):
            raise RequestError(f"{name} may not be {value[:60]!r}")
        lines.append(f"{name}={value}")
    return tuple(lines)


def compile_agent_unit(
    policy: Policy, request: AgentRequest, cli: str, unit_id: str, private_pids: bool = False
) -> UnitPlan:
    """The agent unit for `request`. RequestError for what the policy does not allow;
    ValueError for a bad unit_id or CLI path, which are the broker's own."""
    check_unit_id(unit_id)
    if not posixpath.isabs(cli) or CONTROL_CHARACTERS.search(cli):
        raise ValueError(f"the CLI must be an absolute path, not {cli!r}")
    try:
        group = policy.group(request.group)
    except Exception as error:  # UnknownGroup: said as it is
        raise RequestError(str(error)) from None
    agent = agent_of(group)
    argv = check_argv(request.argv, SWARM_FLAGS if group.subagents else FLAGS)
    state = state_directory(group.name)
    environment = (
        f"HOME={state}",
        f"CLAUDE_CONFIG_DIR={state}/claude",
        "CLAUDE_CODE_TMPDIR=/tmp",
        "TMPDIR=/tmp",
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "LANG=C.UTF-8",
        f"ANTHROPIC_BASE_URL=http://{RELAY_ADDRESS}:{MODEL.port}",
        *check_env(request.env),
    )
    values: list[tuple[str, object]] = [
        ("Description", f"nanoclaw agent runtime for group {group.name}"),
        ("Type", "exec"),
        ("ExecStart", ((cli, (cli, *(no_expansion(arg) for arg in argv)), False),)),
        ("User", str(agent.uid)),
        ("Group", str(agent.uid)),
        ("StateDirectory", (f"{STATE_DIRECTORY}/{group.name}",)),
        ("StateDirectoryMode", 0o700),
        ("WorkingDirectory", state),
        ("Environment", environment),
        ("StandardError", "journal"),
        ("Slice", slice_name(group.name)),
        ("CollectMode", "inactive-or-failed"),
        ("KillMode", "control-group"),
        ("SendSIGKILL", True),
        ("TimeoutStopUSec", STOP_TIMEOUT_USEC),
        ("MemoryMax", agent.memory_max_bytes),
        ("MemorySwapMax", 0),
        ("TasksMax", agent.tasks_max),
        ("CPUWeight", agent.cpu_weight),
        *confinement(private_pids),
        # An empty /run and /var/lib, the state directory bound back into the latter.
        (
            "TemporaryFileSystem",
            (
                (RUN, "mode=0755"),
                (VAR_LIB, "mode=0755"),
                *((path, f"mode=1777,size={SCRATCH_BYTES}") for path in SCRATCH),
            ),
        ),
        ("BindPaths", ((state, state, False, 0),)),
        ("InaccessiblePaths", _hidden(policy)),
        *kernel_and_privileges(),
        ("RestrictAddressFamilies", (True, ("AF_UNIX", "AF_INET"))),
        ("PrivateNetwork", True),
        ("JoinsNamespaceOf", (MODEL.socket_name(group.name),)),
    ]
    return UnitPlan(
        name=agent_unit_name(group.name, unit_id),
        slice=slice_name(group.name),
        properties=tuple((name, SIGNATURES[name], value) for name, value in values),
    )
