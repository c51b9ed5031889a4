"""Switch off one protection at a time and show that the scenario guarding it goes red.

A scenario that stays green with its protection gone proves nothing. Each mutation below
edits a copy of the source (exact text, found exactly once, so a stale mutation fails
loudly instead of testing nothing), boots a VM on that copy and runs the one scenario that
must catch it; the mutation is caught when that scenario fails at the named subtest.

Usage: vm-tests/mutate [--list] [NAME ...]   (default: every mutation, one VM boot each)
Prints a line per mutation and a summary table; exits non-zero when any mutation is not
caught where expected. tests/test_mutations.py checks, without a VM, that each still
applies to the current tree.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "vm-tests" / "driver.py"


@dataclass(frozen=True)
class Edit:
    path: str  # relative to the repository
    old: str  # must occur exactly once
    new: str


@dataclass(frozen=True)
class Mutation:
    name: str
    protection: str  # what is switched off, in words
    edits: tuple[Edit, ...]
    scenario: str  # vm-tests/scenarios/<scenario>.py
    subtest: str  # the subtest that must fail


UNIT = "nanoclaw/broker/compiler.py"
BROKER = "nanoclaw/broker/sandboxd.py"
AGENT_UNIT = "nanoclaw/broker/agent_unit.py"
POLICY = "nanoclaw/broker/policy.py"


def drop(path: str, line: str) -> Edit:
    return Edit(path, line, "")


MUTATIONS = (
    Mutation(
        "network-for-all",
        "PrivateNetwork= and the AF_UNIX-only address families of groups without egress",
        (
            Edit(UNIT, '("PrivateNetwork", not on_host_network),', '("PrivateNetwork", False),'),
            Edit(UNIT, '    return ("AF_UNIX",)\n', '    return ("AF_UNIX", "AF_INET")\n'),
        ),
        "egress",
        "no network by default",
    ),
    Mutation(
        "no-ip-deny",
        "IPAddressDeny=any (the allow-list alone then allows everything)",
        (drop(UNIT, '("IPAddressDeny", deny_all),'),),
        "egress",
        "an allowed CIDR is reachable and its neighbour is not",
    ),
    Mutation(
        "proxy-allows-any-domain",
        "the egress proxy's domain check",
        (
            Edit(
                "nanoclaw/host/egress_proxy.py",
                "if not domain_allowed(request.host, grant.domains):",
                "if False:",
            ),
        ),
        "egress",
        "a listed domain through the proxy, an unlisted one refused",
    ),
    Mutation(
        "domain-group-on-host-network",
        "the network namespace of a group with domains (its units on the host's network)",
        (Edit(UNIT, "on_host_network = bool(group.egress.cidrs)", "on_host_network = True"),),
        "egress",
        "a listed domain through the proxy, an unlisted one refused",
    ),
    Mutation(
        "relay-with-ipv6",
        "the address families of a group with domains (IPv6 besides the relay's IPv4)",
        (
            Edit(
                UNIT,
                'return ("AF_UNIX", "AF_INET")  # the relay listens on 127.0.0.1',
                'return ("AF_UNIX", "AF_INET", "AF_INET6")',
            ),
        ),
        "egress",
        "around the relay: the node's addresses, DNS, io_uring, other families",
    ),
    Mutation(
        "host-run",
        "the unit's empty /run (D-Bus and name service sockets show through)",
        (drop(UNIT, '                (RUN, "mode=0755"),\n'),),
        "egress",
        "no name service sockets",
    ),
    Mutation(
        "broker-takes-any-field",
        "the broker's refusal of unknown request fields",
        (
            Edit(
                "nanoclaw/broker/protocol.py",
                "        extra = set(data) - _RUN_FIELDS\n        if extra:\n",
                "        extra = set(data) - _RUN_FIELDS\n        if False:\n",
            ),
        ),
        "broker",
        "requests cannot widen the policy",
    ),
    Mutation(
        "see-the-data-dir",
        "InaccessiblePaths= (the data directory, secrets, other groups' folders)",
        (
            Edit(
                UNIT,
                '("InaccessiblePaths", hidden(policy) + tuple(',
                '("InaccessiblePaths", tuple(',
            ),
        ),
        "filesystem",
        "secrets, the data directory and other groups are invisible",
    ),
    Mutation(
        "shared-dev-shm",
        "the unit's own /dev/shm (PrivateDevices= binds the host's)",
        (
            Edit(
                "nanoclaw/broker/policy.py",
                'SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")',
                'SCRATCH = ("/tmp", "/var/tmp")',
            ),
        ),
        "filesystem",
        "/dev/shm is the unit's own",
    ),
    Mutation(
        "read-only-bind-writable",
        "read-only binds (every mount becomes writable)",
        (Edit(UNIT, "(writable if mount.writable else read_only)", "writable"),),
        "filesystem",
        # The walk runs first and finds the read-only mount writable; the subtest "read-only
        # binds refuse writes" (whose owner-can-write control keeps it honest) comes next.
        "walking / finds writable places only where the policy put them",
    ),
    Mutation(
        "global-memory-writable",
        "the read-only bind of the global memory (writable, as it was for the main group)",
        (
            Edit(
                UNIT,
                "read_only = [(*shared, True, BIND_FLAGS)]",
                "writable.append((*shared, True, BIND_FLAGS)); read_only = []",
            ),
        ),
        "filesystem",
        "the global memory is read-only in every unit, the main group's too",
    ),
    Mutation(
        "no-syscall-filter",
        "SystemCallFilter= (both the allow-list and the deny-list)",
        (
            drop(UNIT, '("SystemCallFilter", (True, SYSCALL_ALLOW)),'),
            drop(UNIT, '("SystemCallFilter", (False, SYSCALL_DENY)),'),
        ),
        "privileges",
        "ptrace fails with EPERM in a tool unit",
    ),
    Mutation(
        "tools-as-root",
        "the group's unprivileged User=",
        (Edit(UNIT, '("User", str(group.uid)),', '("User", "0"),'),),
        "privileges",
        "setuid does not elevate and there are no capabilities",
    ),
    Mutation(
        "proc-shows-all",
        "ProtectProc=invisible",
        (drop(UNIT, '("ProtectProc", "invisible"),'),),
        "privileges",
        "/proc shows only the unit's own processes",
    ),
    Mutation(
        "no-memory-max",
        "MemoryMax=",
        (drop(UNIT, '("MemoryMax", group.limits.memory_max_bytes),'),),
        "limits",
        "MemoryMax OOM-kills only the tool unit",
    ),
    Mutation(
        "no-tasks-max",
        "TasksMax=",
        (drop(UNIT, '("TasksMax", group.limits.tasks_max),'),),
        "limits",
        "a fork bomb stops at TasksMax and the machine keeps answering",
    ),
    Mutation(
        "io-uring-allowed",
        "the deny-list's io_uring_setup, io_uring_enter and io_uring_register",
        (drop(UNIT, '    "io_uring_setup",\n    "io_uring_enter",\n    "io_uring_register",\n'),),
        "privileges",
        "io_uring_setup fails with EPERM in a tool unit",
    ),
    Mutation(
        "unbounded-scratch",
        "the size of each unit's /tmp, /var/tmp and /dev/shm (limits.tmp_bytes)",
        (Edit(UNIT, 'f"mode=1777,size={group.limits.tmp_bytes}"', '"mode=1777"'),),
        "limits",
        "/tmp holds at most the group's tmp_bytes",
    ),
    Mutation(
        "mounts-may-nest",
        "the policy's refusal of a mount inside or around another",
        (drop("nanoclaw/broker/policy_file.py", "    _check_nested_mounts(groups)\n"),),
        "mounts",
        "nested mounts are refused at load, and the broker does not start with them",
    ),
    Mutation(
        "writable-ancestors-allowed",
        "the refusal of a bind source below a directory a tool user can write",
        (Edit("nanoclaw/broker/policy.py", "why = writable_ancestor(path, users)", "why = None"),),
        "mounts",
        "a source below a directory a tool user can write is refused at load",
    ),
    Mutation(
        "no-recheck-at-start",
        "the broker's check of every bind source at each unit start",
        (
            Edit(
                BROKER,
                "self.policy.check_binds(group, self.policy.tool_users())",
                "self.policy.tool_users()",
            ),
        ),
        "mounts",
        "the broker checks the sources again at every unit start",
    ),
    Mutation(
        "owner-tool-files-visible",
        "the covers over .git, .claude, shell rc files and the like in writable mounts",
        (Edit(BROKER, "covers=_covers(group, self.policy.blocked_patterns),", "covers=(),"),),
        "mounts",
        "the owner's tool files in a writable mount are out of a unit's reach",
    ),
    Mutation(
        "secrets-in-mounts-visible",
        "the covers over blocked-pattern names (.env, .ssh, credentials...) inside mounts",
        (
            Edit(
                "nanoclaw/broker/mount_covers.py",
                "if entry.name in names or blocked_component(entry.name, blocked_patterns):",
                "if entry.name in names:",
            ),
        ),
        "mounts",
        "secrets in every protected mount are hidden, read-only ones too",
    ),
    Mutation(
        "pid-gap-unsaid",
        "the broker's warning where systemd has no PrivatePIDs= (before 257)",
        (Edit(BROKER, "if not private_pids:", "if False:"),),
        "privileges",
        "PID isolation where systemd has PrivatePIDs=, a loud note where not",
    ),
    Mutation(
        "any-group-member-runs",
        "the broker's rule that only root and the host's main process start units",
        (drop(BROKER, "                await self.clients.may_start_units(sock, peer)\n"),),
        "broker",
        "only the host's main process starts units, not its children or the group",
    ),
    Mutation(
        "agent-as-tool-user",
        "the agent unit's own user (it runs as the group's tool user)",
        (Edit(AGENT_UNIT, '("User", str(agent.uid)),', '("User", str(group.uid)),'),),
        "agent",
        "the agent unit runs as the group's agent user, not its tool user or the host's",
    ),
    Mutation(
        "agent-host-run",
        "the agent unit's empty /run (credentials, the broker's socket and D-Bus show through)",
        (drop(AGENT_UNIT, '                (RUN, "mode=0755"),\n'),),
        "agent",
        "the host's credentials are out of the agent's reach",
    ),
    Mutation(
        "agent-host-var-lib",
        "the agent unit's empty /var/lib (the data directory and other groups' state show)",
        (drop(AGENT_UNIT, '                (VAR_LIB, "mode=0755"),\n'),),
        "agent",
        "the host's database is out of the agent's reach",
    ),
    Mutation(
        "agent-sees-hidden",
        "the agent unit's InaccessiblePaths= (the policy, protected paths, mount sources)",
        (drop(AGENT_UNIT, '        ("InaccessiblePaths", _hidden(policy)),\n'),),
        "agent",
        "the policy and the groups' mount sources are out of the agent's reach",
    ),
    Mutation(
        "agent-on-host-network",
        "the agent unit's network namespace (PrivateNetwork= and JoinsNamespaceOf= the relay)",
        (
            Edit(AGENT_UNIT, '("PrivateNetwork", True),', '("PrivateNetwork", False),'),
            drop(AGENT_UNIT, '        ("JoinsNamespaceOf", (MODEL.socket_name(group.name),)),\n'),
        ),
        "agent",
        "the network is the model relay alone: no web, node services, DNS or IPv6",
    ),
    Mutation(
        "agent-with-ipv6",
        "the agent unit's address families (IPv6 besides the relay's IPv4)",
        (
            Edit(
                AGENT_UNIT,
                '("RestrictAddressFamilies", (True, ("AF_UNIX", "AF_INET"))),',
                '("RestrictAddressFamilies", (True, ("AF_UNIX", "AF_INET", "AF_INET6"))),',
            ),
        ),
        "agent",
        "the network is the model relay alone: no web, node services, DNS or IPv6",
    ),
    Mutation(
        "agent-no-memory-max",
        "the agent unit's MemoryMax=",
        (drop(AGENT_UNIT, '        ("MemoryMax", agent.memory_max_bytes),\n'),),
        "agent",
        "MemoryMax OOM-kills the agent unit, and the node keeps answering",
    ),
    Mutation(
        "agent-no-tasks-max",
        "the agent unit's TasksMax=",
        (drop(AGENT_UNIT, '        ("TasksMax", agent.tasks_max),\n'),),
        "agent",
        "a fork bomb in the agent unit stops at TasksMax",
    ),
    Mutation(
        "subagent-writes",
        "a read-only subagent's narrowing: its units get the group's writable binds",
        (
            Edit(
                POLICY,
                "group = dataclasses.replace(group, mounts=mounts, workspace_writable=False)",
                "pass",
            ),
        ),
        "filesystem",
        "a read-only subagent writes nowhere its group can",
    ),
    Mutation(
        "subagent-egress",
        "a subagent's no_egress: its units get the group's domains",
        (Edit(POLICY, "group = dataclasses.replace(group, egress=Egress((), ()))", "pass"),),
        "egress",
        "a subagent without egress reaches no domain of its group",
    ),
)


class StaleMutation(Exception):
    """The text a mutation edits is not in the tree exactly once any more."""


def source_files(repo: Path) -> list[str]:
    """The tree as git would commit it now: tracked and new files, not ignored ones."""
    listed = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        capture_output=True,
        check=True,
    )
    return [name for name in listed.stdout.decode().split("\0") if (repo / name).is_file()]


def mutated_copy(mutation: Mutation, target: Path, repo: Path = REPO) -> None:
    """Copy the tree to `target` and apply the mutation's edits there."""
    for name in source_files(repo):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, target / name)
    for edit in mutation.edits:
        path = target / edit.path
        text = path.read_text()
        found = text.count(edit.old)
        if found != 1:
            raise StaleMutation(f"{mutation.name}: {edit.path} has {found} of {edit.old!r}")
        path.write_text(text.replace(edit.old, edit.new))


