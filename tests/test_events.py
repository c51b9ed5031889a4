"""Which raw Matrix events become chat, commands, history or nothing at all."""

from __future__ import annotations

from typing import Any

import pytest

from nanoclaw.host.events import classify, strip_reply_fallback

BOT = "@bot:localhost"
ROOM = "!r:localhost"


def event(
    content: dict[str, Any], sender: str = "@alice:localhost", ts: int = 2000, **extra: Any
) -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "event_id": "$e",
        "sender": sender,
        "origin_server_ts": ts,
        "content": content,
        **extra,
    }


def text(body: str, **content: Any) -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body, **content}


def kind(ev: dict[str, Any], joined_ts: int | None = 1000) -> str | None:
    m = classify(ev, ROOM, BOT, "Alice", joined_ts)
    return None if m is None else m.kind


def test_plain_text_is_chat() -> None:
    assert kind(event(text("hello"))) == "chat"


def test_own_messages_are_kept_as_context_only() -> None:
    assert kind(event(text("hi"), sender=BOT)) == "own"


@pytest.mark.parametrize("joined_ts", [None, 5000])
def test_messages_from_before_the_join_are_history(joined_ts: int | None) -> None:
    assert kind(event(text("old"), ts=2000), joined_ts) == "history"


def test_edits_never_run_again() -> None:
    edit = text(
        "* fixed",
        **{
            "m.new_content": text("fixed"),
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$orig"},
        },
    )
    assert kind(event(edit)) is None


def test_redacted_events_are_skipped() -> None:
    assert kind(event({})) is None


def test_notices_from_other_bots_are_ignored() -> None:
    assert kind(event({"msgtype": "m.notice", "body": "beep"})) is None


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "m.room.member", "content": {}},
        {
            "type": "m.room.message",
            "event_id": "$x",
            "sender": "@a:l",
            "origin_server_ts": "soon",
            "content": text("hi"),
        },
        {
            "type": "m.room.message",
            "event_id": None,
            "sender": "@a:l",
            "origin_server_ts": 1,
            "content": text("hi"),
        },
        {
            "type": "m.room.message",
            "event_id": "$x",
            "sender": "@a:l",
            "origin_server_ts": 1,
            "content": "not an object",
        },
        {
            "type": "m.room.message",
            "event_id": "$x",
            "sender": "@a:l",
            "origin_server_ts": 1,
            "content": {"msgtype": "m.text", "body": 42},
        },
    ],
)
def test_malformed_events_are_skipped_not_raised(bad: dict[str, Any]) -> None:
    assert classify(bad, ROOM, BOT, "A", 0) is None


@pytest.mark.parametrize("body", ["/new", " /NEW ", "/status"])
def test_room_commands(body: str) -> None:
    assert kind(event(text(body))) == "command"


def test_command_words_inside_a_sentence_are_chat() -> None:
    assert kind(event(text("what does /new do?"))) == "chat"


def test_thread_and_reply_relations_are_kept_and_fallback_stripped() -> None:
    content = text(
        "> <@bot:localhost> earlier\n> more\n\nmy answer",
        **{
            "m.relates_to": {
                "rel_type": "m.thread",
                "event_id": "$root",
                "m.in_reply_to": {"event_id": "$parent"},
            }
        },
    )
    m = classify(event(content), ROOM, BOT, "Alice", 0)
    assert m is not None
    assert (m.thread_root, m.reply_to, m.body) == ("$root", "$parent", "my answer")


@pytest.mark.parametrize(
    "content",
    [
        text("hey", **{"m.mentions": {"user_ids": [BOT]}}),
        text("ping @bot:localhost"),
        text(
            "Andy",
            format="org.matrix.custom.html",
            formatted_body='<a href="https://matrix.to/#/@bot:localhost">Andy</a>',
        ),
    ],
)
def test_mentions_of_the_bot(content: dict[str, Any]) -> None:
    m = classify(event(content), ROOM, BOT, "Alice", 0)
    assert m is not None and m.mentions_bot


def test_no_mention() -> None:
    m = classify(event(text("hello @carol:localhost")), ROOM, BOT, "Alice", 0)
    assert m is not None and not m.mentions_bot


def test_fallback_only_stripped_at_the_start() -> None:
    assert strip_reply_fallback("text\n> not a fallback") == "text\n> not a fallback"
