"""services.nanoclaw evaluated with lib.evalModules: what it renders, and what it refuses.

Needs a nixpkgs `lib` tree (the directory holding `default.nix` of nixpkgs' lib, e.g.
nix-community/nixpkgs.lib's `lib/`), named by NANOCLAW_NIXPKGS_LIB; without it every test
here is skipped, loudly. The NixOS options tree is stubbed: systemd, users, environment
and the rest are free-form, `pkgs` gives placeholder store paths. What needs a build (the
package, the store closure joining the policy) is for the NixOS tests (vm-tests/).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from nanoclaw.config import parse_config
from nanoclaw.policy_file import parse_policy

REPO = Path(__file__).resolve().parent.parent
NIX_ENV = {**os.environ, "NIX_CONFIG": "build-users-group ="}
LIB_VARIABLE = "NANOCLAW_NIXPKGS_LIB"


def store(name: str) -> str:
    return f"/nix/store/{'0' * 32}-{name}"


# Just enough of NixOS and nixpkgs around the module. `sample` is a module's file.
HARNESS = """
{ lib, repo, sample }:
let
  lib' = import lib;
  inherit (lib') mkOption types;
  path = name: "/nix/store/00000000000000000000000000000000-${name}";
  package = name: { type = "derivation"; name = name; outPath = path name; };
  freeform = mkOption { type = types.attrsOf types.anything; default = { }; };
  pkgs = {
    formats.toml = { }: {
      type = types.attrsOf types.anything;
      generate = name: _: path name;
    };
    writeText = name: _: path name;
    closureInfo = { rootPaths }: path "closure-info";
    runCommand = name: _: _: path name;
    callPackage = _: _: package "nanoclaw";
  } // lib'.genAttrs [ "jq" "nftables" "cacert" "coreutils" "git" "ripgrep" ] package;
  stub = {
    options = {
      assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; };
      warnings = mkOption { type = types.listOf types.str; default = [ ]; };
      systemd = freeform;
      users = freeform;
      programs = freeform;
      environment = mkOption {
        default = { };
        type = types.submodule {
          freeformType = types.attrsOf types.anything;
          options.binsh = mkOption { default = "${path "bash"}/bin/sh"; };
          options.usrbinenv = mkOption { default = "${path "coreutils"}/bin/env"; };
        };
      };
      system.build.etc = mkOption { default = path "etc"; };
    };
  };
  evaluated = lib'.evalModules {
    modules = [ (/. + repo + "/nixos-module") stub (/. + sample) ];
    specialArgs = { inherit pkgs; };
  };
  inherit (evaluated) config;
  cfg = config.services.nanoclaw;
  failed = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
