# services.nanoclaw: the agent host, the root broker that starts its tool units, their
# users, state and files, from the options in options.nix. Mirrors units/, which the Debian
# appliance uses; vm-tests/node.nix declares the VM tests' node with it.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.nanoclaw;
  rules = lib.importJSON ./rules.json;
  settingsFormat = pkgs.formats.toml { };
  policyPath = "/etc/nanoclaw/policy.json";
  hardening = import ./hardening.nix;
  agent = import ./agent.nix { inherit rules; };
  toolUser = name: "${rules.group.tool_user_prefix}${name}";
  agentUser = name: "${agent.userPrefix}${name}";
  # The host's egress proxy listens there (settings.egress_socket), in a runtime directory
  # of the host's; the broker's relays for groups with domains lead there.
  egressSocket = cfg.settings.egress_socket;
  # And its credential proxy there (settings.credential_socket): the broker's model relays
  # lead there from each agent unit's network namespace.
  credentialSocket = cfg.settings.credential_socket;
  confined = lib.filterAttrs (_: group: group.confineStore) cfg.groups;

  # What a confined group's units read of /etc. On NixOS /etc/hosts links to
  # /etc/static/hosts, /etc/static to the /etc tree in the store, and that to the file: but
  # that tree holds this policy, so the policy can never name it (Nix stops with an
  # infinite recursion). These entries link straight to their files instead
  # ("direct-symlink", as NixOS links /etc/localtime), and the files join each confined
  # group's closure. Other /etc links into the store stay dangling in such units.
  unitEtc = [
    "hosts"
    "nsswitch.conf"
    "zoneinfo"
  ]
  ++ lib.optionals config.security.pki.installCACerts [
    "ssl/certs/ca-certificates.crt"
    "ssl/certs/ca-bundle.crt"
  ];

  # For groups with confineStore: /bin/sh and /usr/bin/env (the argv of every tool), the
  # image scaler's Python and the files of unitEtc, with each group's packages.
  confinedRoots = lib.filter (path: path != null) [
    config.environment.binsh
    config.environment.usrbinenv
    cfg.settings.image_scaler_python
  ]
  ++ map (name: config.environment.etc.${name}.source) unitEtc;

  basePolicy = import ./policy.nix { inherit lib cfg; };

  # A file naming the store paths a group's closure starts from (strings with context, as
  # systemd-confinement does), and that closure.
  closureOf =
    name: group:
    pkgs.closureInfo {
      rootPaths = [
        (pkgs.writeText "nanoclaw-tools-${name}-roots" (
          lib.concatMapStringsSep "\n" toString (group.packages ++ confinedRoots)
        ))
      ];
    };
  closures = lib.mapAttrs closureOf confined;

  # The policy file: each confined group's closure joins its read_only_paths (the roots
  # file itself left out), then nanoclaw's own validator reads it and compiles each
  # group's unit, so a policy the broker would refuse never builds.
  policyFile =
    pkgs.runCommand "nanoclaw-policy.json"
      {
        nativeBuildInputs = [
          pkgs.jq
          cfg.package
        ];
        base = builtins.toJSON basePolicy;
        passAsFile = [ "base" ];
      }
      ''
        cp "$basePath" policy.json
        ${lib.concatStrings (
          lib.mapAttrsToList (name: closure: ''
            jq --arg group ${lib.escapeShellArg name} --rawfile paths ${closure}/store-paths '
              .groups[$group].read_only_paths += ($paths | split("\n")
                | map(select(. != "" and (endswith("-nanoclaw-tools-" + $group + "-roots") | not))))
            ' policy.json > next.json
            mv next.json policy.json
          '') closures
        )}
        jq --sort-keys . policy.json > "$out"
        # Checked outside the store, as the broker reads its copy in /etc: a file under
        # an empty_paths entry such as /nix/store would be refused as hidden.
        cp "$out" "$PWD/check.json"
        for group in ${lib.escapeShellArgs (lib.attrNames cfg.groups)}; do
          nanoclaw policy explain --policy "$PWD/check.json" "$group" > /dev/null
        done
      '';

  hostService = {
    description = "nanoclaw agent host (Matrix rooms, Claude agent sessions)";
    # Tool calls go through the broker's socket; the host never runs them itself.
    wants = [
      "network-online.target"
      "nanoclaw-sandboxd.socket"
    ];
    after = [
      "network-online.target"
      "nanoclaw-sandboxd.socket"
    ];
    wantedBy = [ "multi-user.target" ];
    restartTriggers = [ cfg.configFile ];
    serviceConfig =
      {
        # READY=1 after the first sync and the broker's answer; the event loop pets the
        # watchdog, so a hung loop is restarted (units/nanoclaw.service has the same).
        Type = "notify";
        NotifyAccess = "main";
        WatchdogSec = 30;
        TimeoutStartSec = 300;
        User = "nanoclaw";
        Group = "nanoclaw";
        ExecStartPre = "${cfg.package}/bin/nanoclaw check-config --config ${cfg.configFile}";
        ExecStart = "${cfg.package}/bin/nanoclaw run --config ${cfg.configFile}";
        # Read by systemd as root and handed over; the files never enter the store.
        LoadCredential = [
          "${cfg.settings.matrix.access_token_credential}:${cfg.accessTokenFile}"
        ]
        ++ lib.optional (
          cfg.apiKeyFile != null
        ) "${cfg.settings.model.api_key_credential}:${cfg.apiKeyFile}"
        ++ lib.optional (
          cfg.oauthTokenFile != null
        ) "${cfg.settings.model.oauth_token_credential}:${cfg.oauthTokenFile}";
        StateDirectory = lib.mkIf (cfg.dataDir == "/var/lib/nanoclaw") "nanoclaw";
        StateDirectoryMode = "0750";
        # The sockets of the egress proxy and of the credential proxy: the relays that lead
        # there run as dynamic users, so the directories are open to all (every request
        # needs a secret, or a live placeholder). A list, so others add theirs.
        RuntimeDirectory = map (socket: lib.removePrefix "/run/" (dirOf socket)) [
          egressSocket
          credentialSocket
        ];
        RuntimeDirectoryMode = "0755";
        # SIGTERM drains runs in progress for up to 60 s; then the rest of the cgroup is killed.
        KillMode = "mixed";
        TimeoutStopSec = 90;
        Restart = "on-failure";
        RestartSec = 5;
      }
      // lib.mapAttrs (_: lib.mkDefault) hardening.host
      // lib.optionalAttrs (cfg.dataDir != "/var/lib/nanoclaw") {
        ReadWritePaths = [ cfg.dataDir ];
      }
      // cfg.serviceOverrides;
  };

  # units/nanoclaw-sandboxd.service: root, for transient units with any User=, and nothing
  # else but the system bus, the policy file and its socket.
  brokerService = {
    description = "nanoclaw sandbox broker (runs tool calls in transient units)";
    requires = [ "nanoclaw-sandboxd.socket" ];
    after = [
      "nanoclaw-sandboxd.socket"
      "dbus.service"
    ];
    restartTriggers = [ policyFile ];
    serviceConfig = lib.mapAttrs (_: lib.mkDefault) (
      hardening.broker
      // {
        Type = "simple";
        # A group with domains gets a relay: a socket unit in its units' network namespace
        # whose service, systemd-socket-proxyd, leads to the host's egress proxy; each agent
        # unit gets one to the host's credential proxy. NixOS's systemd keeps
        # systemd-socket-proxyd where the broker does not look. The agent units run the
        # package's CLI, named here rather than found in the broker's Python environment.
        ExecStart = lib.concatStringsSep " " [
          "${cfg.package}/bin/nanoclaw-sandboxd"
          "--policy ${policyPath}"
          "--egress-socket ${egressSocket}"
          "--credential-socket ${credentialSocket}"
          "--socket-proxyd ${config.systemd.package}/lib/systemd/systemd-socket-proxyd"
          "--agent-cli ${cfg.agentCli}"
        ];
      }
    );
  };

