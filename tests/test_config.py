"""The configuration gate: good files parse to the right records, bad ones are refused
with the exact key and a reason, and secrets never leak."""

from __future__ import annotations

import copy
import json
import pickle
import traceback
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from nanoclaw.host.config import (
    Config,
    ConfigError,
    GroupConfig,
    MatrixConfig,
    ModelConfig,
    check_secrets,
    load_config,
    parse_config,
    validate_group,
)
from nanoclaw.host.secret_ref import SecretRef

EXAMPLE = Path(__file__).resolve().parent.parent / "units" / "config.example.toml"
SECRET = "syt_s3cret-TOKEN-value"
ROOM_V12 = "!" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0_-x"  # 43 base64url chars

MINIMAL_TOML = """\
[matrix]
homeserver = "https://matrix.example.org"
user_id = "@bot:example.org"
access_token_file = "/run/keys/matrix-token"
owners = ["@me:example.org"]
"""

FULL_TOML = """\
data_dir = "/srv/nanoclaw"
timezone = "Europe/Berlin"
assistant_name = "Bob"
max_concurrent_runs = 3
idle_timeout_seconds = 600
max_prompt_messages = 20
log_level = "debug"

[matrix]
homeserver = "https://matrix.example.org/"
user_id = "@bot:example.org"
access_token_credential = "matrix-token"
owners = ["@me:example.org", "@you:example.org"]
encryption = false

[model]
name = "claude-sonnet-4-5"
base_url = "http://127.0.0.1:9000/"
api_key_file = "/run/keys/anthropic"
max_attempts = 3
retry_base_seconds = 0.5

[groups.main]
room_id = "!main:example.org"
main = true

[groups.family]
room_id = "!family:example.org"
trigger = "hey bob"
requires_trigger = false
allowed_senders = ["@me:example.org", "@kid:example.org"]
model = "claude-opus-4-1"
"""

FULL_JSON: dict[str, Any] = {
    "data_dir": "/srv/nanoclaw",
    "timezone": "Europe/Berlin",
    "assistant_name": "Bob",
    "max_concurrent_runs": 3,
    "idle_timeout_seconds": 600.0,
    "max_prompt_messages": 20,
    "log_level": "debug",
    "matrix": {
        "homeserver": "https://matrix.example.org/",
        "user_id": "@bot:example.org",
        "access_token_credential": "matrix-token",
        "owners": ["@me:example.org", "@you:example.org"],
        "encryption": False,
    },
    "model": {
        "name": "claude-sonnet-4-5",
        "base_url": "http://127.0.0.1:9000/",
        "api_key_file": "/run/keys/anthropic",
        "max_attempts": 3,
        "retry_base_seconds": 0.5,
    },
    "groups": {
        "main": {"room_id": "!main:example.org", "main": True},
        "family": {
            "room_id": "!family:example.org",
            "trigger": "hey bob",
            "requires_trigger": False,
            "allowed_senders": ["@me:example.org", "@kid:example.org"],
            "model": "claude-opus-4-1",
        },
    },
}


def valid() -> dict[str, Any]:
    """A valid config with a main and a non-main group, to break one key at a time."""
    return {
        "matrix": {
            "homeserver": "https://matrix.example.org",
            "user_id": "@bot:example.org",
            "access_token_file": "/run/keys/matrix-token",
            "owners": ["@me:example.org"],
        },
        "model": {},
        "groups": {
            "main": {"room_id": "!main:example.org", "main": True},
            "family": {"room_id": "!family:example.org"},
        },
    }


DROP = object()


def edited(dotted: str | tuple[str, ...], value: Any) -> dict[str, Any]:
    """valid() with the value at `dotted` ("a.b.c" or a tuple of keys) replaced, or removed
    when DROP."""
    data = valid()
    *parents, last = dotted.split(".") if isinstance(dotted, str) else dotted
    table = data
    for name in parents:
        table = table[name]
    if value is DROP:
        del table[last]
    else:
        table[last] = copy.deepcopy(value)
    return data


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def refused(data: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value


# --- good files ---------------------------------------------------------------------------


def test_minimal_file_gets_every_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "config.toml", MINIMAL_TOML))
    assert config == Config(
        data_dir=Path("/var/lib/nanoclaw"),
        timezone=ZoneInfo("UTC"),
        assistant_name="Andy",
        max_concurrent_runs=5,
        idle_timeout_seconds=1800.0,
        max_prompt_messages=50,
        log_level="info",
        matrix=MatrixConfig(
            homeserver="https://matrix.example.org",
            user_id="@bot:example.org",
            access_token=SecretRef(
                "matrix.access_token_file", Path("/run/keys/matrix-token"), None
            ),
            owners=("@me:example.org",),
            encryption=True,
        ),
        model=ModelConfig(
            name=None,
            base_url=None,
            api_key=None,
            max_attempts=5,
            retry_base_seconds=5.0,
            run_timeout_seconds=900.0,
        ),
        groups=(),
    )
    assert config.main_group is None
    assert config.group_for_room("!main:example.org") is None
    assert isinstance(config.idle_timeout_seconds, float)


