"""`nanoclaw doctor`: can this installation serve? A line per check, and what to do.

It asks each part the host relies on the way the host does: the config and its secrets,
the homeserver and whoami with the bot's token, the broker's describe request (which
also carries the broker's start-up checks of IP filtering), the model endpoint through
the credential proxy exactly as the CLI reaches it (with the API key or the subscription
token, each of which must look like one), and the data directory's owner and
mode, and whether encrypted messages have waited too long for their keys. Nothing is
changed; a failed check says what to change.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from nanoclaw.broker.protocol import PolicySummary
from nanoclaw.broker.workspace_usage import shown, size
from nanoclaw.host.config import Config, ConfigError, check_secrets, load_config
from nanoclaw.host.credential_proxy import CredentialProxy, default_endpoint
from nanoclaw.host.model_credential import RENEW_TOKEN, ModelCredential, model_credential
from nanoclaw.host.sandbox.client import SandboxError, describe_policy, workspace_usage

TIMEOUT = aiohttp.ClientTimeout(total=15)
# count_tokens needs a model; this one when the config leaves it to the CLI's default.
PROBE_MODEL = "claude-sonnet-4-5"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""  # what to do, for a failed check


def report(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"{'ok' if check.ok else 'FAIL':<5} {check.name:<13} {check.detail}")
        if not check.ok and check.fix:
            lines.append(f"{'':<19} fix: {check.fix}")
    return "\n".join(lines)


async def run_checks(path: Path, env: Mapping[str, str] = os.environ) -> list[Check]:
    try:
        config = load_config(path)
        check_secrets(config, env)
    except ConfigError as err:
        fix = "correct it; `nanoclaw check-config` shows the same"
        if "CREDENTIALS_DIRECTORY" in err.reason:
            fix = (
                "outside the service, point $CREDENTIALS_DIRECTORY at the directory that "
                "holds the credentials (e.g. /etc/nanoclaw/secrets)"
            )
        return [Check("config", False, str(err), fix)]
    groups = ", ".join(g.folder for g in config.groups) or "none"
    checks = [Check("config", True, f"{path}: groups {groups}")]
    checks += await _homeserver(config)
    checks += await _broker(config)
    checks += await _model(config, env)
    checks.append(_data_dir(config.data_dir))
    checks.append(_waiting_for_keys(config))
    return checks


async def _homeserver(config: Config) -> list[Check]:
    matrix = config.matrix
    token = matrix.access_token.read()
    url = matrix.homeserver
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            async with session.get(f"{url}/_matrix/client/versions") as reply:
                reachable = Check("homeserver", reply.status == 200, f"{url}: HTTP {reply.status}")
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(
                f"{url}/_matrix/client/v3/account/whoami", headers=headers
            ) as reply:
                status, body = reply.status, await reply.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return [
            Check(
                "homeserver",
                False,
                f"{url}: unreachable ({exc or type(exc).__name__})",
                "check matrix.homeserver, and that the homeserver runs and is reachable from here",
            )
        ]
    if not reachable.ok:
        return [reachable]
    if status != 200:
        fix = "log the bot in again and put the new access token where the config names it"
        return [reachable, Check("matrix token", False, f"refused: {body.get('errcode')}", fix)]
    user = body.get("user_id")
    if user != matrix.user_id:
        fix = "use the bot's own token, or correct matrix.user_id"
        return [reachable, Check("matrix token", False, f"belongs to {user}", fix)]
    return [reachable, Check("matrix token", True, f"valid for {user}")]


async def _broker(config: Config) -> list[Check]:
    if config.sandbox_socket is None:
        return [Check("broker", True, "not configured (sandbox_socket): only the host tools")]
    socket = str(config.sandbox_socket)
    try:
        summary = await describe_policy(socket)
    except (SandboxError, OSError, ValueError, KeyError) as exc:
        fix = (
            "is nanoclaw-sandboxd.socket active (systemctl status nanoclaw-sandboxd.socket), "
            "and does this user belong to group nanoclaw?"
        )
        return [Check("broker", False, str(exc), fix)]
    broker = Check("broker", True, f"{socket}: {len(summary.groups)} groups in the policy")
    return [
        broker,
        _agent_units(config, summary),
        *_enforcement(summary),
        await _workspaces(socket),
    ]


def _agent_units(config: Config, summary: PolicySummary) -> Check:
    if not config.confine_agent:
        return Check(
            "agent units",
            False,
            "off (confine_agent = false): each group's CLI runs in the host's process tree, "
            "as the host's user, next to its credentials and database",
            "set confine_agent = true and give each group agent.uid in the policy",
        )
    policy = summary.groups
    missing = [g.folder for g in config.groups if g.folder in policy and not policy[g.folder].agent]
    if missing:
        return Check(
            "agent units",
            False,
            f"no agent unit in the policy for {', '.join(missing)}: their turns are refused",
            "give each groups.NAME.agent.uid in the policy, and create the user "
            "(sysusers: u nanoclaw-agent-NAME UID)",
        )
    return Check("agent units", True, "each group's CLI runs in a unit of its own")


async def _workspaces(socket: str) -> Check:
    try:
        measured = await workspace_usage(socket)
    except (SandboxError, OSError, ValueError, KeyError) as exc:
        return Check("workspaces", False, str(exc), "update nanoclaw-sandboxd")
    held = ", ".join(f"{name} {shown(usage)}" for name, usage in measured.groups.items())
    return Check(
        "workspaces",
        True,
        f"{held or 'none'}; {size(measured.free_bytes)} free on the file system they share "
        "(no per-group bound: one group can fill it for all)",
    )


def _enforcement(summary: PolicySummary) -> list[Check]:
    enforced = summary.enforced
    if enforced is None:
        return [Check("enforcement", False, "the broker does not say", "update nanoclaw-sandboxd")]
    # What this machine cannot do is said once; it fails only where a group is refused for it.
    checks = [
        Check(
            "ip filtering",
            True,
            "IPAddressDeny= holds for tool units"
            if enforced.ip_filtering
            else "not enforced here (no cgroup BPF): a group with egress.cidrs is refused; "
            "groups with domains do not need it",
        ),
        Check(
            "pid isolation",
            True,
            "each tool unit has a PID namespace of its own"
            if enforced.pid_isolation
            else "not available (systemd before 257): a tool unit can tell which PIDs exist, "
            "though it sees none of their processes",
        ),
    ]
    for name, why in enforced.refused.items():
        fix = (
            "give the group egress.domains instead, or boot with cgroup v2 on a kernel with "
            "cgroup BPF"
            if "cidrs" in why
            else "install systemd's socket-proxyd (Debian: package systemd)"
        )
        checks.append(
            Check(f"group {name}", False, why, f"{fix}, then restart nanoclaw-sandboxd.service")
        )
    return checks


async def _model(config: Config, env: Mapping[str, str]) -> list[Check]:
    credential = model_credential(config.model, env)
    if credential is not None and (mismatch := _mismatch(credential)) is not None:
        return [mismatch]  # it would only be refused, or sent the wrong way
    default = config.model.base_url or default_endpoint(env)
    endpoints = {default: config.model.name}
    for group in config.groups:
        if group.base_url:
            endpoints.setdefault(group.base_url, group.model or config.model.name)
    proxy = CredentialProxy(credential, default)
    await proxy.start()
    try:
        return [await _probe(proxy, endpoint, model) for endpoint, model in endpoints.items()]
    finally:
        await proxy.close()


def _mismatch(credential: ModelCredential) -> Check | None:
    problem = credential.shape_problem()
    if problem is None:
        return None
    fix = (
        "put the token `claude setup-token` printed where model.oauth_token_* names (an "
        "API key belongs in model.api_key_file or model.api_key_credential)"
        if credential.subscription
        else "name its file or credential in model.oauth_token_file or "
        "model.oauth_token_credential instead"
    )
    return Check("model", False, problem, fix)


async def _probe(proxy: CredentialProxy, endpoint: str, model: str | None) -> Check:
    """count_tokens through the credential proxy: authenticated, and free of charge (the
    CLI sends count_tokens with a subscription token too)."""
    if proxy.needs_key(endpoint):
        fix = (
            "set model.api_key_file or model.api_key_credential (model.oauth_token_* for a "
            "Claude subscription), or a base_url without keys"
        )
        return Check("model", False, f"{endpoint}: no API key is configured", fix)
    placeholder = proxy.issue("doctor", endpoint)
    body = {"model": model or PROBE_MODEL, "messages": [{"role": "user", "content": "ping"}]}
    headers = {"x-api-key": placeholder, "anthropic-version": "2023-06-01"}
    try:
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.post(
                f"{proxy.url}/v1/messages/count_tokens", json=body, headers=headers
            ) as reply,
        ):
            status, text = reply.status, await reply.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Check("model", False, f"{endpoint}: {exc or type(exc).__name__}")
    finally:
        proxy.revoke(placeholder)
    what = "the subscription token" if proxy.subscription else "the key"
    if status == 200:
        return Check("model", True, f"{endpoint}: {what} is accepted")
    if status in (401, 403):
        refused = f"{endpoint}: {what} is refused (HTTP {status})"
        if proxy.subscription:  # expired or revoked: Anthropic's message says which
            return Check("model", False, f"{refused}: {_api_message(text)}", RENEW_TOKEN)
        fix = "put a valid key in the file or credential that model.api_key_* names"
        return Check("model", False, refused, fix)
    if status == 502:
        fix = "check model.base_url (or the group's base_url) and the network"
        return Check("model", False, f"{endpoint}: unreachable", fix)
    fix = "check the endpoint and model name; an endpoint without count_tokens cannot be checked"
    return Check("model", False, f"{endpoint}: HTTP {status}: {text[:200]}", fix)


def _api_message(text: str) -> str:
    """The message of an error in the API's shape, else the start of the body."""
    try:
        return str(json.loads(text)["error"]["message"])[:200]
    except (ValueError, KeyError, TypeError):
        return text[:200]


