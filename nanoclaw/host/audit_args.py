"""What the audit trail keeps of a tool call's arguments: bounded, and never a secret.

The rule, applied before anything is stored or logged:
- The host's own secrets (the Matrix token, the model key), wherever they appear, become
  `[secret]`; so do strings shaped like credentials: `sk-...` keys (the model's, and the
  CLI's placeholders for it, `sk-nanoclaw-...`), GitHub, GitLab, Slack, AWS and Matrix
  (`syt_`) tokens, PEM private keys, `Bearer`/`Basic` credentials, the password in a URL
  (`https://user:[secret]@...`, which is how a unit's proxy secret is written) or after
  `curl -u`, and the value of any `NAME=value`, `NAME: value` or `--NAME value` whose
  NAME says key, token, secret, password, credential, auth, cookie or session (as in
  `API_TOKEN=... cmd` or `export PASSWORD=...`). An argument whose own name says so is
  kept as `[secret]` whole.
- What a file or a message holds (`content`, `text`, `old_string`, `new_string`) is kept
  as its size and sha256 only: it is the payload, not what was asked for, and is where a
  secret would most likely be.
- What is left is cut to MAX_ARGUMENT_BYTES of JSON, strings first, after redaction (so
  no cut can split a secret past recognition).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

MAX_ARGUMENT_BYTES = 2048
MAX_REASON_CHARS = 500
SECRET = "[secret]"
PAYLOADS = frozenset({"content", "text", "old_string", "new_string"})

_NAME = r"[A-Za-z0-9_.-]*(?:key|token|secret|passw(?:or)?d|pwd|credential|auth|cookie|session)"
_SECRET_NAME = re.compile(rf"(?i){_NAME}[A-Za-z0-9_.-]*")
_VALUE = r"(?:'[^']*'|\"[^\"]*\"|[^\s'\",;&|)]+)"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"
        ),
        SECRET,
    ),
    (re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{8,}"), rf"\1 {SECRET}"),
    (re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@"), rf"\1{SECRET}@"),
    (re.compile(r"(\s-u\s*|--user[=\s]+)['\"]?[^\s'\":]*:[^\s'\"]+"), rf"\1{SECRET}"),
    (re.compile(rf"(?i)(--?{_NAME}[A-Za-z0-9_.-]*(?:=|\s+))(?!-){_VALUE}"), rf"\1{SECRET}"),
    (re.compile(rf"(?i)(\b{_NAME}[A-Za-z0-9_.-]*['\"]?\s*[=:]\s*){_VALUE}"), rf"\1{SECRET}"),
    (
        re.compile(
            r"\b(?:sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,}"
            r"|glpat-[\w-]{20,}|xox[abprs]-[\w-]{10,}|AKIA[0-9A-Z]{16}|syt_[\w-]{10,})"
        ),
        SECRET,
    ),
)


class SecretFilter:
    """Takes secrets out of text by the rule above; `known` are the host's own."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self._known = sorted({k for k in known if len(k) >= 8}, key=len, reverse=True)

    def clean(self, text: str) -> str:
        for value in self._known:
            text = text.replace(value, SECRET)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def reason(self, text: str) -> str:
        """A refusal's or error's text, which may quote the arguments: cleaned and cut."""
        return _cut(self.clean(text), MAX_REASON_CHARS)

    def arguments(self, args: Mapping[str, Any]) -> str:
        """The arguments as the audit keeps them: JSON, redacted, at most MAX_ARGUMENT_BYTES."""
        kept = {self.clean(str(k)): self._value(str(k), v) for k, v in args.items()}
        limit = MAX_ARGUMENT_BYTES
        text = _json(kept)
        while len(text.encode()) > MAX_ARGUMENT_BYTES and limit > 16:
            limit //= 2
            text = _json(_cut_strings(kept, limit))
        if len(text.encode()) > MAX_ARGUMENT_BYTES:  # many keys: keep the start of the JSON
            text = _json({"cut": _cut(text, MAX_ARGUMENT_BYTES // 2)})
        return text

    def _value(self, name: str, value: Any) -> Any:
        if _SECRET_NAME.fullmatch(name):
            return SECRET
        if name in PAYLOADS and isinstance(value, str):
            data = value.encode()
            return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        return self._deep(value)

    def _deep(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.clean(value)
        if isinstance(value, Mapping):
            return {self.clean(str(k)): self._value(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._deep(item) for item in value]
        return value if isinstance(value, int | float | bool) or value is None else str(value)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}…[{len(text) - limit} more]"


def _cut_strings(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return _cut(value, limit)
    if isinstance(value, Mapping):
        return {k: _cut_strings(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut_strings(item, limit) for item in value]
    return value
