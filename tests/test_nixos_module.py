"""services.nanoclaw evaluated as a NixOS system (tests/nix/, whose stand-ins for nixpkgs
and NixOS are real derivations): what it renders, and what it refuses, naming the option.

Needs NANOCLAW_NIXPKGS_LIB (tests/support/nix.py); skipped loudly without it. Whether every
file and unit of the READMEs, the demo and the VM node evaluates is test_nix_harness.py's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from nanoclaw.appliance import machine_files
from nanoclaw.broker import agent_unit
from nanoclaw.broker import policy as rules_of
from nanoclaw.broker.config_reader import ConfigError
from nanoclaw.broker.policy_file import parse_policy
from nanoclaw.host.config import parse_config
from nanoclaw.rules import rules
from tests.support.nix import NIX_ENV, REPO, harness, require_nixpkgs_lib

nixpkgs_lib = pytest.fixture(scope="session")(require_nixpkgs_lib)

# Two groups, much as the README has them: a project reaching GitHub by name (through the
# egress proxy), and one reaching a network directly. main's agent user is given, family's
# is the default (its uid + 1000).
BASE = """
{ pkgs, ... }: {
  services.nanoclaw = {
    enable = true;
    settings = {
      matrix = {
        homeserver = "https://matrix.example.org";
        user_id = "@nanoclaw:example.org";
        owners = [ "@me:example.org" ];
      };
      model.name = "claude-sonnet-4-5";
      timezone = "Europe/Berlin";
    };
    accessTokenFile = "/run/keys/matrix-token";
    apiKeyFile = "/run/keys/anthropic-key";
    defaults.limits.tasksMax = 128;
    defaults.agent.cpuWeight = 50;
    groups = {
      main = {
        uid = 61000;
        agent = { uid = 62010; memoryMaxBytes = 2147483648; };
        main = true;
        roomId = "!owners:example.org";
        mounts = [ { host = "/srv/project"; sandbox = "/workspace/project"; writable = true; } ];
        egress.domains = [ "github.com" "*.githubusercontent.com" ];
        packages = [ pkgs.git pkgs.ripgrep ];
        limits = { memoryMaxBytes = 2147483648; wallSeconds = 900; };
      };
      family = {
        uid = 61001;
        roomId = "!family:example.org";
        trigger = "@Andy";
        allowedSenders = [ "@me:example.org" "@partner:example.org" ];
        egress.cidrs = [ "140.82.112.0/20" ];
        confineStore = false;
      };
    };
  };
}
"""


def evaluate(lib: Path, sample: str) -> dict[str, Any]:
    result = harness(lib, "example", sample, inspect=True)
    assert result.ok, f"the module does not evaluate:\n{result.stderr}"
    value: dict[str, Any] = result.value
    return value


def refused(lib: Path, sample: str) -> str:
    """The error of a configuration that must not evaluate, on one line."""
    result = harness(lib, "example", sample, inspect=True)
    assert not result.ok, "evaluated, but should have been refused"
    return " ".join(result.stderr.split())


def changed(old: str, new: str, sample: str = BASE) -> str:
    assert sample.count(old) == 1, old
    return sample.replace(old, new)


def without_nulls(value: Any) -> Any:
    """As the module writes the config file: TOML has no null."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    return value


@pytest.fixture(scope="session")
def base(nixpkgs_lib: Path) -> dict[str, Any]:
    evaluated = evaluate(nixpkgs_lib, BASE)
    assert evaluated["failed"] == []
    return evaluated


def test_the_settings_are_a_valid_host_config(base: dict[str, Any]) -> None:
    settings = without_nulls(base["settings"])
    assert settings["matrix"] == {
        "homeserver": "https://matrix.example.org",
        "user_id": "@nanoclaw:example.org",
        "owners": ["@me:example.org"],
        "access_token_credential": "matrix-token",
    }
    assert settings["model"] == {"name": "claude-sonnet-4-5", "api_key_credential": "anthropic-key"}
    assert settings["sandbox_socket"] == "/run/nanoclaw/sandbox.sock"
    assert settings["egress_socket"] == "/run/nanoclaw-egress/proxy.sock"
    assert settings["credential_socket"] == "/run/nanoclaw-credentials/proxy.sock"
    assert settings["confine_agent"] is True
    assert settings["audit"] == {"retention_days": 90}
    assert settings["data_dir"] == "/var/lib/nanoclaw"
    assert settings["timezone"] == "Europe/Berlin"
    assert settings["groups"]["family"] == {
        "room_id": "!family:example.org",
        "main": False,
        "trigger": "@Andy",
        "allowed_senders": ["@me:example.org", "@partner:example.org"],
    }
    config = parse_config(settings)
    assert [g.folder for g in config.groups] == ["family", "main"]
    assert config.main_group is not None and config.main_group.folder == "main"
    assert config.egress_socket == Path(settings["egress_socket"])
    assert config.credential_socket == Path(settings["credential_socket"])
    assert config.confine_agent is True
    # nixpkgs' Python with Pillow scales images (its path also joins confined closures).
    assert re.fullmatch(
        r"/nix/store/\w{32}-python3-[\d.]+-env/bin/python3", str(config.image_scaler_python)
    )
    assert config.audit_retention_days == 90