@dataclass
class Outcome:
    mutation: Mutation
    caught: bool
    seconds: float
    detail: str


def run(mutation: Mutation) -> Outcome:
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"nanoclaw-mutant-{mutation.name}-") as tmp:
        tree = Path(tmp)
        mutated_copy(mutation, tree)
        scenario = tree / "vm-tests" / "scenarios" / f"{mutation.scenario}.py"
        done = subprocess.run(
            [sys.executable, str(DRIVER), "--source", str(tree), "--fail-fast", str(scenario)],
            capture_output=True,
            text=True,
        )
    output = done.stdout + done.stderr
    failed_at = re.findall(r"subtest FAILED: (.*) \(", output)
    caught = done.returncode == 1 and failed_at[:1] == [mutation.subtest]
    if caught:
        detail = f"red at '{mutation.subtest}'"
    elif done.returncode == 0:
        detail = "STILL GREEN: the scenario did not notice"
    else:
        detail = f"red elsewhere (exit {done.returncode}, failed at {failed_at or 'no subtest'})"
    if not caught:
        print(output[-4000:], file=sys.stderr)
    return Outcome(mutation, caught, time.monotonic() - began, detail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vm-tests/mutate", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and stop")
    args = parser.parse_args(argv)
    known = {mutation.name: mutation for mutation in MUTATIONS}
    unknown = [name for name in args.names if name not in known]
    if unknown:
        parser.error(f"unknown mutations: {', '.join(unknown)} (see --list)")
    chosen = [known[name] for name in args.names] or list(MUTATIONS)
    if args.list:
        for mutation in chosen:
            print(f"{mutation.name:<26} {mutation.scenario:<11} {mutation.protection}")
        return 0
    outcomes = []
    for mutation in chosen:
        print(f"mutate: {mutation.name}: switching off {mutation.protection}", flush=True)
        outcomes.append(run(mutation))
        print(f"mutate: {mutation.name}: {outcomes[-1].detail}", flush=True)
    print("\n| switched off | scenario | subtest | result | s |\n|---|---|---|---|---|")
    for outcome in outcomes:
        m = outcome.mutation
        result = "red" if outcome.caught else outcome.detail
        print(f"| {m.protection} | {m.scenario} | {m.subtest} | {result} | {outcome.seconds:.0f} |")
    missed = [outcome for outcome in outcomes if not outcome.caught]
    print(f"\n{len(outcomes) - len(missed)} of {len(outcomes)} mutations caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
