"""Run a program with exactly a group's agent unit's properties: what can the CLI reach?

    python3 -m nanoclaw.broker.agent_probe [--policy P] GROUP PROGRAM < input

The unit is the one the broker gives the group's CLI (nanoclaw.broker.agent_unit), with
PROGRAM in the CLI's place and no arguments, its stdin and stdout this command's own, and
its model relay started as the broker would. For the isolation tests, and for an operator
who wants to look around as the agent runtime (`... GROUP /bin/sh < commands`). It talks to
systemd directly, so it needs root; the broker's socket offers nothing like it.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from pathlib import Path

from nanoclaw.broker.agent_runs import STDIO
from nanoclaw.broker.agent_unit import compile_agent_unit
from nanoclaw.broker.compiler import MODEL
from nanoclaw.broker.policy_file import load_policy
from nanoclaw.broker.protocol import DEFAULT_CREDENTIAL_SOCKET, AgentRequest
from nanoclaw.broker.relay import Relays, find_socket_proxyd
from nanoclaw.broker.systemd_bus import Systemd


async def probe(args: argparse.Namespace) -> int:
    policy = load_policy(Path(args.policy))
    group, program = args.group, args.program
    systemd = await Systemd.connect()
    socket_proxyd = find_socket_proxyd(args.socket_proxyd)
    await Relays(systemd, socket_proxyd, MODEL, args.credential_socket).ensure(group)
    plan = compile_agent_unit(policy, AgentRequest(group, (), {}), program, secrets.token_hex(8))
    path = await systemd.start_transient(plan.name, plan.properties + STDIO, [0, 1])
    try:
        outcome = await systemd.wait_inactive(path)
    finally:
        await systemd.release(path)
    print(f"{plan.name}: {outcome.result}", file=sys.stderr)
    return 0 if outcome.result == "success" else outcome.exit_status or 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent_probe", description=__doc__.split("\n")[0])
    parser.add_argument("--policy", default="/etc/nanoclaw/policy.json")
    parser.add_argument("--credential-socket", default=DEFAULT_CREDENTIAL_SOCKET)
    parser.add_argument("--socket-proxyd", help="as the broker's option of that name")
    parser.add_argument("group")
    parser.add_argument("program", help="an absolute path, run in the CLI's place")
    args = parser.parse_args(argv)
    return asyncio.run(probe(args))


if __name__ == "__main__":
    sys.exit(main())