def test_the_audit_retention_is_a_setting(nixpkgs_lib: Path) -> None:
    sample = changed('timezone = "Europe/Berlin";', "audit.retention_days = 30;")
    assert evaluate(nixpkgs_lib, sample)["settings"]["audit"] == {"retention_days": 30}


def test_a_setting_overrides_what_a_group_option_put_there(nixpkgs_lib: Path) -> None:
    sample = changed(
        'timezone = "Europe/Berlin";',
        'timezone = "Europe/Berlin"; groups.family.trigger = "@Bob"; matrix.encryption = true;',
    )
    settings = evaluate(nixpkgs_lib, sample)["settings"]
    assert settings["groups"]["family"]["trigger"] == "@Bob"
    assert settings["groups"]["family"]["room_id"] == "!family:example.org"
    assert settings["matrix"]["encryption"] is True


def test_the_policy_is_the_one_written_by_hand(base: dict[str, Any]) -> None:
    paths = base["paths"]
    expected = {
        "version": 1,
        "data_dir": "/var/lib/nanoclaw",
        "protected_paths": ["/etc/nanoclaw"],
        "defaults": {"limits": {"tasks_max": 128}, "agent": {"cpu_weight": 50}},
        "groups": {
            "main": {
                "uid": 61000,
                "agent": {"uid": 62010, "memory_max_bytes": 2147483648},
                "main": True,
                "mounts": [
                    {"host": "/srv/project", "sandbox": "/workspace/project", "writable": True}
                ],
                "egress": {"domains": ["github.com", "*.githubusercontent.com"]},
                "path": [paths["git"] + "/bin", paths["ripgrep"] + "/bin"],
                # Its closure, /bin/sh and /etc's files join read_only_paths when it is built.
                "empty_paths": ["/nix/store"],
                "limits": {"memory_max_bytes": 2147483648, "wall_seconds": 900},
            },
            "family": {
                "uid": 61001,
                "agent": {"uid": 62001},
                "egress": {"cidrs": ["140.82.112.0/20"]},
            },
        },
    }
    assert base["policy"] == expected
    assert json.loads(base["policyFile"]["base"]) == expected
    path = "/etc/nanoclaw/policy.json"
    assert parse_policy(base["policy"], path) == parse_policy(expected, path)


def test_every_group_gets_its_agent_unit_with_its_bounds(base: dict[str, Any]) -> None:
    """As nanoclaw reads the policy: a group's own bound, else defaults.agent's, else
    nanoclaw's; and every group has one, so the host can answer in each room."""
    groups = parse_policy(base["policy"], "/etc/nanoclaw/policy.json").groups
    gib = 1024**3
    assert groups["main"].agent == rules_of.AgentPolicy(
        uid=62010, memory_max_bytes=2 * gib, tasks_max=256, cpu_weight=50
    )
    assert groups["family"].agent == rules_of.AgentPolicy(
        uid=62001, memory_max_bytes=gib, tasks_max=256, cpu_weight=50
    )


def nix_value(expression: str) -> Any:
    import subprocess

    done = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expression],
        capture_output=True,
        text=True,
        env=NIX_ENV,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_agent_units_rules_are_pythons(nixpkgs_lib: Path) -> None:
    """agent.nix takes the agent user's name, the limits with their ranges and where systemd
    keeps the units' state from rules.json, so they are Python's; and its default uid
    offset is the Quickstart machine's."""
    agent = nix_value(
        f"import {REPO}/nixos-module/agent.nix {{"
        f" rules = builtins.fromJSON (builtins.readFile {REPO}/nixos-module/rules.json); }}"
    )
    assert agent["userPrefix"] == rules_of.AGENT_USER_PREFIX
    assert [(x["name"], x["default"], x["min"], x["max"]) for x in agent["limits"]] == list(
        rules_of.AGENT_LIMIT_RANGES
    )
    assert agent["stateRoot"] == agent_unit.STATE_ROOT
    assert len(rules_of.AGENT_USER_PREFIX) + agent["maxGroupName"] == rules_of.MAX_USER_NAME
    offsets = {machine_files.AGENT_UIDS[g] - uid for g, uid in machine_files.GROUP_UIDS.items()}
    assert offsets == {agent["uidOffset"]}


def test_every_agent_limit_is_an_option(nixpkgs_lib: Path) -> None:
    """Each bound of an agent unit, in defaults.agent and in a group's agent, reaches the
    policy under its own key; one over its range is refused, naming the option."""
    ranges = rules_of.AGENT_LIMIT_RANGES

    def option(key: str) -> str:
        first, *rest = key.split("_")
        return first + "".join(word.capitalize() for word in rest)

    highest = "; ".join(f"{option(name)} = {high}" for name, _, _, high in ranges)
    lowest = "; ".join(f"{option(name)} = {low}" for name, _, low, _ in ranges)
    sample = changed("defaults.agent.cpuWeight = 50;", f"defaults.agent = {{ {highest}; }};")
    sample = changed(
        "agent = { uid = 62010; memoryMaxBytes = 2147483648; };",
        f"agent = {{ uid = 62010; {lowest}; }};",
        sample,
    )
    policy = evaluate(nixpkgs_lib, sample)["policy"]
    assert policy["defaults"]["agent"] == {name: high for name, _, _, high in ranges}
    assert policy["groups"]["main"]["agent"] == {
        "uid": 62010,
        **{name: low for name, _, low, _ in ranges},
    }
    for name, _, low, high in ranges:
        error = refused(
            nixpkgs_lib,
            changed("cpuWeight = 50;", f"{option(name)} = {high + 1};"),
        )
        assert f"services.nanoclaw.defaults.agent.{option(name)}' is not of type" in error, error
        error = refused(
            nixpkgs_lib,
            changed("memoryMaxBytes = 2147483648; };", f"{option(name)} = {low - 1}; }};"),
        )
        assert f"services.nanoclaw.groups.main.agent.{option(name)}' is not of type" in error, error