def test_full_file_in_toml_and_json_gives_the_same_config(tmp_path: Path) -> None:
    from_toml = load_config(write(tmp_path, "config.toml", FULL_TOML))
    from_json = load_config(write(tmp_path, "config.json", json.dumps(FULL_JSON)))
    assert from_toml == from_json
    assert from_toml == Config(
        data_dir=Path("/srv/nanoclaw"),
        timezone=ZoneInfo("Europe/Berlin"),
        assistant_name="Bob",
        max_concurrent_runs=3,
        idle_timeout_seconds=600.0,
        max_prompt_messages=20,
        log_level="debug",
        matrix=MatrixConfig(
            homeserver="https://matrix.example.org",  # trailing slash dropped
            user_id="@bot:example.org",
            access_token=SecretRef("matrix.access_token_credential", None, "matrix-token"),
            owners=("@me:example.org", "@you:example.org"),
            encryption=False,
        ),
        model=ModelConfig(
            name="claude-sonnet-4-5",
            base_url="http://127.0.0.1:9000",
            api_key=SecretRef("model.api_key_file", Path("/run/keys/anthropic"), None),
            max_attempts=3,
            retry_base_seconds=0.5,
            run_timeout_seconds=900.0,
        ),
        groups=(
            GroupConfig(
                folder="main",
                room_id="!main:example.org",
                main=True,
                trigger="@Bob",
                requires_trigger=False,
                allowed_senders=(),
                model=None,
            ),
            GroupConfig(
                folder="family",
                room_id="!family:example.org",
                main=False,
                trigger="hey bob",
                requires_trigger=False,
                allowed_senders=("@me:example.org", "@kid:example.org"),
                model="claude-opus-4-1",
            ),
        ),
    )
    assert from_toml.main_group == from_toml.groups[0]
    assert from_toml.group_for_room("!family:example.org") == from_toml.groups[1]
    assert from_toml.group_for_room("!other:example.org") is None


def test_json_suffix_is_case_insensitive(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "config.JSON", json.dumps(FULL_JSON)))
    assert config.assistant_name == "Bob"


def test_group_defaults_depend_on_main() -> None:
    config = parse_config(valid())
    main, family = config.groups
    assert (main.main, main.requires_trigger, main.trigger) == (True, False, "@Andy")
    assert (family.main, family.requires_trigger, family.trigger) == (False, True, "@Andy")
    assert main.allowed_senders == family.allowed_senders == ()
    assert main.model is None


def test_trigger_defaults_to_the_assistant_name() -> None:
    data = valid()
    data["assistant_name"] = "Jarvis"
    assert [g.trigger for g in parse_config(data).groups] == ["@Jarvis", "@Jarvis"]


def test_requires_trigger_can_be_overridden_either_way() -> None:
    data = valid()
    data["groups"]["main"]["requires_trigger"] = True
    data["groups"]["family"]["requires_trigger"] = False
    main, family = parse_config(data).groups
    assert main.requires_trigger and not family.requires_trigger


OWNERS = ("@me:example.org", "@you:example.org")


def group(main: bool, allowed: tuple[str, ...]) -> GroupConfig:
    return GroupConfig("g", "!g:example.org", main, "@Andy", not main, allowed, None)


