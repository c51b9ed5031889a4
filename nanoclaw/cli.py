"""The `nanoclaw` command: run the host, check a config file, read the audit trail, bring up
the appliance, chat."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from nanoclaw.appliance.machine import ApplianceError
from nanoclaw.broker.policy import UnknownGroup
from nanoclaw.broker.protocol import DEFAULT_EGRESS_SOCKET, MAIN_AGENT, RunResult
from nanoclaw.broker.tool_request import RequestError
from nanoclaw.host.audit_view import SINCE_HELP
from nanoclaw.host.config import Config, ConfigError, check_secrets, load_config
from nanoclaw.host.journal import log_handler
from nanoclaw.host.sandbox.client import SandboxError

DEFAULT_CONFIG = Path("/etc/nanoclaw/config.toml")
DEFAULT_POLICY = "/etc/nanoclaw/policy.json"
DEFAULT_SOCKET = "/run/nanoclaw/sandbox.sock"
EXIT_CONFIG = 2


def _config_path(args: argparse.Namespace) -> Path:
    if args.config is not None:
        return Path(args.config)
    return Path(os.environ.get("NANOCLAW_CONFIG", DEFAULT_CONFIG))


def _load_checked(args: argparse.Namespace) -> Config:
    config = load_config(_config_path(args))
    check_secrets(config)
    return config


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[log_handler()])
    # nio logs every undecryptable event and key request at warning; keep ours readable.
    logging.getLogger("nio").setLevel(logging.ERROR)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load_checked(args)
    groups = ", ".join(g.folder + (" (main)" if g.main else "") for g in config.groups)
    print(f"{_config_path(args)}: ok; groups: {groups or 'none'}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from nanoclaw.host.service import run_host  # the SDK and nio load only when needed

    config = _load_checked(args)
    _setup_logging(config.log_level)
    asyncio.run(run_host(config))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from nanoclaw.doctor import doctor

    _setup_logging("error")  # the report is the output
    return asyncio.run(doctor(_config_path(args)))


def cmd_policy_explain(args: argparse.Namespace) -> int:
    from nanoclaw.broker.agent_runs import find_agent_cli
    from nanoclaw.broker.agent_unit import compile_agent_unit
    from nanoclaw.broker.compiler import compile_unit
    from nanoclaw.broker.explain import explain
    from nanoclaw.broker.policy_file import load_policy
    from nanoclaw.broker.protocol import AgentRequest
    from nanoclaw.broker.tool_request import ToolRequest

    policy = load_policy(Path(args.policy))
    group = policy.group(args.group)
    # A placeholder secret, so groups with domains show their (masked) proxy variables.
    request = ToolRequest(
        args.group,
        ("/bin/sh", "-c", "…"),
        "/workspace/group",
        group.limits.wall_seconds,
        proxy_token="per-call-secret-here",
    )
    print(explain(compile_unit(policy, request, "0" * 16)))
    if group.agent is not None:
        # The arguments every session has; the host's SDK adds the prompt, tools and model.
        start = AgentRequest(args.group, ("--output-format", "stream-json", "--verbose"), {})
        cli = find_agent_cli() or "/path/to/the/bundled/claude"
        print(explain(compile_agent_unit(policy, start, cli, "0" * 16)))
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("nanoclaw exec: give a command after --", file=sys.stderr)
        return 2
    if "/" not in command[0]:  # found on the unit's PATH, as the tools' commands are
        command = ["/usr/bin/env", *command]
    _setup_logging("warning")
    result = asyncio.run(_exec(args, command))
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.flush()  # the unit's output first, then the summary below
    sys.stderr.buffer.write(result.stderr)
    if result.truncated:
        print("nanoclaw exec: output was cut at the group's limit", file=sys.stderr)
    # On a line of its own, even after output that did not end one.
    unfinished = (result.stderr or result.stdout)[-1:] not in (b"", b"\n")
    print(
        "\n" * unfinished + f"nanoclaw exec: {result.unit}: {result.result} in "
        f"{result.duration_ms} ms",
        file=sys.stderr,
    )
    return result.exit_status if result.exit_status is not None else 128 + (result.signal or 0)


async def _exec(args: argparse.Namespace, command: list[str]) -> RunResult:
    """As a tool call would: through a gateway, with its own egress proxy unless the host's
    already listens there."""
    from nanoclaw.host.sandbox.gateway import SandboxGateway

    gateway = await SandboxGateway.open(
        args.socket, args.timeout, args.egress_socket, proxy_required=False
    )
    try:
        return await gateway.run(args.group, command, agent=args.subagent)
    finally:
        await gateway.close()


def cmd_tasks(args: argparse.Namespace) -> int:
    """Tasks in the data directory's store, while the host may be running: each change is
    one SQLite transaction (WAL; a busy host is waited for), and slots are claimed by
    compare-and-set, so a change and a claim never both win. The running host is woken
    to see it at once."""
    from nanoclaw.host.scheduler import poke
    from nanoclaw.host.store import Store
    from nanoclaw.host.tasks import TaskRefused, TaskService

    config = load_config(_config_path(args))
    database = config.data_dir / "nanoclaw.db"
    if not database.exists():
        print(f"nanoclaw: no {database}: the host has not run here yet", file=sys.stderr)
        return 1
    store = Store(database)
    try:
        tasks = TaskService(store, config.timezone, lambda _: None, lambda: None)
        if args.action == "list":
            print(tasks.list_text(None))
            return 0
        if args.task_id is None:
            print(
                f"nanoclaw tasks {args.action}: give a task id (see nanoclaw tasks list)",
                file=sys.stderr,
            )
            return 2
        actions = {
            "run": lambda: tasks.run_now(args.task_id),
            "pause": lambda: tasks.pause(None, args.task_id),
            "resume": lambda: tasks.resume(None, args.task_id),
            "cancel": lambda: tasks.cancel(None, args.task_id),
        }
        try:
            print(actions[args.action]())
        except TaskRefused as refusal:
            print(f"nanoclaw: {refusal}", file=sys.stderr)
            return 1
    finally:
        store.close()
    if not poke(config.data_dir):
        print("(the host is not running: it sees this when it starts)")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """The audit trail, from a read-only connection: the running host is not disturbed."""
    import json
    import sqlite3
    from datetime import datetime

    from nanoclaw.host.audit_table import open_read_only, select_audit
    from nanoclaw.host.audit_view import parse_since, render_table

    config = load_config(_config_path(args))
    try:
        since = parse_since(args.since, datetime.now(config.timezone)) if args.since else 0
    except ValueError as error:
        print(f"nanoclaw audit: {error}", file=sys.stderr)
        return 2
    database = config.data_dir / "nanoclaw.db"
    try:
        db = open_read_only(database)
        try:
            rows = select_audit(db, args.group, since)
        finally:
            db.close()
    except sqlite3.Error as error:
        print(f"nanoclaw: cannot read the audit trail in {database}: {error}", file=sys.stderr)
        return 1
    if args.json:
        for row in rows:
            print(json.dumps(row.to_json()))
    else:
        print(render_table(rows, config.timezone))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from nanoclaw.appliance.up import up

    _setup_logging("warning")
    key_file = Path(args.api_key_file) if args.api_key_file else None
    return asyncio.run(up(Path(args.data_dir), args.port, key_file, args.base_url))


def cmd_down(args: argparse.Namespace) -> int:
    from nanoclaw.appliance.up import down

    return down(Path(args.data_dir))


def cmd_logs(args: argparse.Namespace) -> int:
    from nanoclaw.appliance.up import logs

    return logs(Path(args.data_dir), args.passed)


def cmd_status(args: argparse.Namespace) -> int:
    from nanoclaw.appliance.up import LOG_UNITS, enter

    units = [u for u in LOG_UNITS if u != "-u"]
    return enter(Path(args.data_dir), ["systemctl", "--no-pager", "status", *units])


def cmd_shell(args: argparse.Namespace) -> int:
    from nanoclaw.appliance.up import enter

    return enter(Path(args.data_dir), args.passed or ["/bin/bash", "--login"])


def cmd_chat(args: argparse.Namespace) -> int:
    from nanoclaw.appliance.chat import chat

    _setup_logging("error")
    return asyncio.run(chat(Path(args.data_dir), args.group, args.wait))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="nanoclaw", description="A personal AI agent in Matrix rooms."
    )
    sub = top.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("run", cmd_run, "run the agent host"),
        ("check-config", cmd_check_config, "validate the config file and its secrets, then exit"),
        ("doctor", cmd_doctor, "check config, homeserver, broker, model key and data directory"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument(
            "--config", help=f"config file (default $NANOCLAW_CONFIG or {DEFAULT_CONFIG})"
        )
        p.set_defaults(func=func)
    policy = sub.add_parser("policy", help="inspect the sandbox policy")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    explain = policy_sub.add_parser(
        "explain", help="print the properties of GROUP's tool and agent units"
    )
    explain.add_argument("group")
    explain.add_argument("--policy", default=DEFAULT_POLICY)
    explain.set_defaults(func=cmd_policy_explain)
    run = sub.add_parser(
        "exec",
        help="run a command in GROUP's sandbox, as a tool call would",
        usage="nanoclaw exec [--socket PATH] [--egress-socket PATH] [--timeout SECONDS] "
        "[--subagent NAME] GROUP -- COMMAND...",
    )
    run.add_argument("group")
    run.add_argument("--socket", default=DEFAULT_SOCKET)
    run.add_argument(
        "--egress-socket",
        default=DEFAULT_EGRESS_SOCKET,
        help="where to run an egress proxy for the call, unless the host's listens there",
    )
    run.add_argument("--timeout", type=int, default=60)
    run.add_argument(
        "--subagent",
        default=MAIN_AGENT,
        help="as this subagent's tool call: the group's sandbox narrowed as the policy says",
    )
    run.add_argument("command", nargs=argparse.REMAINDER)
    run.set_defaults(func=cmd_exec)
    tasks = sub.add_parser("tasks", help="list, run, pause, resume or cancel scheduled tasks")
    tasks.add_argument("action", choices=("list", "run", "pause", "resume", "cancel"))
    tasks.add_argument("task_id", nargs="?", help="the id `nanoclaw tasks list` shows")
    tasks.add_argument(
        "--config", help=f"config file (default $NANOCLAW_CONFIG or {DEFAULT_CONFIG})"
    )
    tasks.set_defaults(func=cmd_tasks)
    audit = sub.add_parser("audit", help="list the tool calls of every group, or of GROUP")
    audit.add_argument("group", nargs="?", help="a group's folder (default: every group)")
    audit.add_argument("--since", help="from when: " + SINCE_HELP)
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    audit.add_argument(
        "--config", help=f"config file (default $NANOCLAW_CONFIG or {DEFAULT_CONFIG})"
    )
    audit.set_defaults(func=cmd_audit)
    data_dir = str(Path.home() / ".local/share/nanoclaw")
    appliance = {
        "up": (cmd_up, "the whole appliance: Synapse, and a systemd machine running the host"),
        "down": (cmd_down, "stop the appliance that `up` started, keeping its data"),
        "logs": (cmd_logs, "the appliance's journal (journalctl in its machine)"),
        "status": (cmd_status, "systemctl status of the appliance's units"),
        "shell": (cmd_shell, "a root shell in the appliance's machine, or a command there"),
        "chat": (cmd_chat, "talk to the agent in a terminal, as the appliance's owner"),
    }
    for name, (func, text) in appliance.items():
        p = sub.add_parser(name, help=text)
        p.add_argument("--data-dir", default=data_dir, help=f"the appliance's data ({data_dir})")
        p.set_defaults(func=func)
        if name == "up":
            p.add_argument("--port", type=int, default=8008, help="Synapse's port on 127.0.0.1")
            p.add_argument(
                "--api-key-file", help="a file holding the model API key, or a subscription token"
            )
            p.add_argument("--base-url", help="an Anthropic-compatible model endpoint")
        elif name == "logs":
            p.usage = "nanoclaw logs [--data-dir DATA_DIR] [JOURNALCTL-ARGS...], e.g. -f"
        elif name == "shell":
            p.usage = "nanoclaw shell [--data-dir DATA_DIR] [COMMAND...], e.g. nanoclaw exec ..."
        elif name == "chat":
            p.add_argument("group", nargs="?", default="main", help="main (default) or example")
            p.add_argument(
                "--wait",
                type=float,
                default=300.0,
                help="at the end of input, wait this long for the agent's last answer",
            )
    return top


def main(argv: list[str] | None = None) -> int:
    top = parser()
    args, rest = top.parse_known_args(argv)
    if args.command in ("logs", "shell"):  # journalctl's options, or the command, pass through
        args.passed = rest
    elif rest:
        top.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return int(args.func(args))
    except ConfigError as err:
        print(f"nanoclaw: invalid configuration: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except (UnknownGroup, SandboxError, RequestError) as err:  # unknown group, refusals
        print(f"nanoclaw: {err}", file=sys.stderr)
        return 1
    except ApplianceError as err:
        print(f"nanoclaw: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