def test_every_limit_of_the_rules_is_an_option(nixpkgs_lib: Path) -> None:
    """Limits come from rules.json: a limit added in Python is an option, by its
    camel-case name, and reaches the policy under its own key."""
    limits = rules()["limits"]

    def option(key: str) -> str:
        first, *rest = key.split("_")
        return first + "".join(word.capitalize() for word in rest)

    values = "; ".join(f"{option(limit['name'])} = {limit['max']}" for limit in limits)
    sample = changed("defaults.limits.tasksMax = 128;", f"defaults.limits = {{ {values}; }};")
    rendered = evaluate(nixpkgs_lib, sample)["policy"]["defaults"]["limits"]
    assert rendered == {limit["name"]: limit["max"] for limit in limits}
    one_over = f"{option(limits[0]['name'])} = {limits[0]['max'] + 1}"
    error = refused(nixpkgs_lib, changed("tasksMax = 128", one_over))
    assert f"services.nanoclaw.defaults.limits.{option(limits[0]['name'])}" in error, error


def test_a_mount_may_opt_out_of_protection(nixpkgs_lib: Path) -> None:
    sample = changed("writable = true; }", "writable = true; protect = false; }")
    mount = evaluate(nixpkgs_lib, sample)["policy"]["groups"]["main"]["mounts"][0]
    assert mount["protect"] is False


def test_the_files_in_etc(base: dict[str, Any]) -> None:
    etc = base["etc"]
    assert etc["nanoclaw/config.toml"]["source"] == base["configFile"]
    # A copy, so the path the units hide is a file of its own.
    assert etc["nanoclaw/policy.json"]["mode"] == "0444"
    assert etc["nanoclaw/policy.json"]["source"].endswith("-nanoclaw-policy.json")
    assert base["systemPackages"] == [base["package"]]
    # What confined units read of /etc links straight into the store, not through /etc/static.
    for name in ("hosts", "nsswitch.conf", "zoneinfo", "ssl/certs/ca-certificates.crt"):
        assert etc[name]["mode"] == "direct-symlink", name


def test_without_a_confined_group_etc_is_left_as_it_is(nixpkgs_lib: Path) -> None:
    sample = changed("packages = [ pkgs.git pkgs.ripgrep ];", "confineStore = false;")
    etc = evaluate(nixpkgs_lib, sample)["etc"]
    assert etc["hosts"]["mode"] == etc["nsswitch.conf"]["mode"] == "symlink"


def test_users_the_host_and_one_per_group(base: dict[str, Any]) -> None:
    users, groups = base["users"]["users"], base["users"]["groups"]
    assert users["nanoclaw"]["group"] == "nanoclaw"
    for name, uid in (("main", 61000), ("family", 61001)):
        user = users[f"nanoclaw-tool-{name}"]
        assert (user["uid"], user["group"], user["isSystemUser"]) == (
            uid,
            f"nanoclaw-tool-{name}",
            True,
        )
        assert groups[f"nanoclaw-tool-{name}"]["gid"] == uid
    assert "nanoclaw" in groups


def test_each_group_has_an_agent_user(base: dict[str, Any]) -> None:
    """User and group nanoclaw-agent-<name>, uid = gid = agent.uid: the agent unit's
    User= and Group=, which systemd resolves; main's is given, family's is its uid + 1000."""
    users, groups = base["users"]["users"], base["users"]["groups"]
    for name, uid in (("main", 62010), ("family", 62001)):
        user = users[f"nanoclaw-agent-{name}"]
        assert (user["uid"], user["group"], user["isSystemUser"]) == (
            uid,
            f"nanoclaw-agent-{name}",
            True,
        )
        assert groups[f"nanoclaw-agent-{name}"]["gid"] == uid
        assert base["policy"]["groups"][name]["agent"]["uid"] == uid
    agents = {name for name in users if name.startswith("nanoclaw-agent-")}
    assert agents == {"nanoclaw-agent-main", "nanoclaw-agent-family"}


def test_state_directories(base: dict[str, Any]) -> None:
    rules = base["tmpfiles"]["10-nanoclaw"]
    assert rules["/var/lib/nanoclaw"]["d"]["user"] == "nanoclaw"
    assert rules["/var/lib/nanoclaw"]["d"]["mode"] == "0750"
    # A group's folder is its tool user's alone; the host keeps memory and sessions itself.
    family = rules["/var/lib/nanoclaw/groups/family"]["d"]
    assert (family["user"], family["group"], family["mode"]) == (
        "nanoclaw-tool-family",
        "nanoclaw-tool-family",
        "0700",
    )
    assert "/var/lib/nanoclaw/global" not in rules


