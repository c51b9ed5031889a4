"""Rendering agent Markdown into Matrix contents: safe HTML, allowed tags, size-bounded chunks."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from typing import Any

import pytest

from nanoclaw.host.formatting import HTML_FORMAT, MAX_EVENT_BYTES, render_message

# The spec's list of tags clients should display (client-server API, m.room.message msgtypes).
MATRIX_TAGS = set(
    "font del h1 h2 h3 h4 h5 h6 blockquote p a ul ol sup sub li b i u strong em strike code "
    "hr br div table thead tbody tr th td caption pre span img details summary".split()
)


class TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def tags_of(html: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    collector = TagCollector()
    collector.feed(html)
    return collector.tags


def html_of(markdown: str) -> str:
    [content] = render_message(markdown)
    assert content["format"] == HTML_FORMAT
    html: str = content["formatted_body"]
    return html


def encoded_size(content: dict[str, Any]) -> int:
    return len(json.dumps(content, ensure_ascii=False).encode())


def test_plain_text_has_no_formatted_body() -> None:
    assert render_message("hello there") == [{"msgtype": "m.text", "body": "hello there"}]
    assert render_message("a < b & c") == [{"msgtype": "m.text", "body": "a < b & c"}]


def test_empty_input_gives_no_messages() -> None:
    assert render_message("") == []
    assert render_message(" \n\t\n ") == []


def test_bold_code_and_links_render() -> None:
    [content] = render_message("**bold** `x < y` [docs](https://example.org/a?b=1&c=2)")
    assert content["body"] == "**bold** `x < y` [docs](https://example.org/a?b=1&c=2)"
    assert content["formatted_body"] == (
        "<p><strong>bold</strong> <code>x &lt; y</code> "
        '<a href="https://example.org/a?b=1&amp;c=2">docs</a></p>'
    )


def test_raw_html_is_escaped_not_passed_through() -> None:
    html = html_of("**hi** <script>alert(1)</script>\n\n<img src=x onerror=alert(1)>")
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert all(tag != "script" for tag, _ in tags_of(html))


@pytest.mark.parametrize(
    "link",
    [
        "[x](javascript:alert(1))",
        "[x](JavaScript:alert(1))",
        "<javascript:alert(1)>",
        "[x](data:text/html;base64,PHNjcmlwdD4=)",
        "[x](vbscript:msgbox)",
        "[x](file:///etc/passwd)",
        "[x](/relative/path)",
        "[x](ftp://example.org)",
    ],
)
def test_unsafe_or_relative_links_are_not_links(link: str) -> None:
    html = html_of(f"**see** {link}")
    assert "<a" not in html
    assert "href" not in html


@pytest.mark.parametrize(
    ("markdown", "href"),
    [
        ("[x](https://example.org)", "https://example.org"),
        ("[x](http://example.org)", "http://example.org"),
        ("[x](mailto:a@example.org)", "mailto:a@example.org"),
        ("[x](matrix:u/alice:example.org)", "matrix:u/alice:example.org"),
        ("<https://example.org>", "https://example.org"),
        ("<a@example.org>", "mailto:a@example.org"),
    ],
)
def test_safe_links_are_links(markdown: str, href: str) -> None:
    assert tags_of(html_of(markdown)) == [("p", []), ("a", [("href", href)])]


def test_output_uses_only_tags_and_attributes_matrix_allows() -> None:
    markdown = "\n\n".join(
        [
            "# H1\n## H2\n###### H6",
            "Setext\n===",
            "*em* **strong** ~~struck~~ `code` [link](https://e.org 'title') ![img](https://e.org/i.png)",
            "line one  \nhard break\nsoft break",
            "> quoted\n> > nested",
            "- a\n- b\n  1. x\n  2. y",
            "3. three\n4. four",
            "```python\nprint('<hi>')\n```",
            "    indented code",
            "---",
            "| left | right | centre |\n|:-----|------:|:------:|\n| 1 | 2 | 3 |",
            "<div onclick=x>raw</div>",
            '[ref]\n\n[ref]: https://e.org "t"',
        ]
    )
    tags = tags_of(html_of(markdown))
    seen = {tag for tag, _ in tags}
    assert seen <= MATRIX_TAGS
    assert {"h1", "h6", "em", "strong", "del", "code", "pre", "a", "br", "blockquote"} <= seen
    assert {"ul", "ol", "li", "hr", "table", "thead", "tbody", "tr", "th", "td"} <= seen
    for tag, attrs in tags:
        for name, value in attrs:
            assert (tag, name) in {("a", "href"), ("ol", "start"), ("code", "class")}
            if name == "class":
                assert value == "language-python"


def test_strikethrough_uses_del() -> None:
    assert html_of("~~gone~~") == "<p><del>gone</del></p>"


def test_long_message_splits_into_chunks_below_the_cap() -> None:
    paragraphs = [
        f"Paragraph {i}: " + " ".join(f"**w{i}-{j}** _x_ `y` & <z>" for j in range(40))
        for i in range(250)
    ]
    markdown = "\n\n".join(paragraphs)
    assert len(markdown.encode()) > 200 * 1024
    contents = render_message(markdown)
    assert len(contents) > 1
    for content in contents:
        assert encoded_size(content) < MAX_EVENT_BYTES
        assert content["format"] == HTML_FORMAT
    # Split at paragraph boundaries: every chunk is whole paragraphs, nothing lost or reordered.
    assert [c["body"] for c in contents] == [
        "\n\n".join(group) for group in _regroup(paragraphs, contents)
    ]


def _regroup(paragraphs: list[str], contents: list[dict[str, Any]]) -> list[list[str]]:
    groups, rest = [], list(paragraphs)
    for content in contents:
        count = content["body"].count("\n\n") + 1
        groups.append(rest[:count])
        rest = rest[count:]
    assert not rest
    return groups


def test_a_long_paragraph_is_cut_at_lines_then_inside_lines() -> None:
    lines = [f"line {i} " + " ".join(["word"] * 30) for i in range(1500)]
    single = "x" * 70_000
    contents = render_message("\n".join(lines) + "\n\n" + single)
    assert all(encoded_size(c) < MAX_EVENT_BYTES for c in contents)
    bodies = [c["body"] for c in contents]
    text_bodies = [b for b in bodies if b.startswith("line")]
    # Whole lines while a line fits, hard cuts only for the line that does not.
    assert len(text_bodies) > 1
    assert "\n".join(text_bodies) == "\n".join(lines)
    assert "".join(b for b in bodies if b.startswith("x")) == single
    assert len(bodies) == len(text_bodies) + 5


def test_control_characters_that_expand_in_json_still_fit() -> None:
    # Each \x01 becomes six bytes ("\u0001") in the body and again in formatted_body.
    markdown = "**x**" + "\x01" * 40_000
    contents = render_message(markdown)
    assert len(contents) > 1
    assert all(encoded_size(c) < MAX_EVENT_BYTES for c in contents)
    assert "".join(c["body"] for c in contents) == markdown


FENCE = re.compile(r"^(`{3,}|~{3,})(.*)$")


def fence_lines(body: str) -> list[str]:
    return [line for line in body.split("\n") if FENCE.match(line)]


def test_huge_code_block_is_closed_and_reopened_in_every_chunk() -> None:
    code = "\n".join(f"    value_{i} = compute({i}) * 2  # <{i}> & more" for i in range(1200))
    assert len(code.encode()) > 50 * 1024
    markdown = f"Here is the file:\n\n```python\n{code}\n```\n\nThat is all."
    contents = render_message(markdown)
    assert len(contents) > 2
    assert contents[0]["body"] == "Here is the file:"  # not pulled into the code block's chunk
    assert contents[-1]["body"].endswith("```\n\nThat is all.")
    code_lines: list[str] = []
    for content in contents:
        assert encoded_size(content) < MAX_EVENT_BYTES
        body = content["body"]
        if body.startswith("```"):
            assert fence_lines(body) == ["```python", "```"]
            inner = body.split("```python\n", 1)[1].split("\n```", 1)[0]
            code_lines.extend(inner.split("\n"))
            html = content["formatted_body"]
            assert html.startswith('<pre><code class="language-python">')
            assert html.count("<pre>") == 1 and "```" not in html
    assert "\n".join(code_lines) == code


def test_code_block_with_a_line_longer_than_a_chunk() -> None:
    markdown = "~~~\n" + "ab" * 30_000 + "\n~~~"
    contents = render_message(markdown)
    assert len(contents) > 1
    for content in contents:
        assert fence_lines(content["body"]) == ["~~~", "~~~"]
        assert content["formatted_body"].startswith("<pre><code>")
    pieces = [c["body"].removeprefix("~~~\n").removesuffix("\n~~~") for c in contents]
    assert "".join(pieces) == "ab" * 30_000


def test_code_block_is_kept_whole_when_it_fits() -> None:
    prose = "\n\n".join("Some prose here. " * 50 for _ in range(15))
    code = "```sh\n" + "\n".join(f"echo {i}" for i in range(600)) + "\n```"
    contents = render_message(prose + "\n\n" + code + "\n\n" + prose)
    holding = [c["body"] for c in contents if "```" in c["body"]]
    assert len(holding) == 1 and code in holding[0]


@pytest.mark.parametrize("unit", ["😀", "漢字", "é", "👩‍👩‍👧"])
def test_multibyte_text_is_never_split_mid_character(unit: str) -> None:
    markdown = unit * (100_000 // len(unit.encode()))
    contents = render_message(markdown)
    assert len(contents) > 1
    encoded = [c["body"].encode("utf-8") for c in contents]  # a split character would not encode
    assert b"".join(encoded) == markdown.encode()
    assert all(encoded_size(c) < MAX_EVENT_BYTES for c in contents)


def test_thread_relation_on_every_chunk() -> None:
    contents = render_message("word " * 10_000, thread_root="$root")
    assert len(contents) > 1
    for content in contents:
        assert content["m.relates_to"] == {
            "rel_type": "m.thread",
            "event_id": "$root",
            "is_falling_back": True,
            "m.in_reply_to": {"event_id": "$root"},
        }
    assert contents[0]["m.relates_to"] is not contents[1]["m.relates_to"]


def test_thread_reply_falls_back_to_the_message_replied_to() -> None:
    [content] = render_message("ok", thread_root="$root", reply_to="$ev")
    assert content["m.relates_to"] == {
        "rel_type": "m.thread",
        "event_id": "$root",
        "is_falling_back": True,
        "m.in_reply_to": {"event_id": "$ev"},
    }


def test_reply_without_thread_only_on_first_chunk() -> None:
    contents = render_message("word " * 10_000, reply_to="$ev")
    assert len(contents) > 1
    assert contents[0]["m.relates_to"] == {"m.in_reply_to": {"event_id": "$ev"}}
    assert all("m.relates_to" not in c for c in contents[1:])


def test_no_relation_by_default() -> None:
    assert "m.relates_to" not in render_message("hi")[0]
