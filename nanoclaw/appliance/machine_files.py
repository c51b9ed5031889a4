"""What the Quickstart's machine gets: its config, policy and secrets in DATA, the users
and directories made at each boot (as the NixOS module would make them), and the few
helpers the appliance's modules share."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from nanoclaw.appliance.machine import ApplianceError, NspawnMachine
from nanoclaw.appliance.quickstart import QuickstartState, write_private
from nanoclaw.host.model_credential import TOKEN_PREFIX

SOURCE = "/opt/nanoclaw-src"
VENV = "/opt/nanoclaw/venv"
WHEELS = "/opt/nanoclaw-wheels"
# Each group's tool units run as a user of their own.
GROUP_UIDS = {"main": 61000, "example": 61001}
# Each group's agent runtime (the CLI) runs as a user of its own too.
AGENT_UIDS = {group: uid + 1000 for group, uid in GROUP_UIDS.items()}
# Where the example group's tools may go: a fetch elsewhere is refused by the egress proxy.
EXAMPLE_DOMAINS = ("example.com", "*.wikipedia.org")
UNITS = (
    "nanoclaw-sandboxd.socket",
    "nanoclaw-sandboxd.service",
    "nanoclaw.service",
)
SCRIPTS = {
    "nanoclaw": "nanoclaw.cli",
    "nanoclaw-sandboxd": "nanoclaw.broker.sandboxd",
}


@dataclass(frozen=True)
class ModelSettings:
    api_key: str | None  # or a Claude subscription's token, told apart as the CLI does
    base_url: str | None

    @property
    def subscription(self) -> bool:
        return bool(self.api_key and self.api_key.startswith(TOKEN_PREFIX))


# -- the files the machine gets ---------------------------------------------------------


def render_config(state: QuickstartState, model: ModelSettings) -> str:
    model_lines = []
    if model.subscription:  # the credential file holds the token
        model_lines.append('oauth_token_credential = "anthropic-key"')
    elif model.api_key:
        model_lines.append('api_key_credential = "anthropic-key"')
    if model.base_url:
        model_lines.append(f"base_url = {json.dumps(model.base_url)}")
    return f"""\
# Written by `nanoclaw up` at every start (change the model with its options or
# environment: ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN, ANTHROPIC_BASE_URL,
# --api-key-file, --base-url).
data_dir = "/var/lib/nanoclaw"
assistant_name = "Andy"
sandbox_socket = "/run/nanoclaw/sandbox.sock"
# Images sent in reach the model as JPEGs made in a tool unit (the machine has python3-pil).
image_scaler_python = "/usr/bin/python3"

[matrix]
homeserver = {json.dumps(state.homeserver)}
user_id = {json.dumps(state.bot.user_id)}
access_token_credential = "matrix-token"
owners = [{json.dumps(state.owner.user_id)}]

[model]
{chr(10).join(model_lines)}

[groups.main]
room_id = {json.dumps(state.rooms["main"])}
main = true

# An ordinary group: its own memory, workspace and tool user; its tools reach the web only
# at the policy's EXAMPLE_DOMAINS, through the egress proxy. Only the owner is in its
# room, so every message there is for the agent.
[groups.example]
room_id = {json.dumps(state.rooms["example"])}
requires_trigger = false
"""


def render_policy() -> str:
    groups: dict[str, dict[str, object]] = {
        folder: {
            "uid": uid,
            "agent": {"uid": AGENT_UIDS[folder]},
            **({"main": True} if folder == "main" else {}),
        }
        for folder, uid in GROUP_UIDS.items()
    }
    groups["example"]["egress"] = {"domains": list(EXAMPLE_DOMAINS)}
    policy = {
        "version": 1,
        "data_dir": "/var/lib/nanoclaw",
        "protected_paths": ["/etc/nanoclaw"],
        "groups": groups,
    }
    return json.dumps(policy, indent=2) + "\n"


def setup_script() -> str:
    """Run as root in the machine at every boot (its root is fresh each time): users,
    directories and commands as the NixOS module would make them, then the units."""
    tool_users = "".join(f"u nanoclaw-tool-{g} {uid} - -\n" for g, uid in GROUP_UIDS.items())
    tool_users += "".join(f"u nanoclaw-agent-{g} {uid} - -\n" for g, uid in AGENT_UIDS.items())
    # Each group's workspace is its tool user's alone: the host never reads or writes it.
    folders = "d /var/lib/nanoclaw/groups 0750 nanoclaw nanoclaw -\n"
    folders += "".join(
        f"d /var/lib/nanoclaw/groups/{g} 0700 nanoclaw-tool-{g} nanoclaw-tool-{g} -\n"
        for g in GROUP_UIDS
    )
    links = "".join(f"ln -sfn {VENV}/bin/{name} /usr/local/bin/{name}\n" for name in SCRIPTS)
    units = " ".join(f"{SOURCE}/units/{unit}" for unit in UNITS)
    return f"""set -e
mkdir -p /etc/sysusers.d /etc/tmpfiles.d
install -m 0644 {SOURCE}/units/nanoclaw.sysusers /etc/sysusers.d/nanoclaw.conf
install -m 0644 {SOURCE}/units/nanoclaw.tmpfiles /etc/tmpfiles.d/nanoclaw.conf
printf %s {shlex.quote(tool_users)} > /etc/sysusers.d/nanoclaw-tools.conf
printf %s {shlex.quote(folders)} > /etc/tmpfiles.d/nanoclaw-groups.conf
systemd-sysusers
systemd-tmpfiles --create
{links}install -m 0644 {units} /etc/systemd/system/
systemctl daemon-reload
"""


def model_settings(data: Path, api_key_file: Path | None, base_url: str | None) -> ModelSettings:
    """The key: --api-key-file, else $ANTHROPIC_API_KEY, else a subscription token from
    $CLAUDE_CODE_OAUTH_TOKEN (as `claude setup-token` says to set it), else the one kept
    from a run before; the file may hold a token too. The base URL likewise: --base-url,
    $ANTHROPIC_BASE_URL, the kept one."""
    secrets = data / "machine/etc/secrets"
    env = os.environ
    key = (
        api_key_file.read_text().strip()
        if api_key_file
        else env.get("ANTHROPIC_API_KEY") or env.get("CLAUDE_CODE_OAUTH_TOKEN")
    )
    if not key and (secrets / "anthropic-key").exists():
        key = (secrets / "anthropic-key").read_text().strip()
    kept = data / "model-base-url"
    url = base_url or os.environ.get("ANTHROPIC_BASE_URL")
    if url:
        kept.write_text(url + "\n")
    elif kept.exists():
        url = kept.read_text().strip()
    return ModelSettings(key or None, url or None)


def write_machine_files(data: Path, state: QuickstartState, model: ModelSettings) -> None:
    etc = data / "machine/etc"
    os.chmod(etc, 0o755)
    (etc / "config.toml").write_text(render_config(state, model))
    (etc / "policy.json").write_text(render_policy())
    for name in ("config.toml", "policy.json"):
        os.chmod(etc / name, 0o644)
    # Both files must exist for the unit's LoadCredential=; an empty key is no key.
    write_private(etc / "secrets/matrix-token", state.bot.access_token)
    write_private(etc / "secrets/anthropic-key", model.api_key or "")


def say(text: str) -> None:
    print(f"nanoclaw: {text}", flush=True)


def run(machine: NspawnMachine, command: str, timeout: float = 120) -> str:
    status, out = machine.execute(command, timeout=timeout)
    if status != 0:
        raise ApplianceError(f"in the machine, `{command.strip()[:200]}` failed ({status}):\n{out}")
    return out