in
if failed != [ ] then { inherit failed; } else {
  inherit failed;
  inherit (config) warnings users programs;
  inherit (cfg) settings policy;
  configFile = "${cfg.configFile}";
  etc = config.environment.etc;
  systemPackages = config.environment.systemPackages;
  services = config.systemd.services;
  sockets = config.systemd.sockets;
  tmpfiles = config.systemd.tmpfiles.settings;
}
"""

# Two groups as the README has them: a project with GitHub egress, and one with nothing.
BASE = """
{ pkgs, ... }: {
  services.nanoclaw = {
    enable = true;
    package = { type = "derivation"; name = "nanoclaw"; outPath = "/nix/store/nanoclaw"; };
    homeserverUrl = "https://matrix.example.org";
    userId = "@nanoclaw:example.org";
    owners = [ "@me:example.org" ];
    accessTokenFile = "/run/keys/matrix-token";
    apiKeyFile = "/run/keys/anthropic-key";
    model = "claude-sonnet-4-5";
    settings.timezone = "Europe/Berlin";
    proxy = { address = "127.0.0.9"; port = 3128; };
    defaults.limits.tasksMax = 128;
    groups = {
      main = {
        uid = 61000;
        main = true;
        roomId = "!owners:example.org";
        mounts = [ { host = "/srv/project"; sandbox = "/workspace/project"; writable = true; } ];
        egress.cidrs = [ "140.82.112.0/20" ];
        egress.domains = [ "github.com" "*.githubusercontent.com" ];
        packages = [ pkgs.git pkgs.ripgrep ];
        limits = { memoryMaxBytes = 2147483648; wallSeconds = 900; };
      };
      family = {
        uid = 61001;
        roomId = "!family:example.org";
        trigger = "@Andy";
        allowedSenders = [ "@me:example.org" "@partner:example.org" ];
        confineStore = false;
      };
    };
  };
}
"""

# The policy BASE must render, written by hand; parse_policy must read the two alike.
BASE_POLICY: dict[str, Any] = {
    "version": 1,
    "data_dir": "/var/lib/nanoclaw",
    "protected_paths": ["/etc/nanoclaw"],
    "proxy": {"address": "127.0.0.9", "port": 3128},
    "defaults": {"limits": {"tasks_max": 128}},
    "groups": {
        "main": {
            "uid": 61000,
            "main": True,
            "mounts": [{"host": "/srv/project", "sandbox": "/workspace/project", "writable": True}],
            "egress": {
                "cidrs": ["140.82.112.0/20"],
                "domains": ["github.com", "*.githubusercontent.com"],
            },
            "path": [store("git") + "/bin", store("ripgrep") + "/bin"],
            "empty_paths": ["/nix/store"],
            "read_only_paths": [store("etc")],
            "limits": {"memory_max_bytes": 2147483648, "wall_seconds": 900},
        },
        "family": {"uid": 61001},
    },
}


@pytest.fixture(scope="session")
def nixpkgs_lib() -> Path:
    value = os.environ.get(LIB_VARIABLE)
    if not value:
        reason = (
            f"{LIB_VARIABLE} is not set: the NixOS module was NOT evaluated. Point it at a "
            "nixpkgs lib/ tree (nix-community/nixpkgs.lib) to run these tests."
        )
        print(f"\n*** SKIPPED: {reason}\n", file=sys.stderr)
        pytest.skip(reason)
    path = Path(value)
    assert (path / "default.nix").is_file(), f"{LIB_VARIABLE}={value} has no default.nix"
    assert shutil.which("nix-instantiate"), "nix-instantiate is needed (scripts/host-deps)"
    return path


def evaluate(lib: Path, sample: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        module = Path(directory) / "sample.nix"
        module.write_text(sample)
        return _evaluate(lib, module)


def _evaluate(lib: Path, sample: Path) -> dict[str, Any]:
    result = subprocess.run(
        [
            "nix-instantiate",
            "--eval",
            "--strict",
            "--json",
            "--argstr",
            "lib",
            str(lib),
            "--argstr",
            "repo",
            str(REPO),
            "--argstr",
            "sample",
            str(sample),
            "-E",
            HARNESS,
        ],
        capture_output=True,
        text=True,
        env=NIX_ENV,
    )
    assert result.returncode == 0, f"the module does not evaluate:\n{result.stderr}"
    value: dict[str, Any] = json.loads(result.stdout)
    return value


def changed(old: str, new: str, sample: str = BASE) -> str:
    assert sample.count(old) == 1, old
    return sample.replace(old, new)


@pytest.fixture(scope="session")
def base(nixpkgs_lib: Path) -> dict[str, Any]:
    evaluated = evaluate(nixpkgs_lib, BASE)
    assert evaluated["failed"] == []
    return evaluated


def test_the_settings_are_a_valid_host_config(base: dict[str, Any]) -> None:
    settings = base["settings"]
    assert settings["matrix"] == {
        "homeserver": "https://matrix.example.org",
        "user_id": "@nanoclaw:example.org",
        "owners": ["@me:example.org"],
        "access_token_credential": "matrix-token",
    }
    assert settings["model"] == {"name": "claude-sonnet-4-5", "api_key_credential": "anthropic-key"}
    assert settings["sandbox_socket"] == "/run/nanoclaw/sandbox.sock"
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


def test_the_policy_is_the_one_written_by_hand(base: dict[str, Any]) -> None:
    assert base["policy"] == BASE_POLICY
    path = "/etc/nanoclaw/policy.json"
    assert parse_policy(base["policy"], path) == parse_policy(BASE_POLICY, path)


def test_the_files_in_etc(base: dict[str, Any]) -> None:
    etc = base["etc"]
    assert etc["nanoclaw/config.toml"]["source"] == base["configFile"]
    # A copy, so the path the units hide is a file of its own.
    assert etc["nanoclaw/policy.json"]["mode"] == "0444"
    assert etc["nanoclaw/policy.json"]["source"].endswith("-nanoclaw-policy.json")
    assert base["systemPackages"] == ["/nix/store/nanoclaw"]


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
        assert groups[f"nanoclaw-tool-{name}"] == {"gid": uid}
    assert "nanoclaw" in groups


def test_state_directories(base: dict[str, Any]) -> None:
    rules = base["tmpfiles"]["10-nanoclaw"]
    assert rules["/var/lib/nanoclaw"]["d"] == {
        "mode": "0750",
        "user": "nanoclaw",
        "group": "nanoclaw",
    }
    assert rules["/var/lib/nanoclaw/groups/family"]["d"]["user"] == "nanoclaw-tool-family"
    assert rules["/var/lib/nanoclaw/global"]["d"]["user"] == "nanoclaw-tool-main"


def test_the_host_service_is_hardened_and_gets_its_secrets_as_credentials(
    base: dict[str, Any],
) -> None:
    host = base["services"]["nanoclaw"]
    config = host["serviceConfig"]
    assert (
        config["ExecStart"] == f"/nix/store/nanoclaw/bin/nanoclaw run --config {base['configFile']}"
    )
    assert config["LoadCredential"] == [
        "matrix-token:/run/keys/matrix-token",
        "anthropic-key:/run/keys/anthropic-key",
    ]
    assert (config["User"], config["StateDirectory"]) == ("nanoclaw", "nanoclaw")
    assert (config["Type"], config["NotifyAccess"]) == ("notify", "main")
    assert config["ProtectSystem"] == "strict" and config["PrivateUsers"] is True
    assert config["CapabilityBoundingSet"] == ""
    assert "nanoclaw-sandboxd.socket" in host["after"]


@pytest.mark.parametrize("name", ["nanoclaw", "nanoclaw-sandboxd", "nanoclaw-port-filter"])
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
        'settings.timezone = "Europe/Berlin";',
        'settings.timezone = "Europe/Berlin"; serviceOverrides.PrivateUsers = false;',
    )
    config = evaluate(nixpkgs_lib, sample)["services"]["nanoclaw"]["serviceConfig"]
    assert config["PrivateUsers"] is False and config["ProtectSystem"] == "strict"


def test_the_broker_its_socket_and_the_port_filter(base: dict[str, Any]) -> None:
    broker = base["services"]["nanoclaw-sandboxd"]
    assert broker["serviceConfig"]["ExecStart"] == (
        "/nix/store/nanoclaw/bin/nanoclaw-sandboxd --policy /etc/nanoclaw/policy.json"
    )
    assert broker["serviceConfig"]["CapabilityBoundingSet"] == "CAP_SYS_ADMIN"
    assert "nanoclaw-port-filter.service" in broker["after"]
    socket = base["sockets"]["nanoclaw-sandboxd"]
    assert socket["listenStreams"] == ["/run/nanoclaw/sandbox.sock"]
    assert socket["socketConfig"]["SocketGroup"] == "nanoclaw"
    assert socket["socketConfig"]["SocketMode"] == "0660"
    assert socket["wantedBy"] == ["sockets.target"]
    port_filter = base["services"]["nanoclaw-port-filter"]
    assert port_filter["path"] == [store("nftables")]
    # A start, restart or reload of nftables.service flushes every table: ours follows.
    assert "nftables.service" in port_filter["after"]
    assert "nftables.service" in port_filter["partOf"]
    assert port_filter["unitConfig"]["ReloadPropagatedFrom"] == ["nftables.service"]
    assert port_filter["serviceConfig"]["ExecReload"] == port_filter["serviceConfig"]["ExecStart"]
    assert port_filter["serviceConfig"]["CapabilityBoundingSet"] == "CAP_NET_ADMIN"
    assert base["programs"]["nix-ld"]["enable"] is True


def test_a_secret_file_in_the_store_is_warned_about(nixpkgs_lib: Path) -> None:
    sample = changed('"/run/keys/matrix-token"', '"/nix/store/abc-matrix-token"')
    warnings = evaluate(nixpkgs_lib, sample)["warnings"]
    assert any("accessTokenFile is in the Nix store" in w for w in warnings), warnings


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "family = {",
            "Family = {",
            "services.nanoclaw.groups.Family: the group name must match",
        ),
        ("family = {", "global = {", 'not be "global"'),
        ("uid = 61001;", "uid = 61000;", "groups.family.uid: 61000 is also the uid of group(s)"),
        (
            "confineStore = false;",
            "confineStore = false; main = true;",
            "only one group may be main",
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
            'proxy = { address = "127.0.0.9"; port = 3128; };',
            "",
            "egress.domains: are reached only through the egress proxy",
        ),
        (
            'settings.timezone = "Europe/Berlin";',
            'settings.matrix.access_token = "syt_abc";',
            "services.nanoclaw.settings.matrix.access_token looks like a secret",
        ),
        (
            'settings.timezone = "Europe/Berlin";',
            'settings.model.headers = [ "sk-ant-api03-xyz" ];',
            "services.nanoclaw.settings.model.headers[0] looks like a secret",
        ),
        (
            'roomId = "!family:example.org";',
            "",
            "groups.family.roomId: the group needs its Matrix room",
        ),
        ('owners = [ "@me:example.org" ];', "owners = [ ];", "owners: list at least one"),
        ('"/run/keys/anthropic-key"', '"keys/anthropic"', "apiKeyFile: must be an absolute path"),
    ],
)
def test_bad_configurations_fail_with_their_message(
    nixpkgs_lib: Path, old: str, new: str, message: str
) -> None:
    failed = evaluate(nixpkgs_lib, changed(old, new))["failed"]
    assert any(message in " ".join(m.split()) for m in failed), failed


def test_settings_with_secret_file_and_credential_names_pass(nixpkgs_lib: Path) -> None:
    sample = changed(
        'settings.timezone = "Europe/Berlin";',
        "settings.model.max_attempts = 3; settings.max_prompt_messages = 20;",
    )
    assert evaluate(nixpkgs_lib, sample)["failed"] == []
