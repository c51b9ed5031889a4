"""A group's egress in the policy, and which names a group's domains allow."""

from __future__ import annotations

import pytest

from nanoclaw.broker.policy import (
    domain_allowed,
    is_domain,
)
from nanoclaw.broker.policy_file import parse_policy
from tests.support.policies import (
    FULL,
    POLICY_PATH,
    at,
    group_with,
    refused,
)

# --- refusals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cidr", "fragment"),
    [
        ("140.82.112.1/20", "140.82.112.1/20 has host bits set: the network is 140.82.112.0/20"),
        ("2001:db8::1/32", "has host bits set: the network is 2001:db8::/32"),
        ("10.0.0.0/33", "must be an IP network"),
        ("github.com", "must be an IP network"),
        ("10.0.0.0 /8", "must be an IP network"),
        (" 10.0.0.0/8", "must be an IP network"),
        ("fe80::1%eth0/128", "must be an IP network"),
        ("010.0.0.0/8", "must be an IP network"),
        ("", "must be an IP network"),
        (167772160, "must be an IP network"),
        (["10.0.0.0/8"], "must be an IP network"),
    ],
)
def test_cidrs_are_checked(cidr: object, fragment: str) -> None:
    refused(group_with(egress={"cidrs": [cidr]}), "groups.g.egress.cidrs[0]", fragment)


def test_duplicate_cidrs_are_refused() -> None:
    data = group_with(egress={"cidrs": ["10.0.0.0/8", "10.0.0.0/255.0.0.0"]})
    refused(data, "groups.g.egress.cidrs[1]", "listed twice")


def test_single_addresses_are_networks() -> None:
    data = group_with(egress={"cidrs": ["192.0.2.7", "2001:db8::7"]})
    cidrs = parse_policy(data, POLICY_PATH).group("g").egress.cidrs
    assert [str(c) for c in cidrs] == ["192.0.2.7/32", "2001:db8::7/128"]


BAD_DOMAINS = [
    "GitHub.com",
    "*",
    "*.",
    "*.com",
    "**.github.com",
    "*.*.com",
    "a.*.com",
    "*github.com",
    "github.com.",
    ".github.com",
    "1.2.3.4",
    "10.0.0.1",
    "[::1]",
    "::1",
    "github.com:443",
    "https://github.com",
    "github.com/path",
    "a..b.com",
    "-a.com",
    "a-.com",
    "a_b.com",
    "ex ample.com",
    "",
    "x" * 64 + ".com",
    ".".join(["a" * 63] * 4) + ".com",
    "bücher.de",
    "github.com\n",
    "user@github.com",
]


@pytest.mark.parametrize("domain", BAD_DOMAINS)
def test_domains_are_checked(domain: str) -> None:
    data = group_with(egress={"domains": [domain]})
    refused(data, "groups.g.egress.domains[0]", "lowercase DNS name")


@pytest.mark.parametrize(
    "domain",
    [
        "github.com",
        "localhost",
        "a-b.co",
        "xn--bcher-kva.de",
        "*.co.uk",
        "1password.com",
        "x" * 63 + ".com",
    ],
)
def test_good_domains_are_accepted(domain: str) -> None:
    data = group_with(egress={"domains": [domain]})
    assert parse_policy(data, POLICY_PATH).group("g").egress.domains == (domain,)


def test_duplicate_domains_are_refused() -> None:
    data = at(
        FULL, ("groups", "main", "egress", "domains"), ["a.example", "b.example", "a.example"]
    )
    refused(data, "groups.main.egress.domains[2]", "listed twice (also at [0])")


def test_a_group_reaches_either_cidrs_or_domains() -> None:
    both = group_with(egress={"cidrs": ["192.0.2.0/24"], "domains": ["github.com"]})
    refused(both, "groups.g.egress.domains", "not both: make two groups")
    for one in ({"cidrs": ["192.0.2.0/24"]}, {"domains": ["github.com"]}):  # the controls
        assert parse_policy(group_with(egress=one), POLICY_PATH).group("g").egress.any


def test_the_proxy_key_of_earlier_versions_is_refused_with_what_became_of_it() -> None:
    old = at(FULL, ("proxy",), {"address": "127.0.0.9", "port": 3128})
    refused(old, "proxy", "no longer used", "relay in their own network namespace")
    assert parse_policy(FULL, POLICY_PATH).groups  # the control: the same file without it


# --- domain matching ------------------------------------------------------------------

ALLOWED = ("github.com", "*.githubusercontent.com")


@pytest.mark.parametrize(
    "domain",
    [
        "github.com",
        "GitHub.COM",
        "github.com.",
        "raw.githubusercontent.com",
        "a.b.githubusercontent.com",
        "RAW.GithubUserContent.com.",
    ],
)
def test_domain_allowed(domain: str) -> None:
    assert domain_allowed(domain, ALLOWED)


@pytest.mark.parametrize(
    "domain",
    [
        "githubusercontent.com",  # *.suffix does not match the suffix itself
        "api.github.com",  # an exact entry does not match names below it
        "evilgithub.com",
        "github.com.evil.com",
        "evilgithubusercontent.com",
        "githubusercontent.com.evil.net",
        "x.githubusercontent.com.evil.net",
        "github.com..",
        ".github.com",
        "github.com:443",
        "github.com/",
        "user@github.com",
        "140.82.112.3",
        "[::1]",
        "",
        ".",
        "*.githubusercontent.com",
        "x.githubusercontent.com\x00",
        "\u212aube.githubusercontent.com",  # KELVIN SIGN lowers to an ASCII "k"
        "g\u0131thub.com",  # dotless i
        "github.com\n",
        "a" * 64 + ".githubusercontent.com",
    ],
)
def test_domain_refused(domain: str) -> None:
    assert not domain_allowed(domain, ALLOWED)


def test_domain_allowed_with_nothing_allowed() -> None:
    assert not domain_allowed("github.com", ())
    assert not domain_allowed("github.com", ("*",))
    assert domain_allowed("github.com", ("GITHUB.COM",))


def test_is_domain() -> None:
    assert is_domain("a.b") and is_domain("a")
    assert not is_domain("a.1") and not is_domain("1.2.3.4") and not is_domain("A.b")