@pytest.mark.parametrize(
    ("main", "allowed", "sender", "expected"),
    [
        # main group, empty list: the owners only
        (True, (), "@me:example.org", True),
        (True, (), "@you:example.org", True),
        (True, (), "@stranger:example.org", False),
        # other groups, empty list: anyone in the room
        (False, (), "@stranger:example.org", True),
        (False, (), "@me:example.org", True),
        # a list is exactly that list, in either kind of group
        (False, ("@kid:example.org",), "@kid:example.org", True),
        (False, ("@kid:example.org",), "@stranger:example.org", False),
        (False, ("@kid:example.org",), "@me:example.org", False),
        (True, ("@kid:example.org",), "@kid:example.org", True),
        (True, ("@kid:example.org",), "@me:example.org", False),
    ],
)
def test_sender_allowed(main: bool, allowed: tuple[str, ...], sender: str, expected: bool) -> None:
    assert group(main, allowed).sender_allowed(sender, OWNERS) is expected


def test_no_groups_means_no_main_group() -> None:
    data = valid()
    del data["groups"]
    assert parse_config(data).groups == ()
    data["groups"] = {}
    assert parse_config(data).main_group is None


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        # historical localparts (uppercase and more) still exist on servers
        ("matrix.owners", ["@Alice:example.org", "@a_b.c=d/e+f-g:example.org"]),
        ("matrix.user_id", "@bot:localhost:8008"),
        ("matrix.user_id", "@bot:127.0.0.1:8448"),
        ("matrix.user_id", "@bot:[::1]:8448"),
        ("groups.family.room_id", "!OpaQue123:localhost:8008"),
        ("groups.family.room_id", ROOM_V12),  # room version 12: no server part
        ("matrix.homeserver", "http://127.0.0.1:8008"),
        ("matrix.homeserver", "https://example.org/matrix"),
        ("matrix.access_token_credential", "matrix.token-1_x"),
        ("timezone", "America/Argentina/Buenos_Aires"),
        ("assistant_name", "Ändy the 2nd"),
        ("assistant_name", "x" * 64),
        ("idle_timeout_seconds", 0.5),
        ("max_concurrent_runs", 64),
        ("max_prompt_messages", 1),
        ("max_prompt_messages", 500),
        ("model.max_attempts", 20),
        ("model.name", "anthropic/claude-3.5"),
        ("groups.family.trigger", "!bot"),
        ("groups.f", {"room_id": "!f:example.org"}),
        ("groups.0-x_y", {"room_id": "!f:example.org"}),
        ("groups." + "a" * 16, {"room_id": "!f:example.org"}),
    ],
)
def test_accepted_values(dotted: str, value: Any) -> None:
    data = edited(dotted, value)
    if dotted == "matrix.access_token_credential":
        del data["matrix"]["access_token_file"]
    parse_config(data)


# --- bad values -------------------------------------------------------------------------------