def test_the_host_service_is_hardened_and_gets_its_secrets_as_credentials(
    base: dict[str, Any],
) -> None:
    host = base["services"]["nanoclaw"]
    config = host["serviceConfig"]
    package = base["package"]
    assert config["ExecStart"] == f"{package}/bin/nanoclaw run --config {base['configFile']}"
    assert config["LoadCredential"] == [
        "matrix-token:/run/keys/matrix-token",
        "anthropic-key:/run/keys/anthropic-key",
    ]
    assert (config["User"], config["StateDirectory"]) == ("nanoclaw", "nanoclaw")
    assert (config["Type"], config["NotifyAccess"]) == ("notify", "main")
    assert config["ProtectSystem"] == "strict" and config["PrivateUsers"] is True
    assert config["CapabilityBoundingSet"] == ""
    assert "nanoclaw-sandboxd.socket" in host["after"]
    # The unit file NixOS writes, with the config file among its restart triggers.
    unit = base["units"]["nanoclaw.service"]
    assert "Type=notify\n" in unit and "WatchdogSec=30\n" in unit
    assert "X-Restart-Triggers=/nix/store/" in unit


def test_a_subscription_token_instead_of_the_api_key(nixpkgs_lib: Path) -> None:
    sample = changed(
        'apiKeyFile = "/run/keys/anthropic-key";', 'oauthTokenFile = "/run/keys/claude-token";'
    )
    evaluated = evaluate(nixpkgs_lib, sample)
    assert evaluated["failed"] == []
    assert evaluated["services"]["nanoclaw"]["serviceConfig"]["LoadCredential"] == [
        "matrix-token:/run/keys/matrix-token",
        "claude-oauth-token:/run/keys/claude-token",
    ]
    model = parse_config(without_nulls(evaluated["settings"])).model
    assert model.api_key is None
    assert model.oauth_token is not None
    assert model.oauth_token.credential == "claude-oauth-token"


@pytest.mark.parametrize("name", ["nanoclaw", "nanoclaw-sandboxd"])
def test_every_setting_of_the_plain_unit_is_set(base: dict[str, Any], name: str) -> None:
    """The module's units are those of units/: no [Service] key of theirs is left out
    (values may differ where paths do)."""
    text = (REPO / "units" / f"{name}.service").read_text()
    section = text.split("[Service]")[1].split("[Install]")[0]
    lines = [line for line in section.splitlines() if line and not line.startswith("#")]
    keys = {line.split("=")[0] for line in lines}
    assert keys - set(base["services"][name]["serviceConfig"]) == set()


def test_an_override_loosens_one_key_and_leaves_the_rest(nixpkgs_lib: Path) -> None:
    sample = changed(
        "defaults.limits.tasksMax = 128;",
        "serviceOverrides.PrivateUsers = false; defaults.limits.tasksMax = 128;",
    )
    config = evaluate(nixpkgs_lib, sample)["services"]["nanoclaw"]["serviceConfig"]
    assert config["PrivateUsers"] is False and config["ProtectSystem"] == "strict"


def test_the_broker_and_its_socket(base: dict[str, Any]) -> None:
    broker = base["services"]["nanoclaw-sandboxd"]
    assert broker["serviceConfig"]["CapabilityBoundingSet"] == "CAP_SYS_ADMIN CAP_DAC_READ_SEARCH"
    # It must see /home as PID 1 does, to check the mount sources PID 1 binds.
    assert broker["serviceConfig"]["ProtectHome"] == "read-only"
    # IP only to its probe's listener on loopback: the relays are units of their own.
    assert broker["serviceConfig"]["IPAddressDeny"] == "any"
    assert broker["serviceConfig"]["IPAddressAllow"] == ["localhost"]
    assert broker["after"] == ["nanoclaw-sandboxd.socket", "dbus.service"]
    assert broker["wants"] == broker["partOf"] == []
    socket = base["sockets"]["nanoclaw-sandboxd"]
    assert socket["listenStreams"] == ["/run/nanoclaw/sandbox.sock"]
    assert socket["socketConfig"]["SocketGroup"] == "nanoclaw"
    assert socket["socketConfig"]["SocketMode"] == "0660"
    assert socket["wantedBy"] == ["sockets.target"]
    # No port filter any more: a group with domains has a network namespace of its own.
    assert not any("port-filter" in name for name in base["services"])
    assert not any("port-filter" in name for name in base["units"])


def test_the_broker_leads_relays_to_the_hosts_egress_socket(base: dict[str, Any]) -> None:
    """The broker's relays run NixOS's systemd-socket-proxyd (which is not where the broker
    looks by itself) and lead to the socket where the host's egress proxy listens."""
    argv = base["services"]["nanoclaw-sandboxd"]["serviceConfig"]["ExecStart"].split(" ")
    assert argv[:3] == [
        f"{base['package']}/bin/nanoclaw-sandboxd",
        "--policy",
        "/etc/nanoclaw/policy.json",
    ]
    options = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert set(options) == {
        "--policy",
        "--egress-socket",
        "--credential-socket",
        "--socket-proxyd",
        "--agent-cli",
    }
    assert options["--socket-proxyd"] == (
        f"{base['paths']['systemd']}/lib/systemd/systemd-socket-proxyd"
    )
    assert options["--egress-socket"] == base["settings"]["egress_socket"]
    assert parse_config(without_nulls(base["settings"])).egress_socket == Path(
        options["--egress-socket"]
    )
    # In the unit file, with its dependency on systemd's package.
    unit = base["units"]["nanoclaw-sandboxd.service"]
    assert f"--socket-proxyd {options['--socket-proxyd']}" in unit


