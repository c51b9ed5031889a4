"""A group's egress in the policy file (`egress.cidrs`, `egress.domains`) and the
egress proxy's place (`proxy`), checked with errors that name the key."""

from __future__ import annotations

import ipaddress
import re

from nanoclaw.broker.config_reader import CONTROL_CHARACTERS, ConfigError, Table, describe
from nanoclaw.broker.policy import Egress, is_domain
from nanoclaw.broker.policy_tables import listed, read_table, strings

_EGRESS_KEYS = ("cidrs", "domains")

_PROXY_KEYS = ("address", "port")


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


def proxy(top: Table) -> tuple[str, int] | None:
    if "proxy" not in top.data:
        return None
    table = read_table(top.data["proxy"], "proxy", _PROXY_KEYS)
    if "port" not in table.data:
        raise ConfigError(table.at("port"), "is required: the proxy's TCP port")
    address = table.require("address", "an IP address like 127.0.0.1 or ::1", _is_proxy_address)
    return str(ipaddress.ip_address(address)), table.integer("port", 0, 1, 65535)


def _is_domain_pattern(value: str) -> bool:
    if value.startswith("*."):
        suffix = value[2:]
        return is_domain(suffix) and "." in suffix  # no *.com: at least two labels
    return is_domain(value)


def _is_proxy_address(value: str) -> bool:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    # Scope IDs cannot go into IPAddressAllow=, and 0.0.0.0 or multicast is no proxy.
    return "%" not in value and not (address.is_unspecified or address.is_multicast)
