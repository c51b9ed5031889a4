"""Turn the agent's Markdown replies into Matrix m.room.message contents.

The agent writes Markdown. Each reply becomes one or more m.text contents whose `body` is the
Markdown source (what plain-text clients show) and whose `formatted_body` is HTML restricted to
what the Matrix spec lets clients display. Long replies are split so that every event stays
below the homeserver's size cap, preferably at paragraph boundaries and without breaking
fenced code blocks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.rules_core import StateCore
from markdown_it.token import Token

# Matrix caps a whole event at 65,536 bytes of JSON; keep room for the envelope and encryption
# overhead.
MAX_EVENT_BYTES = 60_000

# Target size of one chunk's `body`; body plus formatted_body then stays far below the cap, and
# the encoded size is still checked afterwards.
BODY_BUDGET = 16 * 1024

SAFE_LINK_SCHEMES = frozenset({"http", "https", "mailto", "matrix"})

HTML_FORMAT = "org.matrix.custom.html"

_SCHEME = re.compile(r"([a-z][a-z0-9+.-]*):")

# Attributes the spec allows on the tags markdown-it emits; anything else (link titles, table
# alignment styles) would only be stripped by clients.
_ALLOWED_ATTRS: dict[str, frozenset[str]] = {
    "a": frozenset({"href"}),
    "ol": frozenset({"start"}),
}

# A fence opener: up to any indentation (fences nested in list items are indented), three or
# more backticks or tildes, then the info string.
_FENCE_OPEN = re.compile(r"[ \t]*(`{3,}|~{3,})(.*)")

# Longer "openers" are not treated as fences when splitting: each chunk of a split code block
# repeats the opener and closer, and that overhead must stay small against the budget.
_MAX_FENCE_LINE_BYTES = 256

# How good a place between two lines is for ending a chunk; higher is better.
_HARD = 0  # inside a line, or at either end of a code block's content (leaves an empty block)
_IN_FENCE = 1  # between two lines of a code block, which is then closed and reopened
_LINE = 2
_PARAGRAPH = 3


class _MatrixMarkdown(MarkdownIt):
    """markdown-it that renders links only when they use a scheme in SAFE_LINK_SCHEMES.

    markdown-it's default validateLink is a denylist: it rejects javascript:, vbscript:, file:
    and data: (except data:image/gif|png|jpeg|webp) and accepts everything else, including
    relative links and unknown schemes. An allowlist is the safer default for model output.
    A rejected link stays visible as its literal Markdown text.
    """

    def validateLink(self, url: str) -> bool:
        scheme = _SCHEME.match(url.strip().lower())
        return scheme is not None and scheme.group(1) in SAFE_LINK_SCHEMES


def _walk(tokens: Sequence[Token]) -> Iterator[Token]:
    for token in tokens:
        yield token
        if token.children:
            yield from _walk(token.children)


def _restrict_to_matrix_html(state: StateCore) -> None:
    """Use only tags and attributes from the spec's list of what clients should display."""
    for token in _walk(state.tokens):
        if token.tag == "s":  # markdown-it renders ~~strike~~ as <s>, which is not on the list
            token.tag = "del"
        allowed = _ALLOWED_ATTRS.get(token.tag, frozenset())
        token.attrs = {name: value for name, value in token.attrs.items() if name in allowed}


def _build_markdown() -> MarkdownIt:
    # html=False: raw HTML in model output is shown as text, never passed through.
    # breaks=True: a newline in the source is a line break, as plain-text clients show it.
    md = _MatrixMarkdown("commonmark", {"html": False, "breaks": True})
    md.enable(["table", "strikethrough"])
    # Matrix clients only load mxc:// images, which the agent cannot produce from Markdown;
    # without the rule, ![alt](url) is shown as "!" and an ordinary link.
    md.disable("image")
    md.core.ruler.push("matrix_html", _restrict_to_matrix_html)
    return md


_MARKDOWN = _build_markdown()