def broker_options(evaluated: dict[str, Any]) -> dict[str, str]:
    argv = evaluated["services"]["nanoclaw-sandboxd"]["serviceConfig"]["ExecStart"].split(" ")
    return dict(zip(argv[1::2], argv[2::2], strict=True))


def test_the_broker_leads_model_relays_to_the_hosts_credential_socket(
    base: dict[str, Any],
) -> None:
    """Each agent unit's model relay leads where the host's credential proxy listens: the
    broker's --credential-socket is the host's credential_socket."""
    options = broker_options(base)
    assert options["--credential-socket"] == "/run/nanoclaw-credentials/proxy.sock"
    assert options["--credential-socket"] == base["settings"]["credential_socket"]
    config = parse_config(without_nulls(base["settings"]))
    assert config.credential_socket == Path(options["--credential-socket"])


def test_the_broker_runs_the_packages_cli_in_agent_units(base: dict[str, Any]) -> None:
    """--agent-cli names the CLI of the Agent SDK the package's Python environment has (the
    loader claude-agent-sdk.nix puts in the CLI's place), with its string context: the unit
    depends on the SDK, whatever the broker's own environment would find."""
    sdk = base["sdk"]
    assert sdk["dependency"] is True
    cli = f"{sdk['path']}/lib/python3.12/site-packages/claude_agent_sdk/_bundled/claude"
    assert broker_options(base)["--agent-cli"] == cli
    assert sdk["drvPath"] in base["execStartNeeds"]["nanoclaw-sandboxd"]
    assert f"--agent-cli {cli}" in base["units"]["nanoclaw-sandboxd.service"]
    # claude-agent-sdk.nix writes the loader there.
    recipe = (REPO / "nixos-module/claude-agent-sdk.nix").read_text()
    assert "bundled=$out/${python.sitePackages}/claude_agent_sdk/_bundled" in recipe
    assert 'substitute ${./claude-loader.sh} "$bundled/claude"' in recipe


def test_agent_cli_may_be_another(nixpkgs_lib: Path) -> None:
    sample = changed(
        "defaults.agent.cpuWeight = 50;",
        'defaults.agent.cpuWeight = 50; agentCli = "/opt/claude/bin/claude";',
    )
    assert broker_options(evaluate(nixpkgs_lib, sample))["--agent-cli"] == "/opt/claude/bin/claude"


def test_a_package_that_names_no_cli_needs_agent_cli(nixpkgs_lib: Path) -> None:
    sample = changed(
        "defaults.agent.cpuWeight = 50;",
        "defaults.agent.cpuWeight = 50; package = pkgs.coreutils;",
    )
    error = refused(nixpkgs_lib, sample)
    assert "services.nanoclaw.agentCli: the package" in error, error
    assert "set agentCli to the Claude Code CLI" in error, error


def test_the_host_owns_the_proxy_sockets_directories(base: dict[str, Any]) -> None:
    """The host makes its egress proxy's and credential proxy's sockets in runtime
    directories of its own, open to the relays' dynamic users (units/nanoclaw.service has
    the same)."""
    config = base["services"]["nanoclaw"]["serviceConfig"]
    assert config["RuntimeDirectory"] == ["nanoclaw-egress", "nanoclaw-credentials"]
    assert config["RuntimeDirectoryMode"] == "0755"
    for key, directory in (("egress_socket", 0), ("credential_socket", 1)):
        socket = Path(base["settings"][key])
        assert socket.parent == Path("/run") / config["RuntimeDirectory"][directory]
    unit = base["units"]["nanoclaw.service"]
    assert "RuntimeDirectory=nanoclaw-egress\nRuntimeDirectory=nanoclaw-credentials\n" in unit
    assert "RuntimeDirectoryMode=0755\n" in unit
    plain = (REPO / "units/nanoclaw.service").read_text()
    assert f"RuntimeDirectory={' '.join(config['RuntimeDirectory'])}\n" in plain


def test_a_runtime_directory_of_ones_own_joins_the_hosts(nixpkgs_lib: Path) -> None:
    sample = changed(
        "  services.nanoclaw = {",
        '  systemd.services.nanoclaw.serviceConfig.RuntimeDirectory = "nanoclaw-extra";\n'
        "  services.nanoclaw = {",
    )
    config = evaluate(nixpkgs_lib, sample)["services"]["nanoclaw"]["serviceConfig"]
    assert sorted(config["RuntimeDirectory"]) == [
        "nanoclaw-credentials",
        "nanoclaw-egress",
        "nanoclaw-extra",
    ]


def test_confining_no_agent_warns(nixpkgs_lib: Path, base: dict[str, Any]) -> None:
    assert base["warnings"] == []
    sample = changed('timezone = "Europe/Berlin";', "confine_agent = false;")
    evaluated = evaluate(nixpkgs_lib, sample)
    assert evaluated["settings"]["confine_agent"] is False
    (warning,) = evaluated["warnings"]
    assert "services.nanoclaw.settings.confine_agent is false" in " ".join(warning.split())


