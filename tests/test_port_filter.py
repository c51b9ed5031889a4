"""The port filter: its ruleset, checked by nft, and loaded into a real kernel (in a
network namespace of its own) where a domain group's uid reaches the proxy's port on the
proxy's address and nothing else there, next to another uid that reaches everything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nanoclaw.broker.policy_file import parse_policy
from nanoclaw.broker.port_filter import main, ruleset
from tests.support.policies import FULL, IPV6_PROXY, MINIMAL, POLICY_PATH, at

REPO = Path(__file__).resolve().parents[1]
WEB_UID = 61004
OTHER_UID = 61001
PROXY = ("127.0.0.9", 3128)
NETNS_POLICY = {
    "version": 1,
    "data_dir": "/var/lib/nanoclaw",
    "proxy": {"address": PROXY[0], "port": PROXY[1]},
    "groups": {
        "alpha": {"uid": OTHER_UID},
        "web": {"uid": WEB_UID, "egress": {"domains": ["allowed.test"]}},
    },
}


def rules(data: dict[str, object]) -> list[str]:
    """The rule lines (not the table and chain around them) of the policy's ruleset."""
    lines = ruleset(parse_policy(data, POLICY_PATH)).splitlines()
    return [line.strip() for line in lines if line.startswith("\t\t") and "type filter" not in line]


def test_only_domain_groups_uids_are_limited_on_the_proxy_address() -> None:
    assert rules(FULL) == [
        "meta skuid { 61000 } ip daddr 127.0.0.1 tcp dport != 3128 reject with tcp reset",
        "meta skuid { 61000 } ip daddr 127.0.0.1 meta l4proto != tcp reject",
    ]


def test_every_domain_group_is_listed() -> None:
    data = at(FULL, ("groups", "family", "egress"), {"domains": ["example.org"]})
    assert all(line.startswith("meta skuid { 61000, 61001 } ") for line in rules(data))


def test_an_ipv6_proxy_gets_ip6_rules() -> None:
    assert rules(IPV6_PROXY) == [
        "meta skuid { 62000 } ip6 daddr ::1 tcp dport != 8080 reject with tcp reset",
        "meta skuid { 62000 } ip6 daddr ::1 meta l4proto != tcp reject",
    ]


def test_without_domains_the_table_is_empty_but_still_replaced() -> None:
    script = ruleset(parse_policy(MINIMAL, POLICY_PATH))
    assert rules(MINIMAL) == []
    # Loading it removes the rules of an earlier policy that had domains.
    assert script.startswith("table inet nanoclaw\ndelete table inet nanoclaw\n")


@pytest.fixture(scope="module")
def nft() -> str:
    """nft, installed with the project's script when missing; root is needed to use it."""
    if os.geteuid() != 0:
        pytest.fail("these tests load nftables rules and need root")
    subprocess.run([REPO / "scripts" / "host-deps"], check=True)
    return "/usr/sbin/nft"


@pytest.mark.parametrize("data", [FULL, IPV6_PROXY, MINIMAL], ids=["full", "ipv6", "minimal"])
def test_nft_accepts_the_ruleset(nft: str, data: dict[str, object], tmp_path: Path) -> None:
    script = tmp_path / "rules.nft"
    script.write_text(ruleset(parse_policy(data, POLICY_PATH)))
    done = subprocess.run([nft, "--check", "-f", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# Runs in the namespace as root: listeners on the proxy's address (its port and another),
# on 0.0.0.0 (reached through the proxy's address too) and on 127.0.0.1; then for each uid
# a child that drops to it and tries each TCP port, plus one UDP datagram.
PROBE = """
import encodings.idna, json, os, socket, sys  # imported before the uid cannot read them
proxy, port = sys.argv[1], int(sys.argv[2])
def tcp(host, p):
    s = socket.create_server((host, p)); return s
targets = {"proxy_port": (proxy, port), "proxy_other_port": (proxy, 5000),
           "any_address_service": (proxy, 5001), "other_loopback": ("127.0.0.1", 5002)}
servers = [tcp(proxy, port), tcp(proxy, 5000), tcp("0.0.0.0", 5001), tcp("127.0.0.1", 5002)]
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind((proxy, 5003))
udp.settimeout(0.5)
result = {}
for uid in map(int, sys.argv[3:]):
    read, write = os.pipe()
    if os.fork() == 0:
        os.setgid(uid); os.setuid(uid)
        seen = {}
        for name, address in targets.items():
            try:
                socket.create_connection(address, timeout=2).close(); seen[name] = "reached"
            except OSError as error:
                seen[name] = type(error).__name__
        try:  # the output path refuses a rejected datagram with EPERM
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", (proxy, 5003))
        except PermissionError:
            pass
        os.write(write, json.dumps(seen).encode()); os._exit(0)
    os.close(write); os.wait()
    seen = json.loads(os.read(read, 65536))
    try:
        udp.recv(1); seen["udp"] = "reached"
    except TimeoutError:
        seen["udp"] = "lost"
    result[uid] = seen
print(json.dumps(result))
"""


def test_the_kernel_holds_the_filter(nft: str, tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(NETNS_POLICY))
    printed = subprocess.run(
        [sys.executable, "-m", "nanoclaw.broker.port_filter", "--policy", policy_file, "--print"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    (tmp_path / "rules.nft").write_text(printed.stdout)
    (tmp_path / "probe.py").write_text(PROBE)

    def probe(load_rules: bool) -> dict[str, dict[str, str]]:
        load = f"{nft} -f {tmp_path / 'rules.nft'} && " if load_rules else ""
        script = (
            f"ip link set lo up && {load}{sys.executable} {tmp_path / 'probe.py'} "
            f"{PROXY[0]} {PROXY[1]} {WEB_UID} {OTHER_UID}"
        )
        done = subprocess.run(
            ["unshare", "--net", "sh", "-c", script], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    everything = {name: "reached" for name in ("proxy_port", "proxy_other_port")}
    everything |= {"any_address_service": "reached", "other_loopback": "reached", "udp": "reached"}
    # Control: without the rules, both uids reach every listener.
    assert probe(load_rules=False) == {str(WEB_UID): everything, str(OTHER_UID): everything}
    filtered = probe(load_rules=True)
    assert filtered[str(OTHER_UID)] == everything  # not a domain group's uid: untouched
    assert filtered[str(WEB_UID)] == {
        "proxy_port": "reached",
        "proxy_other_port": "ConnectionRefusedError",
        "any_address_service": "ConnectionRefusedError",
        "other_loopback": "reached",  # not the proxy's address: IPAddressAllow= decides
        "udp": "lost",
    }


def test_an_invalid_policy_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(at(NETNS_POLICY, ("groups", "web", "uid"), "x")))
    assert main(["--policy", str(policy_file), "--print"]) == 2
    assert "groups.web.uid" in capsys.readouterr().err
