"""The sandboxed tools' pure parts: paths, argv (never shell-spliced), edits, output."""

from __future__ import annotations

import pytest

from nanoclaw.broker.protocol import RunResult
from nanoclaw.host.sandbox.tools import (
    MAX_TOOL_OUTPUT,
    ToolInputError,
    bash_argv,
    describe,
    fetch_argv,
    glob_argv,
    grep_argv,
    html_to_text,
    read_argv,
    replace_once,
    sandbox_path,
    write_argv,
)


def result(
    out: bytes = b"",
    err: bytes = b"",
    status: int | None = 0,
    signal: int | None = None,
    outcome: str = "success",
    truncated: bool = False,
) -> RunResult:
    return RunResult("u.service", outcome, status, signal, out, err, truncated, 5, 10, "0" * 64)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("notes.md", "/workspace/group/notes.md"),
        ("/workspace/photos/a.jpg", "/workspace/photos/a.jpg"),
        ("a/../b", "/workspace/group/b"),
        ("/workspace", "/workspace"),
    ],
)
def test_sandbox_paths(given: str, expected: str) -> None:
    assert sandbox_path(given) == expected


@pytest.mark.parametrize(
    "hostile",
    [
        "/etc/shadow",
        "/workspace/../etc/passwd",
        "../../etc",
        "/workspacex/a",
        "a\x00b",
        "/var/lib/nanoclaw/nanoclaw.db",
    ],
)
def test_paths_outside_the_workspace_are_refused(hostile: str) -> None:
    with pytest.raises(ToolInputError):
        sandbox_path(hostile)


def test_arguments_are_separate_argv_entries_never_shell_text() -> None:
    evil = "x'; rm -rf / #$(reboot)"
    for argv in (write_argv(evil), read_argv(evil, 1, 10), grep_argv(evil, "."), glob_argv(evil)):
        script = argv[2] if argv[0] == "/bin/sh" or argv[1] == "bash" else ""
        assert "rm -rf" not in script and "reboot" not in script
        assert any(evil in a for a in argv[3:]), argv
    assert bash_argv("echo hi") == ["/bin/sh", "-c", "echo hi"]
    assert all(argv[0].startswith("/") for argv in (write_argv("a"), grep_argv("a", "b")))


def test_read_ranges() -> None:
    argv = read_argv("f", 10, 5)
    assert "s=10" in argv and "e=14" in argv and argv[-1] == "/workspace/group/f"
    with pytest.raises(ToolInputError):
        read_argv("f", 0, 5)


def test_fetch_takes_only_http_urls() -> None:
    assert fetch_argv("https://example.org")[-1] == "https://example.org"
    for bad in ("file:///etc/passwd", "gopher://x", "-o/tmp/x"):
        with pytest.raises(ToolInputError):
            fetch_argv(bad)


def test_edit_replaces_exactly_one_match() -> None:
    assert replace_once("a b c", "b", "B") == "a B c"
    with pytest.raises(ToolInputError, match="does not occur"):
        replace_once("a", "b", "c")
    with pytest.raises(ToolInputError, match="occurs 2 times"):
        replace_once("b b", "b", "c")
    with pytest.raises(ToolInputError, match="must not be empty"):
        replace_once("b", "", "c")


def test_html_becomes_text_without_scripts() -> None:
    page = "<html><body><h1>Title</h1><script>alert(1)</script><p>Hello &amp; bye</p></body></html>"
    assert html_to_text(page) == "Title\nHello & bye"
    assert html_to_text("plain text") == "plain text"


def test_results_the_model_sees() -> None:
    assert describe(result(b"hi\n")) == ("hi\n", False)
    text, error = describe(result(b"", b"boom", status=2, outcome="exit-code"))
    assert error and "[stderr]\nboom" in text and "[exit status 2]" in text
    text, error = describe(result(status=None, signal=9, outcome="timeout"))
    assert error and "ran out of time" in text
    text, _ = describe(result(b"x" * (MAX_TOOL_OUTPUT + 10)))
    assert text.endswith("[output cut: it was longer than the limit]")
    text, _ = describe(result(b"short", truncated=True))
    assert "output cut" in text
