"""A digest of the properties a transient unit was started with, for the audit trail: the
host records it with each tool call, so what a unit was allowed can be checked later
against the policy (`nanoclaw policy explain`) without the broker keeping anything."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from nanoclaw.broker.systemd_bus import Property


def _canonical(value: object) -> object:
    """JSON of a D-Bus value: arrays and structs as lists, `ay` as a list of byte values."""
    if isinstance(value, bytes):
        return list(value)
    if isinstance(value, tuple | list):
        return [_canonical(item) for item in value]
    return value


def properties_sha256(properties: Sequence[Property]) -> str:
    """sha256 of [[name, signature, value], ...] in the order sent, as compact JSON with
    sorted keys and ASCII only, so the same properties always give the same digest."""
    canonical = [[name, signature, _canonical(value)] for name, signature, value in properties]
    text = json.dumps(canonical, separators=(",", ":"), sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()
