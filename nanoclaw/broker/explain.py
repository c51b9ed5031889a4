"""A unit's plan as unit-file lines, one `Name=value` each, for `nanoclaw policy explain`.

Values are quoted as in unit files, so no argument can start a line of its own, and
credentials in proxy URLs are masked.
"""

from __future__ import annotations

import errno
import ipaddress
import re

from nanoclaw.broker.compiler import USEC_PER_SECOND, UnitPlan

# explain(): the unit-file settings whose names differ from the bus properties.
_UNIT_FILE_NAMES = {
    "CPUQuotaPerSecUSec": "CPUQuota",
    "RuntimeMaxUSec": "RuntimeMaxSec",
    "TimeoutStopUSec": "TimeoutStopSec",
}
_SAFE_WORD = re.compile(r"[A-Za-z0-9_@+=:,./$-]+")


def explain(plan: UnitPlan) -> str:
    lines = [f"# {plan.name}"]
    for name, signature, value in plan.properties:
        lines.append(f"{_UNIT_FILE_NAMES.get(name, name)}={_render(name, signature, value)}")
    return "\n".join(lines) + "\n"


def _render(name: str, signature: str, value: object) -> str:
    match signature, value:
        case "b", bool():
            return "yes" if value else "no"
        case "t", int() if name == "CPUQuotaPerSecUSec":
            return f"{value * 100 // USEC_PER_SECOND}%"
        case "t", int() if name.endswith("USec"):
            return f"{value / USEC_PER_SECOND:g}"
        case "t", 0 if name in ("CapabilityBoundingSet", "AmbientCapabilities"):
            return ""  # the empty set
        case "t", 0 if name == "RestrictNamespaces":
            return "yes"
        case "i", int() if name == "SystemCallErrorNumber":
            return errno.errorcode.get(value, str(value))
        case "t", int():
            return str(value)
        case "u", int() if name.endswith("Mode"):
            return f"{value:04o}"
        case "s", str() if value.isprintable():
            return value.replace("%", "%%")  # these settings take the rest of the line
        case "s", str():
            return _quote(value)
        case "as", tuple() if name == "Environment":
            return " ".join(_quote(re.sub(r"(?<=://)[^/@]*@", "***@", str(e))) for e in value)
        case "as", tuple():
            return " ".join(_quote(str(item)) for item in value)
        case "(bas)", (bool() as allow, tuple() as items):
            return ("" if allow else "~") + " ".join(_quote(str(item)) for item in items)
        case "a(sasb)", ((_, tuple() as argv, _),):
            return " ".join(_quote(str(arg)) for arg in argv)
        case "a(ssbt)", tuple():
            return " ".join(
                _quote(
                    f"{'-' if ignore else ''}{_colons(source)}:{_colons(destination)}:"
                    + ("rbind" if recursive else "norbind")
                )
                for source, destination, ignore, recursive in value
            )
        case "a(ss)", tuple():
            return " ".join(_quote(f"{_colons(path)}:{options}") for path, options in value)
        case "a(iayu)", tuple():
            networks = [str(ipaddress.ip_network((raw, prefix))) for _, raw, prefix in value]
            return "any" if networks == ["0.0.0.0/0", "::/0"] else " ".join(networks)
    raise ValueError(f"cannot show {name} ({signature}) = {value!r}")


def _quote(word: str) -> str:
    word = word.replace("%", "%%")  # no specifiers
    if _SAFE_WORD.fullmatch(word):
        return word
    escaped = "".join(
        "\\" + char if char in '"\\' else char if char.isprintable() else _escape(char)
        for char in word
    )
    return f'"{escaped}"'


def _escape(char: str) -> str:
    return "".join(f"\\x{byte:02x}" for byte in char.encode(errors="surrogatepass"))


def _colons(path: str) -> str:
    # In BindPaths= and TemporaryFileSystem= a ':' separates fields; a path's own is "\:".
    return path.replace(":", "\\:")
