"""The Quickstart's config: the model credential it is given, key or subscription token."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from nanoclaw.appliance.homeserver import Account
from nanoclaw.appliance.machine_files import ModelSettings, model_settings, render_config
from nanoclaw.appliance.quickstart import QuickstartState
from nanoclaw.host.config import parse_config

STATE = QuickstartState(
    "http://127.0.0.1:8008",
    Account("@owner:localhost", "owner-token", "OWNER", "pw"),
    Account("@nanoclaw:localhost", "bot-token", "BOT", "pw"),
    {"main": "!main:localhost", "example": "!example:localhost"},
)
TOKEN = "sk-ant-oat01-" + "t" * 40
KEY = "sk-ant-api03-" + "k" * 40


@pytest.mark.parametrize(
    ("environment", "credential", "subscription"),
    [
        ({"ANTHROPIC_API_KEY": KEY}, KEY, False),
        ({"CLAUDE_CODE_OAUTH_TOKEN": TOKEN}, TOKEN, True),
        ({"ANTHROPIC_API_KEY": KEY, "CLAUDE_CODE_OAUTH_TOKEN": TOKEN}, KEY, False),
    ],
    ids=["key", "token", "key-first"],
)
def test_the_credential_given_is_named_as_what_it_is(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    environment: dict[str, str],
    credential: str,
    subscription: bool,
) -> None:
    for name in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    model = model_settings(tmp_path, None, None)
    assert (model.api_key, model.subscription) == (credential, subscription)
    config = parse_config(tomllib.loads(render_config(STATE, model)))
    # The credential file is the same either way; the config says which it holds.
    named = config.model.oauth_token if subscription else config.model.api_key
    other = config.model.api_key if subscription else config.model.oauth_token
    assert named is not None and named.credential == "anthropic-key" and other is None


def test_a_token_in_the_key_file_is_a_token(tmp_path: Path) -> None:
    given = tmp_path / "given"
    given.write_text(TOKEN + "\n")
    assert model_settings(tmp_path, given, None).subscription
    assert not ModelSettings(None, None).subscription