# Each case: (where to edit, the value to put there, the reason) and, when the error is
# reported at another key than the edited one, that key.
BAD: list[tuple[Any, ...]] = [
    # unknown keys, with a hint for near misses
    ("data_dri", "/x", "unknown key; did you mean data_dir? allowed here: data_dir, timezone,"),
    ("colour", "red", "unknown key; allowed here: data_dir, timezone,"),
    ("matrix.homeserver_url", "https://x.org", "unknown key; did you mean homeserver?"),
    ("matrix.password", "hunter2", "unknown key; allowed here: homeserver, user_id,"),
    ("model.api_key", "sk-x", "unknown key; did you mean api_key_file?"),
    ("groups.family.tigger", "@x", "unknown key; did you mean trigger?"),
    ("groups.main.owners", [], "unknown key; allowed here: room_id, main, trigger,"),
    # top level
    ("data_dir", "var/lib/nanoclaw", 'must be an absolute path, not string "var/lib/nanoclaw"'),
    ("data_dir", "", 'must be an absolute path, not string ""'),
    ("data_dir", 5, "must be an absolute path, not integer 5"),
    ("data_dir", "/var/lib/\x00x", "must be an absolute path"),
    ("timezone", "Mars/Olympus", "unknown time zone 'Mars/Olympus'; use an IANA name like"),
    ("timezone", "Europe", "unknown time zone 'Europe'"),
    ("timezone", "/etc/localtime", "unknown time zone"),
    ("timezone", "../etc/passwd", "unknown time zone"),
    ("timezone", "", 'must be an IANA time zone name like Europe/Berlin, not string ""'),
    ("timezone", 1, "must be an IANA time zone name like Europe/Berlin, not integer 1"),
    ("assistant_name", "", "must be 1 to 64 characters, without control characters, '<', '>'"),
    ("assistant_name", "x" * 65, "must be 1 to 64 characters"),
    ("assistant_name", "An<dy>", "must be 1 to 64 characters"),
    ("assistant_name", 'An"dy', "must be 1 to 64 characters"),
    ("assistant_name", "An\ndy", 'not string "An\\ndy"'),
    ("assistant_name", "An\x07dy", "must be 1 to 64 characters"),
    ("assistant_name", " Andy", "and without leading or trailing spaces"),
    ("assistant_name", ["Andy"], "not a list"),
    ("max_concurrent_runs", 0, "must be an integer from 1 to 64, not integer 0"),
    ("max_concurrent_runs", 65, "must be an integer from 1 to 64, not integer 65"),
    ("max_concurrent_runs", True, "must be an integer from 1 to 64, not boolean true"),
    ("max_concurrent_runs", 2.0, "must be an integer from 1 to 64, not float 2.0"),
    ("max_concurrent_runs", "5", 'must be an integer from 1 to 64, not string "5"'),
    ("idle_timeout_seconds", 0, "must be a number greater than 0, not integer 0"),
    ("idle_timeout_seconds", -1.5, "must be a number greater than 0, not float -1.5"),
    ("idle_timeout_seconds", True, "must be a number greater than 0, not boolean true"),
    ("idle_timeout_seconds", "1800", 'must be a number greater than 0, not string "1800"'),
    ("idle_timeout_seconds", float("inf"), "must be a number greater than 0, not float inf"),
    ("idle_timeout_seconds", float("nan"), "must be a number greater than 0, not float nan"),
    ("max_prompt_messages", 0, "must be an integer from 1 to 500, not integer 0"),
    ("max_prompt_messages", 501, "must be an integer from 1 to 500, not integer 501"),
    ("max_prompt_messages", False, "must be an integer from 1 to 500, not boolean false"),
    ("log_level", "INFO", 'must be one of debug, info, warning, error, not string "INFO"'),
    ("log_level", "verbose", "must be one of debug, info, warning, error"),
    # [matrix]
    ("matrix", DROP, "is required: add a [matrix] table"),
    ("matrix", "x", 'must be a table, not string "x"'),
    ("matrix.homeserver", DROP, "is required: an http:// or https:// URL with a host"),
    ("matrix.homeserver", "matrix.example.org", "must be an http:// or https:// URL with a host"),
    ("matrix.homeserver", "ftp://example.org", "must be an http:// or https:// URL"),
    ("matrix.homeserver", "https://", "must be an http:// or https:// URL"),
    ("matrix.homeserver", "https://exa mple.org", "must be an http:// or https:// URL"),
    ("matrix.homeserver", "https://example.org:99999", "must be an http:// or https:// URL"),
    ("matrix.homeserver", "http://[::1", "must be an http:// or https:// URL"),
    ("matrix.user_id", DROP, "is required: a Matrix user ID like @someone:example.org"),
    (
        "matrix.user_id",
        "bot",
        'must be a Matrix user ID like @someone:example.org, not string "bot"',
    ),
    ("matrix.user_id", "@bot", "must be a Matrix user ID"),
    ("matrix.user_id", "bot:example.org", "must be a Matrix user ID"),
    ("matrix.user_id", "@:example.org", "must be a Matrix user ID"),
    ("matrix.user_id", "@bot:", "must be a Matrix user ID"),
    ("matrix.user_id", "@b ot:example.org", "must be a Matrix user ID"),
    ("matrix.user_id", "@bot:exa_mple.org", "must be a Matrix user ID"),
    ("matrix.user_id", "@bot:example.org/x", "must be a Matrix user ID"),
    ("matrix.user_id", "!bot:example.org", "must be a Matrix user ID"),
    ("matrix.user_id", "@" + "b" * 243 + ":example.org", "must be a Matrix user ID"),
    (
        "matrix.access_token_file",
        DROP,
        "set exactly one of access_token_file or access_token_credential (neither is set)",
    ),
    (
        "matrix.access_token_credential",
        "tok",
        "set exactly one of access_token_file or access_token_credential (both are set)",
        "matrix.access_token_file",
    ),
    ("matrix.access_token_file", "run/keys/token", "must be an absolute path"),
    ("matrix.access_token_file", 1, "must be an absolute path, not integer 1"),
    ("matrix.access_token_credential", "../x", "must be a systemd credential name"),
    ("matrix.owners", DROP, "must list at least one Matrix user ID"),
    ("matrix.owners", [], "must list at least one Matrix user ID"),
    ("matrix.owners", "@me:example.org", "must be a list of Matrix user IDs, not string"),
    (
        "matrix.owners",
        ["@me:example.org", "me"],
        'must be a Matrix user ID like @someone:example.org, not string "me"',
        "matrix.owners[1]",
    ),
    ("matrix.owners", ["@me:example.org", 7], "not integer 7", "matrix.owners[1]"),
    (
        "matrix.owners",
        ["@me:example.org", "@you:example.org", "@me:example.org"],
        "@me:example.org is listed twice (also at [0])",
        "matrix.owners[2]",
    ),
    (
        "matrix.owners",
        ["@me:example.org", "@bot:example.org"],
        "must not be the bot's own user_id; owners are the people it serves",
        "matrix.owners[1]",
    ),
    ("matrix.encryption", "yes", 'must be true or false, not string "yes"'),
    ("matrix.encryption", 1, "must be true or false, not integer 1"),
    # [model]
    ("model", [], "must be a table, not a list"),
    ("model.name", "", "must be a model id like claude-sonnet-4-5, without spaces"),
    ("model.name", "claude sonnet", "must be a model id"),
    ("model.name", 4, "must be a model id like claude-sonnet-4-5, without spaces, not integer 4"),
    ("model.base_url", "api.anthropic.com", "must be an http:// or https:// URL"),
    ("model.api_key_file", "key", "must be an absolute path"),
    ("model.api_key_credential", "../key", "must be a systemd credential name: 1 to 64 letters"),
    ("model.api_key_credential", ".", "must be a systemd credential name"),
    ("model.api_key_credential", "..", "must be a systemd credential name"),
    ("model.api_key_credential", "a/b", "must be a systemd credential name"),
    ("model.api_key_credential", "k" * 65, "must be a systemd credential name"),
    ("model.api_key_credential", "", "must be a systemd credential name"),
    ("model.max_attempts", 0, "must be an integer from 1 to 20, not integer 0"),
    ("model.max_attempts", 21, "must be an integer from 1 to 20, not integer 21"),
    ("model.max_attempts", True, "must be an integer from 1 to 20, not boolean true"),
    ("model.retry_base_seconds", 0, "must be a number greater than 0, not integer 0"),
    ("model.retry_base_seconds", "5", 'must be a number greater than 0, not string "5"'),
    ("model.retry_base_seconds", False, "must be a number greater than 0, not boolean false"),
    ("model.run_timeout_seconds", -1, "must be a number greater than 0, not integer -1"),
    ("sandbox_socket", "run/sock", 'must be an absolute path, not string "run/sock"'),
    ("tool_timeout_seconds", 0, "must be an integer from 1 to 86400, not integer 0"),
    # [groups]
    ("groups", "main", 'must be a table of groups by folder name, not string "main"'),
    ("groups.family", "!family:example.org", 'must be a table, not string "!family:example.org"'),
    (
        "groups.Family",
        {"room_id": "!F:example.org"},
        "folder name must match ^[a-z0-9][a-z0-9_-]{0,15}$ (lowercase letters, digits, '_' or '-')",
    ),
    ("groups._x", {"room_id": "!x:example.org"}, "folder name must match"),
    ("groups.-x", {"room_id": "!x:example.org"}, "folder name must match"),
    ("groups." + "a" * 18, {"room_id": "!x:example.org"}, "folder name must match"),
    (("groups", "fa.mily"), {"room_id": "!x:ex.org"}, "folder name must", 'groups."fa.mily"'),
    (("groups", "fa mily"), {"room_id": "!x:ex.org"}, "folder name must", 'groups."fa mily"'),
    (("groups", "x\n"), {"room_id": "!x:ex.org"}, "folder name must", 'groups."x\\n"'),
    (
        "groups.global",
        {"room_id": "!g:example.org"},
        "folder name 'global' is reserved (the memory all groups share)",
    ),
    ("groups.family.room_id", DROP, "is required: a Matrix room ID like !abcdef:example.org"),
    ("groups.family.room_id", "family:example.org", "must be a Matrix room ID"),
    (
        "groups.family.room_id",
        "!family",
        'must be a Matrix room ID like !abcdef:example.org, not string "!family"',
    ),
    ("groups.family.room_id", "#family:example.org", "must be a Matrix room ID"),
    ("groups.family.room_id", "!fam ily:example.org", "must be a Matrix room ID"),
    ("groups.family.room_id", ROOM_V12[:-1], "must be a Matrix room ID"),
    (
        "groups.family.room_id",
        12,
        "must be a Matrix room ID like !abcdef:example.org, not integer 12",
    ),
    ("groups.family.main", "no", 'must be true or false, not string "no"'),
    ("groups.family.trigger", "", 'must be a non-empty text on one line, like "@Andy"'),
    ("groups.family.trigger", "   ", "must be a non-empty text on one line"),
    ("groups.family.trigger", "@Andy\nhi", "must be a non-empty text on one line"),
    ("groups.family.trigger", "@Andy\u2028", "must be a non-empty text on one line"),
    ("groups.family.requires_trigger", 1, "must be true or false, not integer 1"),
    ("groups.family.allowed_senders", "@me:x.org", "must be a list of Matrix user IDs"),
    (
        "groups.family.allowed_senders",
        ["@me:example.org", "@bad"],
        "must be a Matrix user ID",
        "groups.family.allowed_senders[1]",
    ),
    (
        "groups.family.allowed_senders",
        ["@a:x.org", "@a:x.org"],
        "@a:x.org is listed twice (also at [0])",
        "groups.family.allowed_senders[1]",
    ),
    ("groups.family.model", "", "must be a model id"),
    ("groups.family.model", "opus please", "must be a model id"),
    # rules between groups
    (
        "groups.family.room_id",
        "!main:example.org",
        "room !main:example.org already belongs to group main; a room can be only one group",
    ),
    ("groups.family.main", True, "only one group may be main, and main already is"),
    ("groups.main.main", False, "one group must have main = true", "groups"),
    ("groups.main.main", DROP, "one group must have main = true", "groups"),
    # JSON nulls
    ("timezone", None, "must not be null; leave the key out instead"),
    ("model.name", None, "must not be null; leave the key out instead"),
    ("groups.family.model", None, "must not be null; leave the key out instead"),
]