in
{
  imports = [ ./options.nix ];

  config = lib.mkIf cfg.enable {
    assertions = import ./checks.nix {
      inherit
        lib
        cfg
        rules
        agent
        ;
      inherit (config) users;
    };
    warnings = lib.optional (!cfg.settings.confine_agent) ''
      services.nanoclaw.settings.confine_agent is false: each group's agent runtime (the Claude
      Code CLI) runs in the host's process tree, as the host's user, beside the Matrix token,
      the API key, the database and every transcript, not in its group's agent unit.'';

    services.nanoclaw = {
      settings = import ./settings.nix { inherit lib cfg; };
      policy = basePolicy;
      # TOML has no null: a declared key left null is left out.
      configFile = settingsFormat.generate "nanoclaw-config.toml" (
        lib.filterAttrsRecursive (_: value: value != null) cfg.settings
      );
    };

    environment.etc = {
      "nanoclaw/config.toml".source = cfg.configFile;
      # A copy, not a link into the store: the file units hide is the file the broker reads.
      "nanoclaw/policy.json" = {
        source = policyFile;
        mode = "0444";
      };
    }
    // lib.optionalAttrs (confined != { }) (
      lib.genAttrs unitEtc (_: {
        mode = lib.mkDefault "direct-symlink";
      })
    );
    environment.systemPackages = [ cfg.package ];

    # Per group, a user and group (uid = gid) for its tool units and one for its agent unit;
    # systemd needs both entries for a unit's User= and Group=.
    users.users = {
      nanoclaw = {
        isSystemUser = true;
        group = "nanoclaw";
        home = cfg.dataDir;
        description = "nanoclaw agent host";
      };
    }
    // lib.mapAttrs' (
      name: group:
      lib.nameValuePair (toolUser name) {
        isSystemUser = true;
        inherit (group) uid;
        group = toolUser name;
        description = "nanoclaw tool units of group ${name}";
      }
    ) cfg.groups
    // lib.mapAttrs' (
      name: group:
      lib.nameValuePair (agentUser name) {
        isSystemUser = true;
        inherit (group.agent) uid;
        group = agentUser name;
        description = "nanoclaw agent unit of group ${name}";
      }
    ) cfg.groups;
    # Members of nanoclaw may use the broker's socket: the host only.
    users.groups = {
      nanoclaw = { };
    }
    // lib.mapAttrs' (name: group: lib.nameValuePair (toolUser name) { gid = group.uid; }) cfg.groups
    // lib.mapAttrs' (name: group: lib.nameValuePair (agentUser name) { gid = group.agent.uid; }) cfg.groups;

    # Each group's folder is its tool units' alone; the host keeps its memory and sessions
    # in directories of its own, which it makes.
    systemd.tmpfiles.settings."10-nanoclaw" = {
      ${cfg.dataDir}.d = {
        mode = "0750";
        user = "nanoclaw";
        group = "nanoclaw";
      };
      "${cfg.dataDir}/groups".d = {
        mode = "0750";
        user = "nanoclaw";
        group = "nanoclaw";
      };
    }
    // lib.mapAttrs' (
      name: _:
      lib.nameValuePair "${cfg.dataDir}/groups/${name}" {
        d = {
          mode = "0700";
          user = toolUser name;
          group = toolUser name;
        };
      }
    ) cfg.groups;

    systemd.sockets.nanoclaw-sandboxd = {
      description = "nanoclaw sandbox broker socket";
      wantedBy = [ "sockets.target" ];
      listenStreams = [ cfg.settings.sandbox_socket ];
      # Only the agent host's group may ask for tool units.
      socketConfig = {
        SocketUser = "root";
        SocketGroup = "nanoclaw";
        SocketMode = "0660";
        DirectoryMode = "0755";
        Accept = false;
      };
    };

    # The broker serves the main process of nanoclaw.service only: keep that name.
    systemd.services = {
      nanoclaw = hostService;
      nanoclaw-sandboxd = brokerService;
    };
  };

  meta.doc = ./README.md;
}
