"""The digest of a unit's properties that the broker returns with each run."""

from __future__ import annotations

import hashlib

from nanoclaw.broker.systemd_bus import sent_properties
from nanoclaw.broker.unit_digest import properties_sha256

PROPERTIES = (
    ("ExecStart", "a(sasb)", (("/bin/sh", ("/bin/sh", "-c", "true"), False),)),
    ("IPAddressAllow", "a(iayu)", ((2, b"\x7f\x00\x00\x01", 32),)),
    ("MemoryMax", "t", 268435456),
)


def test_the_digest_is_sha256_of_the_canonical_json() -> None:
    canonical = (
        '[["ExecStart","a(sasb)",[["/bin/sh",["/bin/sh","-c","true"],false]]],'
        '["IPAddressAllow","a(iayu)",[[2,[127,0,0,1],32]]],["MemoryMax","t",268435456]]'
    )
    assert properties_sha256(PROPERTIES) == hashlib.sha256(canonical.encode()).hexdigest()


def test_any_change_of_a_value_or_the_order_changes_the_digest() -> None:
    digest = properties_sha256(PROPERTIES)
    assert properties_sha256((*PROPERTIES[:2], ("MemoryMax", "t", 268435457))) != digest
    assert properties_sha256(tuple(reversed(PROPERTIES))) != digest
    assert properties_sha256(list(PROPERTIES)) == digest


def test_the_sent_properties_hold_the_reference_that_keeps_the_unit_loaded() -> None:
    assert sent_properties(PROPERTIES)[-1] == ("AddRef", "b", True)
    assert sent_properties(PROPERTIES, keep_loaded=False) == list(PROPERTIES)