@pytest.mark.parametrize("case", BAD, ids=lambda case: f"{case[0]}={case[1]!r}"[:60])
def test_bad_value_is_refused_naming_key_and_reason(case: tuple[Any, ...]) -> None:
    dotted, value, reason, *elsewhere = case
    key = elsewhere[0] if elsewhere else dotted
    err = refused(edited(dotted, value))
    assert err.key == key
    assert reason in err.reason
    assert str(err) == f"{key}: {err.reason}"


def test_missing_matrix_table_in_minimal_file_message() -> None:
    err = refused({})
    assert str(err) == "matrix: is required: add a [matrix] table"


def test_both_and_neither_api_key_rules() -> None:
    data = valid()
    data["model"] = {"api_key_file": "/k", "api_key_credential": "k"}
    assert str(refused(data)) == (
        "model.api_key_file: set at most one of api_key_file or api_key_credential (both are set)"
    )
    data["model"] = {}
    assert parse_config(data).model.api_key is None


@pytest.mark.parametrize("token", ["oauth_token_file", "oauth_token_credential"])
def test_a_subscription_token_instead_of_an_api_key(token: str) -> None:
    def named(key: str) -> str:
        return "/run/keys/claude" if key.endswith("_file") else "claude"

    data = valid()
    data["model"] = {token: named(token)}
    model = parse_config(data).model
    assert model.api_key is None
    assert model.oauth_token is not None and model.oauth_token.key == f"model.{token}"
    for key in ("api_key_file", "api_key_credential"):
        data["model"] = {token: named(token), key: named(key)}
        assert str(refused(data)) == (
            f"model.{token}: set an API key or a subscription token, not both "
            f"(model.{key} is set too)"
        )


