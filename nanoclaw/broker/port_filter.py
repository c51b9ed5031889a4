"""nanoclaw-port-filter: on the egress proxy's address, tool units reach its port only.

Why: IPAddressAllow= works per address. A group with domains may reach the proxy's
address, and with it every port there, including every service that listens on 0.0.0.0
or [::] (the homeserver, sshd, a database). nftables closes that gap in the kernel: for
the user IDs of the groups with domains, packets to the proxy's address go to the proxy's
port or are refused. The rules come from the same root-owned policy file as the units.

Run as root with CAP_NET_ADMIN by nanoclaw-port-filter.service, before the broker; the
broker checks at start that the filter holds and otherwise refuses groups with domains.
`--print` shows the ruleset instead of loading it; `--remove` deletes it.
"""

from __future__ import annotations

import argparse
import ipaddress
import subprocess
import sys
from pathlib import Path

from nanoclaw.broker.config_reader import ConfigError
from nanoclaw.broker.policy import Policy
from nanoclaw.broker.policy_file import load_policy

TABLE = "inet nanoclaw"


def ruleset(policy: Policy) -> str:
    """An nft script that replaces the table in one transaction (so it is never absent)."""
    rules = []
    uids = sorted(group.uid for group in policy.groups.values() if group.egress.domains)
    if policy.proxy is not None and uids:
        address, port = policy.proxy
        family = "ip" if ipaddress.ip_address(address).version == 4 else "ip6"
        match = f"meta skuid {{ {', '.join(map(str, uids))} }} {family} daddr {address}"
        rules = [
            f"{match} tcp dport != {port} reject with tcp reset",
            f"{match} meta l4proto != tcp reject",
        ]
    body = "".join(f"\t\t{rule}\n" for rule in rules)
    # "table" first, so that "delete" finds one even on the first run.
    return (
        f"table {TABLE}\n"
        f"delete table {TABLE}\n"
        f"table {TABLE} {{\n"
        "\tchain tool-output {\n"
        "\t\ttype filter hook output priority filter; policy accept;\n"
        f"{body}"
        "\t}\n"
        "}\n"
    )


def _nft(script: str) -> None:
    done = subprocess.run(["nft", "-f", "-"], input=script, text=True, capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"nanoclaw-port-filter: nft refused the ruleset: {done.stderr.strip()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nanoclaw-port-filter", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--policy", default="/etc/nanoclaw/policy.json")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--print", action="store_true", help="print the ruleset, load nothing")
    action.add_argument("--remove", action="store_true", help="delete the table")
    args = parser.parse_args(argv)
    if args.remove:
        _nft(f"table {TABLE}\ndelete table {TABLE}\n")
        return 0
    try:
        script = ruleset(load_policy(Path(args.policy)))
    except ConfigError as err:
        print(f"nanoclaw-port-filter: invalid policy: {err}", file=sys.stderr)
        return 2
    if args.print:
        print(script, end="")
    else:
        _nft(script)
    return 0


if __name__ == "__main__":
    sys.exit(main())
