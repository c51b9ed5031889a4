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
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from nanoclaw.broker.config_reader import ConfigError as ConfigError
from nanoclaw.broker.config_reader import (
    Table,
    describe,
    key_part,
    parse_json_object,
    read_text,
)
from nanoclaw.broker.policy import GROUP_PATTERN, RESERVED_GROUPS
from nanoclaw.broker.protocol import (
    DEFAULT_CREDENTIAL_SOCKET,
    DEFAULT_EGRESS_SOCKET,
    MAX_STDIN_BYTES,
)
from nanoclaw.host.config_subagents import SubagentConfig, check_sandbox_tools, parse_subagents
from nanoclaw.host.config_tasks import TaskConfig, parse_tasks
from nanoclaw.host.config_values import (
    is_absolute,
    is_assistant_name,
    is_credential,
    is_line,
    is_model_id,
    is_room_id,
    is_url,
    is_user_id,
)
from nanoclaw.host.secret_ref import SecretRef

# A group's folder is its name in the sandbox policy: the same rule, and the same reserved names.
FOLDER_PATTERN = f"^{GROUP_PATTERN}$"
RESERVED_FOLDERS = RESERVED_GROUPS
LOG_LEVELS = ("debug", "info", "warning", "error")


_TOP_KEYS = (
    "data_dir",
    "timezone",
    "assistant_name",
    "max_concurrent_runs",
    "idle_timeout_seconds",
    "max_prompt_messages",
    "log_level",
    "sandbox_socket",
    "egress_socket",
    "credential_socket",
    "confine_agent",
    "tool_timeout_seconds",
    "max_attachment_bytes",
    "image_scaler_python",
    "matrix",
    "model",
    "groups",
    "tasks",
    "audit",
)
_MATRIX_KEYS = (
    "homeserver",
    "user_id",
    "access_token_file",
    "access_token_credential",
    "owners",
    "encryption",
    "key_wait_seconds",
)
_MODEL_KEYS = (
    "name",
    "base_url",
    "api_key_file",
    "api_key_credential",
    "oauth_token_file",
    "oauth_token_credential",
    "max_attempts",
    "retry_base_seconds",
    "run_timeout_seconds",
)
_GROUP_KEYS = (
    "room_id",
    "main",
    "trigger",
    "requires_trigger",
    "allowed_senders",
    "model",
    "base_url",
    "subagents",
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
class MatrixConfig:
    homeserver: str
    user_id: str
    access_token: SecretRef
    owners: tuple[str, ...]
    encryption: bool
    # An encrypted message whose keys have not come after this long is named to its room.
    key_wait_seconds: int = 600


@dataclass(frozen=True)
class ModelConfig:
    name: str | None  # None: the CLI's default model
    base_url: str | None
    api_key: SecretRef | None
    max_attempts: int
    retry_base_seconds: float
    run_timeout_seconds: float  # one agent turn; a CLI that hangs is killed after this
    # A Claude subscription's OAuth token (`claude setup-token`), instead of an API key.
    oauth_token: SecretRef | None = None


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
    subagents: tuple[SubagentConfig, ...] = ()  # only from the configuration file

    def sender_allowed(self, sender: str, owners: tuple[str, ...]) -> bool:
        if self.allowed_senders:
            return sender in self.allowed_senders
        # An empty list opens an ordinary room to all its members, but the main room is
        # trusted (it may manage other groups), so there it means the owners only.
        return sender in owners if self.main else True


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
    # Where the egress proxy listens for the relays of groups with domains (the broker's
    # --egress-socket).
    egress_socket: Path = Path(DEFAULT_EGRESS_SOCKET)
    # Where the credential proxy listens for the model relays of agent units (the broker's
    # --credential-socket).
    credential_socket: Path = Path(DEFAULT_CREDENTIAL_SOCKET)
    # With a broker, each group's CLI runs in an agent unit of its own; false keeps it in
    # the host's process tree, as its user (for a broker without an agent runtime).
    confine_agent: bool = True
    tool_timeout_seconds: int = 120
    # The largest file someone may send the agent (the broker takes at most 8 MiB of stdin).
    max_attachment_bytes: int = MAX_STDIN_BYTES
    # A Python 3 with Pillow, as the tool units see it, which makes every image sent into
    # one the model takes (nanoclaw.host.image_scale); unset, images go as sent or not at all.
    image_scaler_python: str | None = None
    tasks: tuple[TaskConfig, ...] = ()
    # How long the audit trail of tool calls is kept (nanoclaw.host.audit).
    audit_retention_days: int = 90

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
            is_assistant_name,
        )
        or "Andy"
    )
    sandbox_socket = _optional_path(top.string("sandbox_socket", _PATH_WHAT, is_absolute))
    groups = _groups(top, assistant_name)
    for group in groups:
        key = "groups." + key_part(group.folder)
        check_sandbox_tools(key, group.subagents, sandbox_socket is not None)
    return Config(
        data_dir=Path(top.string("data_dir", _PATH_WHAT, is_absolute) or "/var/lib/nanoclaw"),
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
        groups=groups,
        sandbox_socket=sandbox_socket,
        egress_socket=Path(
            top.string("egress_socket", _PATH_WHAT, is_absolute) or DEFAULT_EGRESS_SOCKET
        ),
        credential_socket=Path(
            top.string("credential_socket", _PATH_WHAT, is_absolute) or DEFAULT_CREDENTIAL_SOCKET
        ),
        confine_agent=top.flag("confine_agent", True),
        tool_timeout_seconds=top.integer("tool_timeout_seconds", 120, 1, 86400),
        max_attachment_bytes=top.integer(
            "max_attachment_bytes", MAX_STDIN_BYTES, 1024, MAX_STDIN_BYTES
        ),
        image_scaler_python=top.string("image_scaler_python", _PATH_WHAT, is_absolute),
        tasks=parse_tasks(top, [g.folder for g in groups], timezone),
        audit_retention_days=top.table("audit", ("retention_days",), required=False).integer(
            "retention_days", 90, 1, 36500
        ),
    )


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
        room_id=table.require("room_id", _ROOM_WHAT, is_room_id),
        main=main,
        trigger=table.string("trigger", 'a non-empty text on one line, like "@Andy"', is_line)
        or "@" + assistant_name,
        requires_trigger=table.flag("requires_trigger", not main),
        allowed_senders=_user_ids(table, "allowed_senders"),
        model=table.string("model", _MODEL_WHAT, is_model_id),
        base_url=_endpoint(table),
        subagents=parse_subagents(table),
    )


