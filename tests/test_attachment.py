"""A sent file as its event describes it, its name in the inbox, and how the prompt shows it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from zoneinfo import ZoneInfo

import pytest

from nanoclaw.broker.protocol import RunResult
from nanoclaw.broker.workspace_usage import size
from nanoclaw.host.attachment import Attachment, attachment_of
from nanoclaw.host.image_scale import MAX_IMAGE_BYTES
from nanoclaw.host.inbox import Image, Inbox, NotShown, inbox_name
from nanoclaw.host.prompt import PromptMessage, build_prompt

ENCRYPTED = {"url": "mxc://hs/abc", "key": {"k": "K"}, "iv": "I", "hashes": {"sha256": "H"}}


def test_a_plain_file_and_an_encrypted_image() -> None:
    plain = attachment_of(
        {"msgtype": "m.file", "body": "notes.pdf", "url": "mxc://hs/x",
         "info": {"mimetype": "application/pdf", "size": 1234}}
    )  # fmt: skip
    assert plain == Attachment("m.file", "notes.pdf", "application/pdf", 1234, "mxc://hs/x")
    image = attachment_of({"msgtype": "m.image", "body": "caption", "filename": "a.png",
                           "file": ENCRYPTED, "info": {"mimetype": "image/png"}})  # fmt: skip
    assert image == Attachment("m.image", "a.png", "image/png", None, "mxc://hs/abc", ENCRYPTED)
    assert Attachment.from_json(image.to_json()) == image


@pytest.mark.parametrize(
    "content",
    [
        {"msgtype": "m.text", "body": "hi"},
        {"msgtype": "m.file", "body": "x"},  # no url
        {"msgtype": "m.file", "body": "x", "url": "https://elsewhere/x"},
        {"msgtype": "m.video", "body": "x", "file": {"url": 3}},
    ],
)
def test_what_is_no_usable_attachment(content: dict[str, object]) -> None:
    assert attachment_of(content) is None


def test_a_claimed_size_that_is_no_number_is_not_believed() -> None:
    sent = {"msgtype": "m.file", "body": "x", "url": "mxc://h/x", "info": {"size": True}}
    assert attachment_of(sent) == Attachment("m.file", "x", "application/octet-stream", None,
                                             "mxc://h/x")  # fmt: skip


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("report 2026.pdf", "report_2026.pdf"),
        ("../../etc/passwd", "_._etc_passwd"),
        (".bashrc", "bashrc"),
        ("тест.txt", "_.txt"),
        ("", "file"),
        ("a" * 200 + ".csv", "a" * 76 + ".csv"),
    ],
)
def test_inbox_names_are_fresh_and_safe(sent: str, kept: str) -> None:
    name = inbox_name(sent)
    assert re.fullmatch(r"[0-9a-f]{8}-[A-Za-z0-9._-]+", name), name
    assert name[9:] == kept and name != inbox_name(sent)  # a new prefix each time


def test_sizes_read_as_people_say_them() -> None:
    assert [size(n) for n in (10, 2048, 3 * 1024 * 1024)] == [
        "10 bytes", "2.0 KiB", "3.0 MiB"]  # fmt: skip


def test_the_prompt_names_the_file_and_where_it_is_or_why_not() -> None:
    saved = Attachment("m.image", 'a"b.png', "image/png", 10, "mxc://h/x",
                       saved="/workspace/group/inbox/0123abcd-a_b.png")  # fmt: skip
    refused = Attachment("m.file", "big.zip", "application/zip", 9, "mxc://h/y",
                         refused="too large")  # fmt: skip
    shown = build_prompt(
        [PromptMessage("$1", "@a:h", "A", 0, "look", attachment=saved),
         PromptMessage("$2", "@a:h", "A", 0, "and", attachment=refused)],
        ZoneInfo("UTC"),
    )  # fmt: skip
    assert (
        '<attachment kind="image" name="a&quot;b.png" type="image/png" size="10 bytes" '
        'path="/workspace/group/inbox/0123abcd-a_b.png"/>' in shown
    ), shown
    assert 'name="big.zip"' in shown and 'not-received="too large"/>' in shown, shown


def test_an_images_stated_size_in_pixels_is_kept() -> None:
    image = attachment_of({"msgtype": "m.image", "body": "a.png", "url": "mxc://hs/x",
                           "info": {"mimetype": "image/png", "w": 9000, "h": True}})  # fmt: skip
    assert image is not None and (image.width, image.height) == (9000, None)


def test_the_prompt_says_why_an_image_in_the_inbox_is_not_shown() -> None:
    path = "/workspace/group/inbox/0123abcd-a.heic"
    saved = Attachment("m.image", "a.heic", "image/heic", 10, "mxc://h/x", saved=path,
                       not_shown="no <HEIC>")  # fmt: skip
    shown = build_prompt([PromptMessage("$1", "@a:h", "A", 0, "look", attachment=saved)],
                         ZoneInfo("UTC"))  # fmt: skip
    assert f'path="{path}" image-not-shown="no &lt;HEIC&gt;"/>' in shown, shown


PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 100
UNSCALED = "; images are not scaled here (image_scaler_python is not set)"


async def no_unit(group: str, argv: Sequence[str], stdin: bytes) -> RunResult:
    raise AssertionError("no tool unit runs for an image sent as it is")


@pytest.mark.parametrize(
    ("mimetype", "data", "pixels", "why"),
    [
        ("image/png", PNG, (800, 600), None),
        ("image/jpeg", PNG, None, "it is not the image/jpeg image its type says"),
        ("image/heic", PNG, None, "the model does not take image/heic images" + UNSCALED),
        ("image/png", PNG, (8001, 10), "more than 8000 pixels a side" + UNSCALED),
        ("image/png", PNG + b"\0" * MAX_IMAGE_BYTES, None,
         f"too large to show ({size(len(PNG) + MAX_IMAGE_BYTES)}; the model takes "
         f"{size(MAX_IMAGE_BYTES)})" + UNSCALED),
    ],
    ids=["png", "not-what-it-says", "heic", "too-wide", "too-large"],
)  # fmt: skip
async def test_without_a_scaler_an_image_goes_as_sent_only_if_the_model_takes_it(
    mimetype: str, data: bytes, pixels: tuple[int, int] | None, why: str | None
) -> None:
    async def download(attachment: Attachment) -> bytes:
        return data

    width, height = pixels or (None, None)
    sent = Attachment("m.image", "a", mimetype, len(data), "mxc://h/x", width=width,
                      height=height, saved="/workspace/group/inbox/0123abcd-a")  # fmt: skip
    inbox = Inbox(download, no_unit, MAX_IMAGE_BYTES * 2)
    if why is None:
        assert await inbox.image("alpha", sent) == Image(mimetype, data)
    else:
        with pytest.raises(NotShown) as raised:
            await inbox.image("alpha", sent)
        assert str(raised.value) == why