def test_a_group_reaches_cidrs_or_domains_not_both(nixpkgs_lib: Path, base: dict[str, Any]) -> None:
    # The control: one group with domains and one with cidrs evaluate.
    assert base["failed"] == []
    assert base["policy"]["groups"]["main"]["egress"] == {
        "domains": ["github.com", "*.githubusercontent.com"]
    }
    assert base["policy"]["groups"]["family"]["egress"] == {"cidrs": ["140.82.112.0/20"]}
    both = changed(
        "egress.domains = [",
        'egress.cidrs = [ "10.0.0.0/8" ]; egress.domains = [',
    )
    failed = [" ".join(message.split()) for message in evaluate(nixpkgs_lib, both)["failed"]]
    assert failed == [
        "services.nanoclaw.groups.main.egress: has both cidrs and domains, but a group reaches "
        "either egress.cidrs (on the host's network, by IP) or egress.domains (in a network of "
        "its own, through the egress proxy), not both: make two groups."
    ]
    # Which nanoclaw's own validator refuses too.
    assert not python_accepts({"cidrs": ["10.0.0.0/8"], "domains": ["github.com"]})
    assert python_accepts({"cidrs": ["10.0.0.0/8"]}) and python_accepts({"domains": ["github.com"]})


def test_the_sandbox_socket_setting_moves_the_socket(nixpkgs_lib: Path) -> None:
    sample = changed(
        'timezone = "Europe/Berlin";',
        'timezone = "Europe/Berlin"; sandbox_socket = "/run/nanoclaw-broker/socket";',
    )
    evaluated = evaluate(nixpkgs_lib, sample)
    assert evaluated["sockets"]["nanoclaw-sandboxd"]["listenStreams"] == [
        "/run/nanoclaw-broker/socket"
    ]
    assert evaluated["settings"]["sandbox_socket"] == "/run/nanoclaw-broker/socket"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "family = {",
            "Family = {",
            "services.nanoclaw.groups.Family: the group name must match",
        ),
        ("family = {", "global = {", "and not be global"),
        (
            "family = {",
            "abcdefghijklmnopqr = {",
            "services.nanoclaw.groups.abcdefghijklmnopqr: the group name must match "
            "[a-z0-9][a-z0-9_-]{0,15} with at most 16 characters (lowercase letters, digits, "
            "'_' or '-'), so that its users nanoclaw-tool-abcdefghijklmnopqr and "
            "nanoclaw-agent-abcdefghijklmnopqr fit the 31",
        ),
        # 17 characters: nanoclaw-agent-<name> would be 32.
        (
            "family = {",
            "abcdefghijklmnopq = {",
            "services.nanoclaw.groups.abcdefghijklmnopq: the group name must match",
        ),
        (
            "uid = 61001;",
            "uid = 61000;",
            "services.nanoclaw.groups.family.uid: 61000 is also services.nanoclaw.groups.main.uid;",
        ),
        ("uid = 61001;", "uid = 65534;", "groups.family.uid: must not be 65534 (nobody)"),
        # family's agent user by default: 61010 + 1000, main's.
        (
            "uid = 61001;",
            "uid = 61010;",
            "services.nanoclaw.groups.family.agent.uid: 62010 is also "
            "services.nanoclaw.groups.main.agent.uid; every group's tool user (uid) and agent "
            "user (agent.uid, by default uid + 1000) each need a uid of their own.",
        ),
        (
            "agent = { uid = 62010;",
            "agent = { uid = 61000;",
            "services.nanoclaw.groups.main.agent.uid: 61000 is also "
            "services.nanoclaw.groups.main.uid;",
        ),
        (
            "agent = { uid = 62010;",
            "agent = { uid = 61001;",
            "services.nanoclaw.groups.main.agent.uid: 61001 is also "
            "services.nanoclaw.groups.family.uid;",
        ),
        (
            "agent = { uid = 62010;",
            "agent = { uid = 65534;",
            "services.nanoclaw.groups.main.agent.uid: must not be 65534 (nobody)",
        ),
        (
            "  services.nanoclaw = {",
            '  users.users.alice = { uid = 62001; group = "users"; };\n'
            "  users.groups.media.gid = 62001;\n"
            "  services.nanoclaw = {",
            "services.nanoclaw.groups.family.agent.uid: 62001 is already the id of user alice, "
            "group media: the module's users and groups need ids of their own.",
        ),
        (
            "  services.nanoclaw = {",
            "  users.groups.media.gid = 61000;\n  services.nanoclaw = {",
            "services.nanoclaw.groups.main.uid: 61000 is already the id of group media",
        ),
        (
            "defaults.agent.cpuWeight = 50;",
            'agentCli = "/opt/my claude/claude";',
            "services.nanoclaw.agentCli: must be an absolute path without spaces, quotes, "
            "backslashes, '%' or '$', not \"/opt/my claude/claude\".",
        ),
        (
            "defaults.agent.cpuWeight = 50;",
            'agentCli = "/opt/claude/%i";',
            "services.nanoclaw.agentCli: must be an absolute path without spaces",
        ),
        (
            "confineStore = false;",
            "confineStore = false; main = true;",
            "only one group may be main",
        ),
        (
            'timezone = "Europe/Berlin";',
            'timezone = "Europe/Berlin"; groups.family.main = true;',
            "services.nanoclaw.settings.groups.family.main: must be false, as "
            "services.nanoclaw.groups.family.main",
        ),
        (
            'timezone = "Europe/Berlin";',
            'timezone = "Europe/Berlin"; groups.ops.room_id = "!ops:example.org";',
            "services.nanoclaw.settings.groups: ops has no sandbox",
        ),
        (
            'host = "/srv/project";',
            'host = "srv/project";',
            "groups.main.mounts[0].host: must be an absolute path",
        ),
        (
            'host = "/srv/project";',
            'host = "/home/me/.ssh";',
            'has the component ".ssh", which matches a',
        ),
        (
            'host = "/srv/project";',
            'host = "/srv/.env.local";',
            'has the component ".env.local"',
        ),
        (
            'sandbox = "/workspace/project";',
            'sandbox = "/workspace/group/x";',
            "groups.main.mounts[0].sandbox: must be an absolute path under /workspace/",
        ),
        (
            'sandbox = "/workspace/project";',
            'sandbox = "/srv/x";',
            "mounts[0].sandbox: must be an absolute path under /workspace/",
        ),
        (
            '"140.82.112.0/20"',
            '"140.82.112.1/20"',
            'egress.cidrs[0]: "140.82.112.1/20" has host bits set below /20',
        ),
        ('"140.82.112.0/20"', '"300.1.1.0/24"', "is not an IPv4 network"),
        ('"140.82.112.0/20"', '"github.com/20"', "is not an IP network"),
        ('"github.com"', '"https://github.com"', 'egress.domains[0]: "https://github.com" must be'),
        ('"github.com"', '"*.com"', 'egress.domains[0]: "*.com" must be'),
        ('"github.com"', '"GitHub.com"', "must be a lowercase DNS name"),
        ('"github.com"', '"10.0.0.1"', "must be a lowercase DNS name"),
        (
            'timezone = "Europe/Berlin";',
            'matrix.access_token = "syt_abc";',
            "services.nanoclaw.settings.matrix.access_token looks like a secret",
        ),
        (
            'timezone = "Europe/Berlin";',
            'model.headers = [ "sk-ant-api03-xyz" ];',
            "services.nanoclaw.settings.model.headers[0] looks like a secret",
        ),
        (
            'timezone = "Europe/Berlin";',
            'matrix.access_token_file = "/run/keys/token";',
            "set accessTokenFile and apiKeyFile instead of matrix.access_token_file",
        ),
        (
            'timezone = "Europe/Berlin";',
            'model.oauth_token_file = "/run/keys/claude-token";',
            "oauthTokenFile instead of model.oauth_token_file",
        ),
        (
            'apiKeyFile = "/run/keys/anthropic-key";',
            'apiKeyFile = "/run/keys/anthropic-key"; oauthTokenFile = "/run/keys/claude-token";',
            "services.nanoclaw.apiKeyFile and services.nanoclaw.oauthTokenFile: set at most one",
        ),
        (
            'timezone = "Europe/Berlin";',
            'sandbox_socket = "/var/lib/nanoclaw/sandbox.sock";',
            "services.nanoclaw.settings.sandbox_socket: must be a path under /run/",
        ),
        (
            'roomId = "!family:example.org";',
            "",
            "groups.family.roomId: the group needs its Matrix room",
        ),
        (
            'owners = [ "@me:example.org" ];',
            "owners = [ ];",
            "settings.matrix.owners: list at least one",
        ),
    ],
)
def test_bad_configurations_fail_with_their_message(
    nixpkgs_lib: Path, old: str, new: str, message: str
) -> None:
    failed = evaluate(nixpkgs_lib, changed(old, new))["failed"]
    assert any(message in " ".join(m.split()) for m in failed), failed


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            '"/run/keys/matrix-token"',
            '"/nix/store/00000000000000000000000000000000-matrix-token"',
            "services.nanoclaw.accessTokenFile' is not of type `absolute path not in the Nix",
        ),
        (
            '"/run/keys/anthropic-key"',
            '"keys/anthropic"',
            "services.nanoclaw.apiKeyFile' is not of type `null or absolute path not in the Nix",
        ),
        (
            "wallSeconds = 900;",
            "wallSeconds = 0;",
            "services.nanoclaw.groups.main.limits.wallSeconds' is not of type",
        ),
        (
            "agent = { uid = 62010;",
            "agent = { uid = 999;",
            "services.nanoclaw.groups.main.agent.uid' is not of type",
        ),
        # The default is checked as a value given would be: 2147483000 + 1000 is too high.
        (
            "uid = 61001;",
            "uid = 2147483000;",
            "services.nanoclaw.groups.family.agent.uid' is not of type",
        ),
        (
            'timezone = "Europe/Berlin";',
            'credential_socket = "/run/nanoclaw/credentials.sock";',
            "services.nanoclaw.settings.credential_socket' is read-only",
        ),
        (
            "defaults.agent.cpuWeight = 50;",
            'agentCli = "claude";',
            "services.nanoclaw.agentCli' is not of type",
        ),
        (
            'timezone = "Europe/Berlin";',
            'data_dir = "/srv/nanoclaw";',
            "services.nanoclaw.settings.data_dir' is read-only",
        ),
        (
            'timezone = "Europe/Berlin";',
            'egress_socket = "/run/nanoclaw/egress.sock";',
            "services.nanoclaw.settings.egress_socket' is read-only",
        ),
    ],
)
def test_values_of_the_wrong_type_fail_naming_the_option(
    nixpkgs_lib: Path, old: str, new: str, message: str
) -> None:
    error = refused(nixpkgs_lib, changed(old, new))
    assert message in error, error


