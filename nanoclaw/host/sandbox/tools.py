"""The agent's sandboxed tools: each call is one command in a fresh unit of its group.

bash, read, write, edit, glob, grep and fetch become argv lists for the broker; nothing
here touches the host's files. Paths are sandbox paths (under /workspace). Arguments go
to commands as separate argv entries, never spliced into shell text. Large outputs are
cut, with a note the model can read.
"""

from __future__ import annotations

import html.parser
import posixpath
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from nanoclaw.broker.protocol import RunResult

WORKSPACE = "/workspace"
MAX_TOOL_OUTPUT = 100_000  # characters shown to the model per call
MAX_GLOB_RESULTS = 1000

Runner = Callable[[Sequence[str], bytes], Awaitable[RunResult]]


class ToolInputError(Exception):
    """The model's arguments are unusable; the message says how to fix them."""


def sandbox_path(path: str) -> str:
    """An absolute path inside /workspace, normalised; relative paths start at the group's."""
    if "\x00" in path:
        raise ToolInputError("path contains a NUL byte")
    full = posixpath.normpath(
        path if path.startswith("/") else posixpath.join(WORKSPACE, "group", path)
    )
    if full != WORKSPACE and not full.startswith(WORKSPACE + "/"):
        raise ToolInputError(f"{path} is outside {WORKSPACE}; only /workspace is visible here")
    return full


def bash_argv(command: str) -> list[str]:
    return ["/bin/sh", "-c", command]


def read_argv(path: str, offset: int, limit: int) -> list[str]:
    if offset < 1 or limit < 1:
        raise ToolInputError("offset and limit start at 1")
    program = 'NR>=s && NR<=e {printf "%6d\\t%s\\n", NR, $0} NR>e {exit}'
    return [
        "/usr/bin/env",
        "awk",
        "-v",
        f"s={offset}",
        "-v",
        f"e={offset + limit - 1}",
        program,
        sandbox_path(path),
    ]


def cat_argv(path: str) -> list[str]:
    return ["/usr/bin/env", "cat", "--", sandbox_path(path)]


def write_argv(path: str) -> list[str]:
    script = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1"'
    return ["/bin/sh", "-c", script, "write", sandbox_path(path)]


def glob_argv(pattern: str) -> list[str]:
    # bash for globstar; the pattern is expanded, never evaluated as code.
    script = (
        "shopt -s globstar nullglob dotglob; cd /workspace || exit 1; "
        'n=0; for f in $1; do printf "%s\\n" "/workspace/$f"; n=$((n+1)); '
        f'[ "$n" -ge {MAX_GLOB_RESULTS} ] && break; done'
    )
    if pattern.startswith("/"):
        pattern = posixpath.relpath(sandbox_path(pattern), WORKSPACE)
    return ["/usr/bin/env", "bash", "-c", script, "glob", pattern]


def grep_argv(pattern: str, path: str) -> list[str]:
    return ["/usr/bin/env", "grep", "-rnIE", "--", pattern, sandbox_path(path)]


def fetch_argv(url: str) -> list[str]:
    if not url.startswith(("http://", "https://")):
        raise ToolInputError("fetch takes an http:// or https:// URL")
    return [
        "/usr/bin/env",
        "curl",
        "-sSL",
        "--max-time",
        "60",
        "--max-filesize",
        "10000000",
        "--proto",
        "=http,https",
        "--",
        url,
    ]


def replace_once(text: str, old: str, new: str) -> str:
    """The edit tool's rule: `old` must occur exactly once."""
    if not old:
        raise ToolInputError("old_string must not be empty")
    count = text.count(old)
    if count != 1:
        where = "does not occur" if count == 0 else f"occurs {count} times"
        raise ToolInputError(f"old_string {where} in the file; it must match exactly once")
    return text.replace(old, new, 1)


class _TextExtractor(html.parser.HTMLParser):
    SKIP = frozenset({"script", "style", "noscript", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skipping += 1
        elif tag in ("p", "br", "div", "li", "tr", "h1", "h2", "h3", "h4", "pre"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self._skipping:
            self._skipping -= 1

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_to_text(page: str) -> str:
    if "<html" not in page[:2000].lower() and "<body" not in page[:5000].lower():
        return page
    parser = _TextExtractor()
    parser.feed(page)
    lines = (line.strip() for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


def describe(result: RunResult, stdout: str | None = None) -> tuple[str, bool]:
    """The text the model sees for a command's result, and whether it counts as an error."""
    body = result.stdout.decode(errors="replace") if stdout is None else stdout
    errors = result.stderr.decode(errors="replace")
    parts = [body] if body else []
    if errors:
        parts.append(f"[stderr]\n{errors}")
    if result.result == "timeout":
        parts.append("[stopped: the command ran out of time]")
    elif result.signal is not None:
        parts.append(f"[killed by signal {result.signal} ({result.result})]")
    elif result.exit_status:
        parts.append(f"[exit status {result.exit_status}]")
    text = "\n".join(parts) or "(no output)"
    if result.truncated or len(text) > MAX_TOOL_OUTPUT:
        text = text[:MAX_TOOL_OUTPUT] + "\n[output cut: it was longer than the limit]"
    return text, not result.ok


@dataclass(frozen=True)
class SandboxTools:
    """The seven tools for one group, bound to a runner that reaches the broker."""

    run: Runner

    async def bash(self, command: str) -> tuple[str, bool]:
        return describe(await self.run(bash_argv(command), b""))

    async def read(self, path: str, offset: int = 1, limit: int = 2000) -> tuple[str, bool]:
        return describe(await self.run(read_argv(path, offset, limit), b""))

    async def write(self, path: str, content: str) -> tuple[str, bool]:
        result = await self.run(write_argv(path), content.encode())
        return ("wrote " + sandbox_path(path), False) if result.ok else describe(result)

    async def edit(self, path: str, old: str, new: str) -> tuple[str, bool]:
        current = await self.run(cat_argv(path), b"")
        if not current.ok:
            return describe(current)
        if current.truncated:
            return "the file is larger than the output limit; edit it with bash instead", True
        updated = replace_once(current.stdout.decode(), old, new)
        return await self.write(path, updated)

    async def glob(self, pattern: str) -> tuple[str, bool]:
        return describe(await self.run(glob_argv(pattern), b""))

    async def grep(self, pattern: str, path: str = "/workspace") -> tuple[str, bool]:
        result = await self.run(grep_argv(pattern, path), b"")
        if result.exit_status == 1 and not result.stderr:
            return "no matches", False
        return describe(result)

    async def fetch(self, url: str) -> tuple[str, bool]:
        result = await self.run(fetch_argv(url), b"")
        return describe(result, html_to_text(result.stdout.decode(errors="replace")))
