"""The configuration file, parsed and validated once at start into frozen records.

The file is TOML, or JSON when its name ends in `.json` (the NixOS module generates JSON).
Everything is checked before the host does anything: unknown keys (typos), types, ranges,
Matrix identifiers and the rules between groups. A ConfigError names the dotted key and
says what is wrong and what is allowed. Secrets are never in the file: a SecretRef names a
file or a systemd credential, and the value is read only when asked for.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from nanoclaw.broker.config_reader import (
    CONTROL_CHARACTERS,
    Table,
    describe,
    key_part,
    parse_json_object,
    read_text,
)
from nanoclaw.broker.config_reader import ConfigError as ConfigError
from nanoclaw.broker.policy import GROUP_PATTERN, RESERVED_GROUPS
from nanoclaw.host.schedule import Schedule, ScheduleError, parse_schedule

# A group's folder is its name in the sandbox policy: the same rule, and the same reserved names.
FOLDER_PATTERN = f"^{GROUP_PATTERN}$"
RESERVED_FOLDERS = RESERVED_GROUPS
LOG_LEVELS = ("debug", "info", "warning", "error")

# A server name per the spec grammar: a DNS name or IPv4 address, or an [IPv6] literal,
# with an optional port.
_SERVER = r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,255})(?::[0-9]{1,5})?"
# Localparts may use the spec's historical set (printable ASCII except ':'), not only
# today's [a-z0-9._=/+-]: servers still have such users (e.g. @Alice:example.org), and an
# owner or sender we refused here could never be served.
_USER_ID = re.compile(rf"@[!-9;-~]+:{_SERVER}")
# Room IDs are !opaque:server, or from room version 12 on a bare ! and the create event's
# hash (43 characters of unpadded URL-safe base64) with no server.
_ROOM_ID = re.compile(rf"!(?:[!-9;-~]+:{_SERVER}|[A-Za-z0-9_-]{{43}})")
_MAX_ID_LENGTH = 255  # the spec's limit for user and room IDs
_CREDENTIAL = re.compile(r"[A-Za-z0-9_.-]{1,64}")

_TOP_KEYS = (
    "data_dir",
    "timezone",
    "assistant_name",
    "max_concurrent_runs",
    "idle_timeout_seconds",
    "max_prompt_messages",
    "log_level",
    "sandbox_socket",
    "tool_timeout_seconds",
    "matrix",
    "model",
    "groups",
    "tasks",
)
_MATRIX_KEYS = (
    "homeserver",
    "user_id",
    "access_token_file",
    "access_token_credential",
    "owners",
    "encryption",
)
_MODEL_KEYS = (
    "name",
    "base_url",
    "api_key_file",
    "api_key_credential",
    "max_attempts",
    "retry_base_seconds",
    "run_timeout_seconds",
)
_TASK_KEYS = ("group", "prompt", "cron", "every", "at", "context")
_TASK_SCHEDULE_KEYS = {"cron": "cron", "every": "interval", "at": "once"}
_TASK_NAME = r"^[a-z][a-z0-9_-]{0,63}$"
_GROUP_KEYS = (
    "room_id",
    "main",
    "trigger",
    "requires_trigger",
    "allowed_senders",
    "model",
    "base_url",
)

_USER_WHAT = "a Matrix user ID like @someone:example.org"
_ROOM_WHAT = "a Matrix room ID like !abcdef:example.org"
_URL_WHAT = "an http:// or https:// URL with a host, like https://matrix.example.org"
_PATH_WHAT = "an absolute path"
_CREDENTIAL_WHAT = (
    "a systemd credential name: 1 to 64 letters, digits, '_', '.' or '-', not '.' or '..'"
)
_MODEL_WHAT = "a model id like claude-sonnet-4-5, without spaces"


@dataclass(frozen=True)
class SecretRef:
    """Where a secret lives: a file, or a systemd credential. The value is never kept."""

    key: str  # the config key it came from, for error messages
    file: Path | None
    credential: str | None

    def path(self, env: Mapping[str, str] = os.environ) -> Path:
        if self.file is not None:
            return self.file
        assert self.credential is not None  # the parser sets exactly one of the two
        directory = env.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ConfigError(
                self.key,
                f"systemd credential {self.credential!r} is read from $CREDENTIALS_DIRECTORY, "
                "which is not set (give the unit LoadCredential=, or name a file instead)",
            )
        return Path(directory) / self.credential

    def read(self, env: Mapping[str, str] = os.environ) -> str:
        path = self.path(env)
        # `from None` everywhere: a decode error's context would carry the secret's bytes.
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                self.key, f"cannot read secret {path}: {exc.strerror or type(exc).__name__}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(self.key, f"secret {path} is not UTF-8 text") from None
        if not value:
            raise ConfigError(self.key, f"secret {path} is empty")
        return value

    def __repr__(self) -> str:
        return f"SecretRef({self.key}={str(self.file or self.credential)!r})"


@dataclass(frozen=True)
class MatrixConfig:
    homeserver: str
    user_id: str
    access_token: SecretRef
    owners: tuple[str, ...]
    encryption: bool


@dataclass(frozen=True)
class ModelConfig:
    name: str | None  # None: the CLI's default model
    base_url: str | None
    api_key: SecretRef | None
    max_attempts: int
    retry_base_seconds: float
    run_timeout_seconds: float  # one agent turn; a CLI that hangs is killed after this


@dataclass(frozen=True)
class GroupConfig:
    folder: str
    room_id: str
    main: bool
    trigger: str
    requires_trigger: bool
    allowed_senders: tuple[str, ...]
    model: str | None
    base_url: str | None = None  # per-group model endpoint; overrides model.base_url

    def sender_allowed(self, sender: str, owners: tuple[str, ...]) -> bool:
        if self.allowed_senders:
            return sender in self.allowed_senders
        # An empty list opens an ordinary room to all its members, but the main room is
        # trusted (it may manage other groups), so there it means the owners only.
        return sender in owners if self.main else True


@dataclass(frozen=True)
class TaskConfig:
    """A task declared in the file; its name is its id, so a restart finds it again."""

    name: str
    group: str
    prompt: str
    schedule: Schedule
    context: str


@dataclass(frozen=True)
class Config:
    data_dir: Path
    timezone: ZoneInfo
    assistant_name: str
    max_concurrent_runs: int
    idle_timeout_seconds: float
    max_prompt_messages: int
    log_level: str
    matrix: MatrixConfig
    model: ModelConfig
    groups: tuple[GroupConfig, ...]
    # The broker's socket: when set, groups get the sandboxed tools (bash, read, ...).
    sandbox_socket: Path | None = None
    tool_timeout_seconds: int = 120
    tasks: tuple[TaskConfig, ...] = ()

    @property
    def main_group(self) -> GroupConfig | None:
        return next((g for g in self.groups if g.main), None)

    def group_for_room(self, room_id: str) -> GroupConfig | None:
        return next((g for g in self.groups if g.room_id == room_id), None)


def load_config(path: Path) -> Config:
    """Read, parse and validate the file at `path`: JSON if it ends in .json, else TOML."""
    text = read_text(path)
    if path.suffix.lower() == ".json":
        data = parse_json_object(text, path)
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:  # its message ends in "(at line N, column M)"
            raise ConfigError(str(path), f"invalid TOML: {exc}") from None
    return parse_config(data)


def parse_config(data: Mapping[str, Any]) -> Config:
    """Validate an already parsed file."""
    top = Table(data, "", _TOP_KEYS)
    assistant_name = (
        top.string(
            "assistant_name",
            "1 to 64 characters, without control characters, '<', '>' or '\"' "
            "and without leading or trailing spaces",
            _is_assistant_name,
        )
        or "Andy"
    )
    return Config(
        data_dir=Path(top.string("data_dir", _PATH_WHAT, _is_absolute) or "/var/lib/nanoclaw"),
        timezone=(timezone := _timezone(top)),
        assistant_name=assistant_name,
        max_concurrent_runs=top.integer("max_concurrent_runs", 5, 1, 64),
        idle_timeout_seconds=top.number("idle_timeout_seconds", 1800),
        max_prompt_messages=top.integer("max_prompt_messages", 50, 1, 500),
        log_level=top.string(
            "log_level", "one of " + ", ".join(LOG_LEVELS), LOG_LEVELS.__contains__
        )
        or "info",
        matrix=_matrix(top.table("matrix", _MATRIX_KEYS, required=True)),
        model=_model(top.table("model", _MODEL_KEYS, required=False)),
        groups=(groups := _groups(top, assistant_name)),
        sandbox_socket=_optional_path(top.string("sandbox_socket", _PATH_WHAT, _is_absolute)),
        tool_timeout_seconds=top.integer("tool_timeout_seconds", 120, 1, 86400),
        tasks=_tasks(top, groups, timezone),
    )


def _tasks(top: Table, groups: tuple[GroupConfig, ...], tz: ZoneInfo) -> tuple[TaskConfig, ...]:
    tables = top.data.get("tasks", {})
    if not isinstance(tables, Mapping):
        raise ConfigError("tasks", f"must be a table of tasks by name, not {describe(tables)}")
    tasks = []
    for name, data in tables.items():
        key = "tasks." + key_part(name)
        if not re.fullmatch(_TASK_NAME, name):
            raise ConfigError(
                key,
                f"task name must match {_TASK_NAME} (starting with a letter: numbers "
                "are the ids of tasks the agent schedules)",
            )
        table = Table(data, key, _TASK_KEYS)
        group = table.require("group", "the folder of a group in [groups]", bool)
        if not any(g.folder == group for g in groups):
            known = ", ".join(g.folder for g in groups) or "none"
            raise ConfigError(table.at("group"), f"no group {group!r} here; groups: {known}")
        kinds = [k for k in _TASK_SCHEDULE_KEYS if k in table.data]
        if len(kinds) != 1:
            raise ConfigError(
                key,
                "set exactly one of cron, every or at "
                + (f"({', '.join(kinds)} are set)" if kinds else "(none is set)"),
            )
        value = table.require(kinds[0], "a string", lambda _: True)
        try:
            schedule = parse_schedule(_TASK_SCHEDULE_KEYS[kinds[0]], value, tz)
        except ScheduleError as exc:
            raise ConfigError(table.at(kinds[0]), str(exc)) from None
        tasks.append(
            TaskConfig(
                name=name,
                group=group,
                prompt=table.require("prompt", "the text the agent gets when it runs", _is_text),
                schedule=schedule,
                context=table.string(
                    "context", "group or isolated", ("group", "isolated").__contains__
                )
                or "isolated",
            )
        )
    return tuple(tasks)


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value is not None else None


def validate_group(folder: str, data: Mapping[str, Any], assistant_name: str) -> GroupConfig:
    """One group, from the file or from the agent's register_group tool.

    Keys in errors start with groups.<folder>. Rules between groups (one main group, one
    group per room) are the caller's.
    """
    key = "groups." + key_part(folder)
    if not re.fullmatch(FOLDER_PATTERN, folder):
        raise ConfigError(
            key, f"folder name must match {FOLDER_PATTERN} (lowercase letters, digits, '_' or '-')"
        )
    if folder in RESERVED_FOLDERS:
        raise ConfigError(key, f"folder name {folder!r} is reserved (the memory all groups share)")
    table = Table(data, key, _GROUP_KEYS)
    main = table.flag("main", False)
    return GroupConfig(
        folder=folder,
        room_id=table.require("room_id", _ROOM_WHAT, _is_room_id),
        main=main,
        trigger=table.string("trigger", 'a non-empty text on one line, like "@Andy"', _is_line)
        or "@" + assistant_name,
        requires_trigger=table.flag("requires_trigger", not main),
        allowed_senders=_user_ids(table, "allowed_senders"),
        model=table.string("model", _MODEL_WHAT, _is_model_id),
        base_url=_endpoint(table),
    )


def _endpoint(table: Table) -> str | None:
    base_url = table.string("base_url", _URL_WHAT, _is_url)
    # A trailing slash would give the SDK's requests a double slash.
    return base_url.rstrip("/") if base_url else None


def check_secrets(config: Config, env: Mapping[str, str] = os.environ) -> None:
    """Read every configured secret once, so a missing one stops us before anything starts."""
    for secret in (config.matrix.access_token, config.model.api_key):
        if secret is not None:
            secret.read(env)


def _timezone(top: Table) -> ZoneInfo:
    name = top.string("timezone", "an IANA time zone name like Europe/Berlin", bool) or "UTC"
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory like "Europe"
        raise ConfigError(
            top.at("timezone"),
            f"unknown time zone {name!r}; use an IANA name like Europe/Berlin or UTC",
        ) from None


def _matrix(table: Table) -> MatrixConfig:
    user_id = table.require("user_id", _USER_WHAT, _is_user_id)
    owners = _user_ids(table, "owners")
    if not owners:
        raise ConfigError(
            table.at("owners"), "must list at least one Matrix user ID: the people the bot serves"
        )
    if user_id in owners:
        raise ConfigError(
            f"{table.at('owners')}[{owners.index(user_id)}]",
            "must not be the bot's own user_id; owners are the people it serves",
        )
    access_token = _secret(table, "access_token", required=True)
    assert access_token is not None  # required=True raises instead
    return MatrixConfig(
        homeserver=table.require("homeserver", _URL_WHAT, _is_url).rstrip("/"),
        user_id=user_id,
        access_token=access_token,
        owners=owners,
        encryption=table.flag("encryption", True),
    )


def _model(table: Table) -> ModelConfig:
    return ModelConfig(
        name=table.string("name", _MODEL_WHAT, _is_model_id),
        base_url=_endpoint(table),
        api_key=_secret(table, "api_key", required=False),
        max_attempts=table.integer("max_attempts", 5, 1, 20),
        retry_base_seconds=table.number("retry_base_seconds", 5.0),
        run_timeout_seconds=table.number("run_timeout_seconds", 900.0),
    )


def _groups(top: Table, assistant_name: str) -> tuple[GroupConfig, ...]:
    tables = top.data.get("groups", {})
    if not isinstance(tables, Mapping):
        raise ConfigError(
            "groups", f"must be a table of groups by folder name, not {describe(tables)}"
        )
    groups: list[GroupConfig] = []
    for folder, data in tables.items():
        group = validate_group(folder, data, assistant_name)
        key = "groups." + key_part(folder)
        owner = next((g.folder for g in groups if g.room_id == group.room_id), None)
        if owner is not None:
            raise ConfigError(
                key + ".room_id",
                f"room {group.room_id} already belongs to group {owner}; "
                "a room can be only one group",
            )
        main = next((g.folder for g in groups if g.main), None)
        if group.main and main is not None:
            raise ConfigError(key + ".main", f"only one group may be main, and {main} already is")
        groups.append(group)
    if groups and not any(g.main for g in groups):
        raise ConfigError(
            "groups",
            "one group must have main = true: the owners' room, which manages the others",
        )
    return tuple(groups)


def _secret(table: Table, stem: str, *, required: bool) -> SecretRef | None:
    file_key, credential_key = f"{stem}_file", f"{stem}_credential"
    file = table.string(file_key, _PATH_WHAT, _is_absolute)
    credential = table.string(credential_key, _CREDENTIAL_WHAT, _is_credential)
    if file is None and credential is None:
        if required:
            raise ConfigError(
                table.at(file_key),
                f"set exactly one of {file_key} or {credential_key} (neither is set)",
            )
        return None
    if file is not None and credential is not None:
        count = "exactly" if required else "at most"
        raise ConfigError(
            table.at(file_key), f"set {count} one of {file_key} or {credential_key} (both are set)"
        )
    return SecretRef(
        key=table.at(file_key if file is not None else credential_key),
        file=Path(file) if file is not None else None,
        credential=credential,
    )


def _user_ids(table: Table, name: str) -> tuple[str, ...]:
    """A list of distinct Matrix user IDs; empty when absent."""
    values = table.data.get(name, [])
    if not isinstance(values, list):
        raise ConfigError(
            table.at(name), f"must be a list of Matrix user IDs, not {describe(values)}"
        )
    for index, value in enumerate(values):
        key = f"{table.at(name)}[{index}]"
        if not isinstance(value, str) or not _is_user_id(value):
            raise ConfigError(key, f"must be {_USER_WHAT}, not {describe(value)}")
        if value in values[:index]:
            raise ConfigError(key, f"{value} is listed twice (also at [{values.index(value)}])")
    return tuple(values)


def _is_user_id(value: str) -> bool:
    return len(value) <= _MAX_ID_LENGTH and _USER_ID.fullmatch(value) is not None


def _is_room_id(value: str) -> bool:
    return len(value) <= _MAX_ID_LENGTH and _ROOM_ID.fullmatch(value) is not None


def _is_url(value: str) -> bool:
    if re.search(r"\s", value) or CONTROL_CHARACTERS.search(value):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _is_absolute(value: str) -> bool:
    return not CONTROL_CHARACTERS.search(value) and Path(value).is_absolute()


def _is_credential(value: str) -> bool:
    return value not in (".", "..") and _CREDENTIAL.fullmatch(value) is not None


def _is_model_id(value: str) -> bool:
    return 0 < len(value) <= 200 and not re.search(r"\s", value) and _is_line(value)


def _is_text(value: str) -> bool:
    return bool(value.strip())


def _is_line(value: str) -> bool:
    return bool(value.strip()) and not CONTROL_CHARACTERS.search(value)


def _is_assistant_name(value: str) -> bool:
    # It is written into the prompt's XML and into the default trigger.
    return (
        1 <= len(value) <= 64
        and value == value.strip()
        and not CONTROL_CHARACTERS.search(value)
        and not re.search(r'[<>"]', value)
    )