def test_settings_with_secret_file_and_credential_names_pass(nixpkgs_lib: Path) -> None:
    sample = changed(
        'timezone = "Europe/Berlin";',
        "model.max_attempts = 3; max_prompt_messages = 20;",
    )
    assert evaluate(nixpkgs_lib, sample)["failed"] == []


# The Nix side of the rules (predicates.nix) against Python's, value by value.
CIDRS = [
    "140.82.112.0/20",
    "140.82.112.1/20",
    "10.0.0.0/8",
    "10.0.0.1",
    "0.0.0.0/0",
    "255.255.255.255/32",
    "256.0.0.0/8",
    "010.0.0.0/8",
    "10.0.0.0/33",
    "10.0.0.0/",
    "1.2.3/24",
    "github.com/20",
    "",
    "2001:db8::/32",
    "::1/128",
    "2001:db8::/129",
]
DOMAINS = [
    "github.com",
    "*.githubusercontent.com",
    "a.b.c.example.org",
    "localhost",
    "*.com",
    "*",
    "GitHub.com",
    "https://github.com",
    "github.com:443",
    "github.com.",
    "10.0.0.1",
    "-bad.com",
    "bad-.com",
    "a" * 63 + ".com",
    "a" * 64 + ".com",
    "xn--bcher-kva.example",
    "under_score.com",
]
PATHS = [
    "/srv/project",
    "/home/me/.ssh/id_rsa",
    "/srv/.env",
    "/srv/.envrc",
    "/srv/ID_RSA.pub",
    "/srv/credentials.json",
    "/srv/my.credentials",
    "/srv/.secret",
    "/srv/.secrets",
    "/srv/wallet.dat",
]