def test_room_clash_is_reported_before_a_second_main() -> None:
    data = valid()
    data["groups"]["zz"] = {"room_id": "!family:example.org", "main": True}
    assert refused(data).key == "groups.zz.room_id"
    data["groups"]["zz"]["room_id"] = "!zz:example.org"
    assert refused(data).key == "groups.zz.main"


# --- validate_group, as the register_group tool uses it --------------------------------------


def test_validate_group_for_a_runtime_group() -> None:
    group = validate_group(
        "ops", {"room_id": "!ops:example.org", "requires_trigger": False, "main": False}, "Andy"
    )
    assert group == GroupConfig("ops", "!ops:example.org", False, "@Andy", False, (), None)


@pytest.mark.parametrize(
    ("folder", "data", "key"),
    [
        ("ops", {"room_id": "nope"}, "groups.ops.room_id"),
        ("ops", {"room_id": "!ops:example.org", "shell": True}, "groups.ops.shell"),
        ("Ops", {"room_id": "!ops:example.org"}, "groups.Ops"),
        ("global", {"room_id": "!ops:example.org"}, "groups.global"),
        ("../etc", {"room_id": "!ops:example.org"}, 'groups."../etc"'),
        ("ops", ["!ops:example.org"], "groups.ops"),
    ],
)
def test_validate_group_errors_are_keyed_under_groups(folder: str, data: Any, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_group(folder, data, "Andy")
    assert caught.value.key == key


# --- files ---------------------------------------------------------------------------------------


def test_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "config.toml", MINIMAL_TOML + "encryption = \n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == str(path)
    assert caught.value.reason.startswith("invalid TOML: ")
    assert "line 6" in caught.value.reason


def test_toml_duplicate_key_is_a_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "config.toml", 'log_level = "info"\nlog_level = "debug"\n')
    with pytest.raises(ConfigError, match=r"invalid TOML: .*line 2"):
        load_config(path)