def _endpoint(table: Table) -> str | None:
    base_url = table.string("base_url", _URL_WHAT, is_url)
    # A trailing slash would give the SDK's requests a double slash.
    return base_url.rstrip("/") if base_url else None


def check_secrets(config: Config, env: Mapping[str, str] = os.environ) -> None:
    """Read every configured secret once, so a missing one stops us before anything starts."""
    for secret in (config.matrix.access_token, config.model.api_key, config.model.oauth_token):
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
    user_id = table.require("user_id", _USER_WHAT, is_user_id)
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
        homeserver=table.require("homeserver", _URL_WHAT, is_url).rstrip("/"),
        user_id=user_id,
        access_token=access_token,
        owners=owners,
        encryption=table.flag("encryption", True),
        key_wait_seconds=table.integer("key_wait_seconds", 600, 10, 7 * 86400),
    )


def _model(table: Table) -> ModelConfig:
    api_key = _secret(table, "api_key", required=False)
    oauth_token = _secret(table, "oauth_token", required=False)
    if api_key is not None and oauth_token is not None:
        # The proxy puts one credential on every request; which would be a guess.
        raise ConfigError(
            oauth_token.key,
            f"set an API key or a subscription token, not both ({api_key.key} is set too)",
        )
    return ModelConfig(
        name=table.string("name", _MODEL_WHAT, is_model_id),
        base_url=_endpoint(table),
        api_key=api_key,
        max_attempts=table.integer("max_attempts", 5, 1, 20),
        retry_base_seconds=table.number("retry_base_seconds", 5.0),
        run_timeout_seconds=table.number("run_timeout_seconds", 900.0),
        oauth_token=oauth_token,
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
    file = table.string(file_key, _PATH_WHAT, is_absolute)
    credential = table.string(credential_key, _CREDENTIAL_WHAT, is_credential)
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
        if not isinstance(value, str) or not is_user_id(value):
            raise ConfigError(key, f"must be {_USER_WHAT}, not {describe(value)}")
        if value in values[:index]:
            raise ConfigError(key, f"{value} is listed twice (also at [{values.index(value)}])")
    return tuple(values)
