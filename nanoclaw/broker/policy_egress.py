"""A group's egress in the policy file (`egress.cidrs` or `egress.domains`), checked with
errors that name the key.

A group reaches either networks or names, not both: its units run on the host's network
with an IP allow-list (cidrs, which needs cgroup BPF), or in a network namespace of their
own whose one way out leads to the egress proxy (domains, which needs nothing of the
kernel but namespaces). One unit cannot be in both."""

from __future__ import annotations

import ipaddress
import re

from nanoclaw.broker.config_reader import CONTROL_CHARACTERS, ConfigError, Table, describe
from nanoclaw.broker.policy import Egress, is_domain
from nanoclaw.broker.policy_tables import listed, read_table, strings

_EGRESS_KEYS = ("cidrs", "domains")


def egress(group: Table) -> Egress:
    table = read_table(group.data.get("egress", {}), group.at("egress"), _EGRESS_KEYS)
    cidrs: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for index, item in enumerate(listed(table, "cidrs")):
        key = f"{table.at('cidrs')}[{index}]"
        network = _network(item, key)
        if network in cidrs:
            raise ConfigError(key, f"{network} is listed twice (also at [{cidrs.index(network)}])")
        cidrs.append(network)
    domains = strings(
        table,
        "domains",
        "a lowercase DNS name like github.com, or *.example.com for the names below it",
        _is_domain_pattern,
    )
    for index, domain in enumerate(domains):
        if domain in domains[:index]:
            raise ConfigError(
                f"{table.at('domains')}[{index}]",
                f"{domain} is listed twice (also at [{domains.index(domain)}])",
            )
    if cidrs and domains:
        raise ConfigError(
            table.at("domains"),
            "a group reaches either cidrs (on the host's network, by IP) or domains (in a "
            "network of its own, through the egress proxy), not both: make two groups",
        )
    return Egress(cidrs=tuple(cidrs), domains=domains)


def _network(value: object, key: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    what = "an IP network like 140.82.112.0/20 or 2001:db8::/32"
    if not isinstance(value, str) or re.search(r"[\s%]", value) or CONTROL_CHARACTERS.search(value):
        raise ConfigError(key, f"must be {what}, not {describe(value)}")
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ConfigError(key, f"must be {what}, not {describe(value)}") from None
    raise ConfigError(key, f"{value} has host bits set: the network is {loose}")


def _is_domain_pattern(value: str) -> bool:
    if value.startswith("*."):
        suffix = value[2:]
        return is_domain(suffix) and "." in suffix  # no *.com: at least two labels
    return is_domain(value)