def render_message(
    markdown: str, thread_root: str | None = None, reply_to: str | None = None
) -> list[dict[str, Any]]:
    """Split `markdown` into one or more m.room.message contents (msgtype m.text).

    Each has `body` (the Markdown source of that chunk) and, when the chunk renders to
    something other than plain text, `format` and `formatted_body`. Each content serialised
    with json.dumps(ensure_ascii=False) encodes below MAX_EVENT_BYTES.

    thread_root: every chunk goes into that thread, with an m.in_reply_to fallback to
    `reply_to or thread_root` for clients without thread support. reply_to without a thread:
    the first chunk replies to it.
    """
    if not markdown.strip():
        return []
    # Lone surrogates cannot be encoded as UTF-8, so they could not be sent at all.
    text = markdown.replace("\r\n", "\n").encode("utf-8", "replace").decode("utf-8")
    contents = _fitted(text, BODY_BUDGET, _relation(thread_root, reply_to))
    if thread_root is not None:
        return [
            {**content, "m.relates_to": _relation(thread_root, reply_to)} for content in contents
        ]
    if reply_to is not None:
        return [{**contents[0], "m.relates_to": _relation(None, reply_to)}, *contents[1:]]
    return contents


def _relation(thread_root: str | None, reply_to: str | None) -> dict[str, Any] | None:
    if thread_root is not None:
        return {
            "rel_type": "m.thread",
            "event_id": thread_root,
            "is_falling_back": True,
            "m.in_reply_to": {"event_id": reply_to or thread_root},
        }
    if reply_to is not None:
        return {"m.in_reply_to": {"event_id": reply_to}}
    return None