def python_accepts(egress: dict[str, list[str]]) -> bool:
    data = {
        "version": 1,
        "data_dir": "/var/lib/nanoclaw",
        "groups": {"g": {"uid": 61000, "egress": egress}},
    }
    try:
        parse_policy(data, "/etc/nanoclaw/policy.json")
    except ConfigError:
        return False
    return True


def test_nix_judges_cidrs_domains_and_paths_as_python_does(nixpkgs_lib: Path) -> None:
    import subprocess

    expression = f"""
      let
        lib = import {nixpkgs_lib};
        rules = lib.importJSON {REPO}/nixos-module/rules.json;
        judge = import {REPO}/nixos-module/predicates.nix {{
          inherit lib rules;
          blockedPatterns = [ "wallet.dat" ];
        }};
        values = builtins.fromJSON ''{json.dumps({"c": CIDRS, "d": DOMAINS, "p": PATHS})}'';
      in {{
        cidrs = map (cidr: judge.cidrProblem cidr == null) values.c;
        domains = map judge.domainOk values.d;
        paths = map (path: judge.blockedComponent path) values.p;
      }}
    """
    done = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expression],
        capture_output=True,
        text=True,
        env=NIX_ENV,
    )
    assert done.returncode == 0, done.stderr
    nix = json.loads(done.stdout)
    for cidr, accepted in zip(CIDRS, nix["cidrs"], strict=True):
        python = python_accepts({"cidrs": [cidr]})
        if ":" in cidr and accepted:
            continue  # IPv6 host bits are the build's check, which Python makes
        assert accepted == python, f"{cidr!r}: Nix {accepted}, Python {python}"
    for domain, accepted in zip(DOMAINS, nix["domains"], strict=True):
        python = python_accepts({"domains": [domain]})
        assert accepted == python, f"{domain!r}: Nix {accepted}, Python {python}"
    patterns = (*rules_of.DEFAULT_BLOCKED_PATTERNS, "wallet.dat")
    for path, component in zip(PATHS, nix["paths"], strict=True):
        hit = rules_of.blocked_component(path, patterns)
        assert component == (hit[0] if hit else None), path


def test_subagents_go_to_the_config_and_their_narrowing_to_the_policy(nixpkgs_lib: Path) -> None:
    sample = changed(
        "confineStore = false;",
        """confineStore = false;
        subagents.researcher = {
          description = "Looks things up.";
          prompt = "You research.";
          tools = [ "fetch" "read" ];
          readonly = true;
        };
        subagents.counter = {
          description = "Counts.";
          prompt = "You count.";
          model = "claude-haiku-4-5";
          tools = [ "bash" ];
          noEgress = true;
        };""",
    )
    evaluated = evaluate(nixpkgs_lib, sample)
    settings = without_nulls(evaluated["settings"])
    assert settings["groups"]["family"]["subagents"] == {
        "counter": {
            "description": "Counts.", "prompt": "You count.", "model": "claude-haiku-4-5",
            "tools": ["bash"],
        },
        "researcher": {"description": "Looks things up.", "prompt": "You research.",
                       "tools": ["fetch", "read"]},
    }  # fmt: skip
    family = next(g for g in parse_config(settings).groups if g.folder == "family")
    assert [sub.name for sub in family.subagents] == ["counter", "researcher"]
    policy = evaluated["policy"]["groups"]
    assert policy["family"]["subagents"] == {
        "counter": {"no_egress": True},
        "researcher": {"readonly": True},
    }
    assert "subagents" not in policy["main"]