def _data_dir(path: Path) -> Check:
    try:
        info = path.stat()
    except FileNotFoundError:
        fix = f"create it for the service's user: install -d -m 0700 -o nanoclaw {path}"
        return Check("data dir", False, f"{path} does not exist", fix)
    except OSError as exc:
        fix = "run doctor as the service's user"
        return Check("data dir", False, f"{path}: {exc.strerror}", fix)
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISDIR(info.st_mode):
        return Check("data dir", False, f"{path} is not a directory", "point data_dir at one")
    if info.st_uid != os.geteuid():
        fix = "run doctor as the service's user, or chown the directory to it"
        return Check("data dir", False, f"{path} belongs to uid {info.st_uid}, not us", fix)
    # Messages, sessions, the crypto store: group members may look, nobody else.
    if mode & 0o027 or not os.access(path, os.W_OK | os.X_OK):
        fix = f"chmod 0750 {path} (or 0700)"
        return Check("data dir", False, f"{path} has mode {mode:04o}", fix)
    return Check("data dir", True, f"{path}: mode {mode:04o}, ours")


def _waiting_for_keys(config: Config) -> Check:
    """Encrypted messages kept until their keys come (nanoclaw.host.late_keys)."""
    path = config.data_dir / "nanoclaw.db"
    try:
        database = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            count, oldest = database.execute(
                "SELECT COUNT(*), MIN(arrived_ts) FROM undecrypted"
            ).fetchone()
        finally:
            database.close()
    except sqlite3.Error as error:  # no database yet, or one of an older version
        return Check("waiting keys", True, f"nothing to read in {path} ({error})")
    if not count:
        return Check("waiting keys", True, "no encrypted message waits for its keys")
    age = time.time() - oldest / 1000
    waited = f"{age:.0f} s" if age < 120 else f"{age / 60:.0f} min"
    shown = f"{count} encrypted message(s) wait for their keys, the oldest for {waited}"
    if age < config.matrix.key_wait_seconds:
        return Check("waiting keys", True, shown)
    fix = (
        "their senders' clients have not shared the keys (the rooms were told): have them "
        "open a client, or check that it trusts the bot's device"
    )
    return Check("waiting keys", False, shown, fix)


async def doctor(path: Path) -> int:
    checks = await run_checks(path)
    print(report(checks))
    return 0 if all(check.ok for check in checks) else 1