def _fitted(text: str, budget: int, relation: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Contents for `text`, each of which fits the event cap even with `relation` attached."""
    contents: list[dict[str, Any]] = []
    for body in _split(text, budget):
        content = _content(body)
        measured = content if relation is None else {**content, "m.relates_to": relation}
        if len(json.dumps(measured, ensure_ascii=False).encode()) < MAX_EVENT_BYTES:
            contents.append(content)
        else:
            # Escaping (JSON \uXXXX, HTML entities) or link references can blow a chunk up
            # well beyond its body size; smaller chunks expand less.
            contents.extend(_fitted(body, budget // 2, relation))
    return contents


def _content(body: str) -> dict[str, Any]:
    content: dict[str, Any] = {"msgtype": "m.text", "body": body}
    html = _MARKDOWN.render(body).rstrip("\n")
    if html != f"<p>{escapeHtml(body.strip())}</p>":
        content["format"] = HTML_FORMAT
        content["formatted_body"] = html
    return content


@dataclass(frozen=True)
class _Fence:
    opener: str  # the opening line, repeated to reopen the block in the next chunk
    closer: str  # its indentation and marker

    @property
    def overhead(self) -> int:
        """Bytes added to a chunk that reopens and closes this block."""
        return len(self.opener.encode()) + len(self.closer.encode()) + 2


@dataclass(frozen=True)
class _Line:
    text: str
    size: int  # UTF-8 bytes of text
    joined: bool  # continues the previous line after a hard cut, without a newline between
    fence: _Fence | None  # set on the content and closing lines of a fenced code block
    closes: bool  # the closing line of `fence`

    @property
    def is_gap(self) -> bool:
        """A blank line between blocks: may be dropped at a chunk boundary."""
        return self.fence is None and not self.joined and not self.text.strip()


def _opened_fence(line: str) -> _Fence | None:
    match = _FENCE_OPEN.fullmatch(line)
    if match is None or len(line.encode()) > _MAX_FENCE_LINE_BYTES:
        return None
    marker, info = match.group(1), match.group(2)
    if marker[0] == "`" and "`" in info:  # CommonMark: not a fence but inline code
        return None
    return _Fence(opener=line, closer=line[: match.start(1)] + marker)


def _is_closer(line: str, fence: _Fence) -> bool:
    marker = fence.closer.lstrip(" \t")
    stripped = line.strip(" \t")
    return len(stripped) >= len(marker) and stripped == marker[0] * len(stripped)


def _scan(text: str, budget: int) -> list[_Line]:
    """The lines of `text` with their code-block context, cut so each fits the budget."""
    lines: list[_Line] = []
    open_fence: _Fence | None = None
    for raw in text.split("\n"):
        inside, closes = open_fence, False
        if open_fence is None:
            open_fence = _opened_fence(raw)
            overhead = 0 if open_fence is None else open_fence.overhead
        else:
            closes = _is_closer(raw, open_fence)
            overhead = open_fence.overhead
            if closes:
                open_fence = None
        for index, piece in enumerate(_pieces(raw, max(budget - overhead, 1))):
            lines.append(
                _Line(piece, len(piece.encode()), index > 0, inside, closes and index == 0)
            )
    return lines


def _pieces(text: str, limit: int) -> list[str]:
    """Cut `text` into pieces of at most `limit` UTF-8 bytes (at least one character each),
    preferring to cut after a space."""
    pieces: list[str] = []
    while len(text.encode()) > limit:
        # Decoding a byte prefix with errors="ignore" drops a trailing partial character, so
        # this is the longest prefix that ends on a character boundary.
        cut = max(len(text[:limit].encode()[:limit].decode("utf-8", "ignore")), 1)
        space = text.rfind(" ", 0, cut)
        if space >= cut // 2:
            cut = space + 1
        pieces.append(text[:cut])
        text = text[cut:]
    pieces.append(text)
    return pieces


def _split(text: str, budget: int) -> list[str]:
    """Cut Markdown into chunks of about `budget` UTF-8 bytes that each render on their own."""
    lines = _scan(text, budget)
    chunks: list[str] = []
    start = 0
    while True:
        while start < len(lines) and lines[start].is_gap:
            start += 1
        if start == len(lines):
            return chunks
        end = _chunk_end(lines, start, budget)
        chunk = _join(lines, start, end)
        if chunk.strip():
            chunks.append(chunk)
        start = end


def _chunk_end(lines: Sequence[_Line], start: int, budget: int) -> int:
    """Where the chunk starting at `start` ends: the best-ranked cut that fits, latest first."""
    reopen = _reopen_size(lines[start])
    best_end, best_rank = start + 1, -1
    size = 0
    for end in range(start + 1, len(lines) + 1):
        line = lines[end - 1]
        size += line.size + (0 if end == start + 1 or line.joined else 1)
        if size + reopen > budget:
            break
        if end == len(lines):
            return end
        if size + reopen + _close_size(lines[end]) > budget:
            continue
        rank = _rank(lines[end - 1], lines[end])
        if rank >= best_rank:
            best_end, best_rank = end, rank
    return best_end


def _reopen_size(first: _Line) -> int:
    return 0 if first.fence is None else len(first.fence.opener.encode()) + 1


def _close_size(following: _Line) -> int:
    return 0 if following.fence is None else len(following.fence.closer.encode()) + 1


def _rank(before: _Line, after: _Line) -> int:
    """How good a chunk boundary between `before` and `after` is."""
    if after.joined or after.closes:
        return _HARD
    if after.fence is not None:
        # Right after the opener, the chunk would end in an empty code block.
        return _HARD if before.fence is None else _IN_FENCE
    if before.is_gap or after.is_gap:
        return _PARAGRAPH
    return _LINE


def _join(lines: Sequence[_Line], start: int, end: int) -> str:
    """The chunk's Markdown, with a code block cut at either edge closed and reopened."""
    parts: list[str] = []
    first = lines[start]
    if first.fence is not None:
        parts.append(first.fence.opener + "\n")
    for index in range(start, end):
        if index > start and not lines[index].joined:
            parts.append("\n")
        parts.append(lines[index].text)
    if end < len(lines):
        following = lines[end].fence
        if following is not None:
            parts.append("\n" + following.closer)
    return "".join(parts).rstrip()