def test_json_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "config.json", '{\n  "log_level": "info",\n}\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == str(path)
    assert caught.value.reason.startswith("invalid JSON: ")
    assert "line 3" in caught.value.reason


def test_json_duplicate_key_is_refused(tmp_path: Path) -> None:
    text = json.dumps(FULL_JSON)[:-1] + ', "log_level": "error"}'
    path = write(tmp_path, "config.json", text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.reason == "invalid JSON: duplicate key 'log_level'"


def test_json_must_be_an_object(tmp_path: Path) -> None:
    path = write(tmp_path, "config.json", "[1, 2]")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: must hold a JSON object, not a list"


def test_json_values_are_validated_like_toml(tmp_path: Path) -> None:
    data = copy.deepcopy(FULL_JSON)
    data["max_prompt_messages"] = True
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "config.json", json.dumps(data)))
    assert caught.value.key == "max_prompt_messages"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: cannot read the file: No such file or directory"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.key == str(tmp_path)
    assert caught.value.reason == "cannot read the file: Is a directory"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, "config.toml", b'log_level = "\xff"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: not UTF-8 text (bad byte at offset 13)"


# --- secrets -------------------------------------------------------------------------------


def token_ref(tmp_path: Path, content: str | bytes | None) -> SecretRef:
    path = tmp_path / "token"
    if content is not None:
        write(tmp_path, "token", content)
    return SecretRef("matrix.access_token_file", path, None)


def test_secret_from_file_is_stripped(tmp_path: Path) -> None:
    ref = token_ref(tmp_path, f"  {SECRET}\n")
    assert ref.read({}) == SECRET
    assert ref.path({"CREDENTIALS_DIRECTORY": "/elsewhere"}) == tmp_path / "token"


def test_secret_from_systemd_credential(tmp_path: Path) -> None:
    write(tmp_path, "matrix-token", SECRET + "\n")
    ref = SecretRef("matrix.access_token_credential", None, "matrix-token")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert ref.path(env) == tmp_path / "matrix-token"
    assert ref.read(env) == SECRET


@pytest.mark.parametrize("env", [{}, {"CREDENTIALS_DIRECTORY": ""}])
def test_credential_without_credentials_directory(env: dict[str, str]) -> None:
    ref = SecretRef("matrix.access_token_credential", None, "matrix-token")
    with pytest.raises(ConfigError) as caught:
        ref.read(env)
    assert caught.value.key == "matrix.access_token_credential"
    assert "'matrix-token' is read from $CREDENTIALS_DIRECTORY, which is not set" in (
        caught.value.reason
    )


def test_credential_missing_from_credentials_directory(tmp_path: Path) -> None:
    ref = SecretRef("model.api_key_credential", None, "anthropic-key")
    with pytest.raises(ConfigError) as caught:
        ref.read({"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert str(caught.value) == (
        f"model.api_key_credential: cannot read secret {tmp_path / 'anthropic-key'}: "
        "No such file or directory"
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "cannot read secret {path}: No such file or directory"),
        ("", "secret {path} is empty"),
        (" \n\t\n", "secret {path} is empty"),
        (SECRET.encode() + b"\xff\xfe", "secret {path} is not UTF-8 text"),
    ],
)
def test_unusable_secret_file(tmp_path: Path, content: str | bytes | None, reason: str) -> None:
    ref = token_ref(tmp_path, content)
    with pytest.raises(ConfigError) as caught:
        ref.read({})
    assert caught.value.key == "matrix.access_token_file"
    assert caught.value.reason == reason.format(path=tmp_path / "token")
    assert SECRET not in "".join(traceback.format_exception(caught.value))


