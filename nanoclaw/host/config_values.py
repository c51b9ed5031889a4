"""What a valid value of the configuration looks like: Matrix user and room IDs (the
spec's grammar), URLs, credential names, model IDs, text and single lines. Predicates only;
nanoclaw.host.config says which key takes which, and names the key when one fails.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from nanoclaw.broker.config_reader import CONTROL_CHARACTERS

# A server name per the spec grammar: a DNS name or IPv4 address, or an [IPv6] literal,
# with an optional port.
_SERVER = r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,255})(?::[0-9]{1,5})?"
# Localparts may use the spec's historical set (printable ASCII except ':'), not only
# today's [a-z0-9._=/+-]: servers still have such users (e.g. @Alice:example.org), and an
# owner or sender we refused here could never be served.
_USER_ID = re.compile(rf"@[!-9;-~]+:{_SERVER}")
# Room IDs are !opaque:server, or from room version 12 on a bare ! and the create event's
# hash (43 characters of unpadded URL-safe base64) with no server.
_ROOM_ID = re.compile(rf"!(?:[!-9;-~]+:{_SERVER}|[A-Za-z0-9_-]{{43}})")
_MAX_ID_LENGTH = 255  # the spec's limit for user and room IDs
_CREDENTIAL = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def is_user_id(value: str) -> bool:
    return len(value) <= _MAX_ID_LENGTH and _USER_ID.fullmatch(value) is not None


def is_room_id(value: str) -> bool:
    return len(value) <= _MAX_ID_LENGTH and _ROOM_ID.fullmatch(value) is not None


def is_url(value: str) -> bool:
    if re.search(r"\s", value) or CONTROL_CHARACTERS.search(value):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def is_absolute(value: str) -> bool:
    return not CONTROL_CHARACTERS.search(value) and Path(value).is_absolute()


def is_credential(value: str) -> bool:
    return value not in (".", "..") and _CREDENTIAL.fullmatch(value) is not None


def is_model_id(value: str) -> bool:
    return 0 < len(value) <= 200 and not re.search(r"\s", value) and is_line(value)


def is_text(value: str) -> bool:
    return bool(value.strip())


def is_line(value: str) -> bool:
    return bool(value.strip()) and not CONTROL_CHARACTERS.search(value)


def is_assistant_name(value: str) -> bool:
    # It is written into the prompt's XML and into the default trigger.
    return (
        1 <= len(value) <= 64
        and value == value.strip()
        and not CONTROL_CHARACTERS.search(value)
        and not re.search(r'[<>"]', value)
    )