def test_unreadable_secret_file(tmp_path: Path) -> None:
    ref = SecretRef("matrix.access_token_file", tmp_path, None)  # a directory
    with pytest.raises(ConfigError) as caught:
        ref.read({})
    assert caught.value.reason == f"cannot read secret {tmp_path}: Is a directory"


def test_secret_never_in_repr_or_errors(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    write(secrets, "matrix-token", SECRET)
    data = valid()
    data["matrix"]["access_token_file"] = str(secrets / "matrix-token")
    data["model"]["api_key_credential"] = "anthropic-key"
    config = parse_config(data)
    assert config.matrix.access_token.read({}) == SECRET
    assert SECRET not in repr(config)
    assert SECRET not in str(config)
    assert repr(config.matrix.access_token) == (
        f"SecretRef(matrix.access_token_file={str(secrets / 'matrix-token')!r})"
    )
    assert repr(config.model.api_key) == "SecretRef(model.api_key_credential='anthropic-key')"
    with pytest.raises(ConfigError) as caught:
        check_secrets(config, {"CREDENTIALS_DIRECTORY": str(secrets)})
    assert caught.value.key == "model.api_key_credential"
    assert SECRET not in "".join(traceback.format_exception(caught.value))


def test_check_secrets_reads_every_secret(tmp_path: Path) -> None:
    write(tmp_path, "matrix-token", SECRET)
    data = valid()
    del data["matrix"]["access_token_file"]
    data["matrix"]["access_token_credential"] = "matrix-token"
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    check_secrets(parse_config(data), env)  # no model key configured: only the token

    data["model"]["api_key_file"] = str(tmp_path / "anthropic-key")
    with pytest.raises(ConfigError) as caught:
        check_secrets(parse_config(data), env)
    assert caught.value.key == "model.api_key_file"

    write(tmp_path, "anthropic-key", "sk-ant-test")
    check_secrets(parse_config(data), env)

    del data["model"]["api_key_file"]
    data["model"]["oauth_token_credential"] = "claude-token"
    with pytest.raises(ConfigError) as caught:
        check_secrets(parse_config(data), env)
    assert caught.value.key == "model.oauth_token_credential"
    write(tmp_path, "claude-token", "sk-ant-oat01-test")
    check_secrets(parse_config(data), env)

    with pytest.raises(ConfigError) as caught:
        check_secrets(parse_config(data), {})
    assert caught.value.key == "matrix.access_token_credential"


# --- the error type and the example ----------------------------------------------------------


def test_config_error_shape() -> None:
    err = ConfigError("matrix.owners[1]", "must be a Matrix user ID")
    assert (err.key, err.reason) == ("matrix.owners[1]", "must be a Matrix user ID")
    assert str(err) == "matrix.owners[1]: must be a Matrix user ID"
    copy_ = pickle.loads(pickle.dumps(err))
    assert (copy_.key, copy_.reason, str(copy_)) == (err.key, err.reason, str(err))


def test_records_are_frozen() -> None:
    config = parse_config(valid())
    with pytest.raises(AttributeError):
        config.log_level = "debug"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        config.groups[0].main = False  # type: ignore[misc]


def test_example_file_is_valid(tmp_path: Path) -> None:
    config = load_config(EXAMPLE)
    assert [(g.folder, g.main, g.requires_trigger) for g in config.groups] == [
        ("main", True, False),
        ("family", False, True),
    ]
    main, family = config.groups
    assert config.main_group == main
    assert main.sender_allowed(config.matrix.owners[0], config.matrix.owners)
    assert not main.sender_allowed("@partner:example.org", config.matrix.owners)
    assert family.trigger == "@Andy"
    assert family.sender_allowed("@partner:example.org", config.matrix.owners)
    assert not family.sender_allowed("@stranger:example.org", config.matrix.owners)
    write(tmp_path, "matrix-token", "syt_token")
    write(tmp_path, "anthropic-key", "sk-ant-key")
    check_secrets(config, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
