# The options of services.nanoclaw. What they turn into is in default.nix (units, users),
# settings.nix (the host's config file) and policy.nix (the sandbox policy). The rules they
# are checked against (rules.json) are written by nanoclaw/rules.py from the Python code.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    mkOption
    mkEnableOption
    types
    literalExpression
    ;
  cfg = config.services.nanoclaw;
  rules = lib.importJSON ./rules.json;
  limits = import ./limits.nix { inherit lib; };
  agent = import ./agent.nix { inherit rules; };
  agentLimits = import ./limits.nix {
    inherit lib;
    inherit (agent) limits;
  };
  settingsFormat = pkgs.formats.toml { };

  # One option per limit of `spec` (limits.nix), `null` by default: `fallback` then.
  limitOptions =
    spec: fallback:
    lib.mapAttrs (
      _: limit:
      mkOption {
        type = types.nullOr (types.ints.between limit.min limit.max);
        default = null;
        description = "${limit.text} (${toString limit.min} to ${toString limit.max}; nanoclaw's default: ${toString limit.default})${fallback}.";
      }
    ) spec;

  limitsOption =
    what:
    mkOption {
      default = { };
      description = ''
        Resource limits of ${what}'s tool units. A limit left `null` is
        ${
          if what == "every group" then "nanoclaw's built-in default" else "the one in `defaults.limits`"
        }.
      '';
      example = {
        memoryMaxBytes = 1073741824;
        wallSeconds = 900;
      };
      type = types.submodule { options = limitOptions limits ""; };
    };

  mountType = types.submodule {
    options = {
      host = mkOption {
        type = types.str;
        example = "/srv/project";
        description = ''
          The host directory to bind. Never `/`, the data directory, a protected path,
          `/run`, `/var/lib`, `/proc`, ..., and no component may match a blocked pattern
          (`.ssh`, `.env*`, `credentials`, ...).
        '';
      };
      sandbox = mkOption {
        type = types.str;
        example = "/workspace/project";
        description = "Where the tool units see it: under `${rules.workspace}/`, not ${
          lib.concatMapStringsSep " or " (place: "`${place}`") rules.reserved_sandbox
        }.";
      };
      writable = mkOption {
        type = types.bool;
        default = false;
        description = "Whether tool units may write there; read-only otherwise.";
      };
      protect = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Whether the broker hides, inside this mount, what the owner's own tools load
          and the secrets kept there (`.git`, `.claude`, `.vscode`, `.env*`, ...) from every
          tool unit. `false` shows the directory as it is.
        '';
      };
    };
  };

  subagentType = types.submodule {
    options = {
      description = mkOption {
        type = types.str;
        example = "Looks things up on the web and reports what it found.";
        description = "What the subagent is for: the main agent chooses by it.";
      };
      prompt = mkOption {
        type = types.str;
        example = "You research one question and answer with sources.";
        description = "The subagent's system prompt.";
      };
      model = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "claude-haiku-4-5";
        description = "Its model; `null`: the main agent's.";
      };
      tools = mkOption {
        type = types.nonEmptyListOf types.str;
        example = [
          "bash"
          "read"
          "fetch"
        ];
        description = ''
          The group's tools it gets, by name (bash, read, write, edit, glob, grep, fetch,
          send_message, ...): a subset of its group's; a call of any other is refused.
        '';
      };
      readonly = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Whether its tool units see the workspace and every mount read-only (the broker
          narrows the group's sandbox for it, from the policy file).
        '';
      };
      noEgress = mkOption {
        type = types.bool;
        default = false;
        description = "Whether its tool units get none of the group's egress.";
      };
    };
  };

  groupType = types.submodule (
    { name, config, ... }:
    {
      options = {
        uid = mkOption {
          type = types.ints.between rules.uid.min rules.uid.max;
          example = 61001;
          description = ''
            The user and group ID of this group's tool units, distinct per group. The module
            creates user and group `${rules.group.tool_user_prefix}${name}` with it.
          '';
        };
        agent = {
          uid = mkOption {
            type = types.ints.between rules.uid.min rules.uid.max;
            default = config.uid + agent.uidOffset;
            defaultText = literalExpression "uid + ${toString agent.uidOffset}";
            example = 62001;
            description = ''
              The user and group ID of this group's agent unit, where the broker runs the
              group's agent runtime (the Claude Code CLI) for each session: distinct from
              every group's `uid` and `agent.uid`. The module creates user and group
              `${agent.userPrefix}${name}` with it; systemd keeps the unit's state (the
              transcripts) in `${agent.stateRoot}/${name}`, owned by it.
            '';
          };
        }
        // limitOptions agentLimits "; `null`: `defaults.agent`'s";
        main = mkOption {
          type = types.bool;
          default = false;
          description = ''
            Whether this is the owners' room (at most one group): it needs no trigger and
            may manage the other groups.
          '';
        };
        roomId = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "!abcdefghijklmnop:example.org";
          description = "The Matrix room of this group (`settings.groups.${name}.room_id`).";
        };
        trigger = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "@Andy";
          description = "What a message must start with to wake the agent (`settings.groups.${name}.trigger`); `null`: \"@\" and the assistant's name.";
        };
        requiresTrigger = mkOption {
          type = types.nullOr types.bool;
          default = null;
          description = "Whether messages need the trigger, a mention or a reply (`settings.groups.${name}.requires_trigger`); `null`: not in the main group, yes elsewhere.";
        };
        allowedSenders = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "@me:example.org" ];
          description = "Matrix users who may wake the agent here (`settings.groups.${name}.allowed_senders`); empty: anyone in the room (in the main room: the owners).";
        };
        model = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "claude-opus-4-1";
          description = "A model for this group only (`settings.groups.${name}.model`); `null`: `settings.model.name`.";
        };
        mounts = mkOption {
          type = types.listOf mountType;
          default = [ ];
          example = [
            {
              host = "/srv/project";
              sandbox = "/workspace/project";
              writable = true;
            }
          ];
          description = "Host directories the group's tool units see under `${rules.workspace}/`.";
        };
        egress = {
          cidrs = mkOption {
            type = types.listOf types.str;
            default = [ ];
            example = [ "140.82.112.0/20" ];
            description = ''
              Networks the tool units reach directly, on the host's network (no host bits
              set; not with `domains`). Empty, with no domains: no network at all.
            '';
          };
          domains = mkOption {
            type = types.listOf types.str;
            default = [ ];
            example = [
              "github.com"
              "*.githubusercontent.com"
            ];
            description = ''
              Names the tool units reach through the host's egress proxy only, from a
              network namespace of their own whose one way out leads there (not with
              `cidrs`: make two groups): exact, or `*.example.com` for every name below
              example.com.
            '';
          };
        };
        packages = mkOption {
          type = types.listOf types.package;
          default = [ ];
          example = literalExpression "with pkgs; [ coreutils git ripgrep ]";
          description = ''
            The commands this group's tool units find on `PATH` (each package's `bin`,
            before `/usr/local/bin:/usr/bin:/bin`). With `confineStore`, the units see
            the closure of these and nothing else of `/nix/store`.
          '';
        };
        confineStore = mkOption {
          type = types.bool;
          default = true;
          description = ''
            Whether the tool units see only the closure of `packages` under `/nix/store`
            (with `/bin/sh`, `/usr/bin/env` and the files `/etc/hosts`,
            `/etc/nsswitch.conf`, `/etc/zoneinfo` and the CA certificates link to), bound
            read-only into an empty tmpfs as systemd-confinement does. `false` leaves them
            the whole store, as every service sees it.
          '';
        };
        limits = limitsOption "this group";
        subagents = mkOption {
          type = types.attrsOf subagentType;
          default = { };
          example = literalExpression ''
            {
              researcher = {
                description = "Looks things up on the web.";
                prompt = "You research one question and answer with sources.";
                tools = [ "fetch" "read" ];
                readonly = true;
              };
            }
          '';
          description = ''
            Subagents the group's main agent may start (several at once), each with some of
            the group's tools. Their tool calls run in the group's tool units, narrowed by
            `readonly` and `noEgress`; none of them can start subagents.
          '';
        };
      };
    }
  );

  # Declared for their documentation and checks; the rest of `settings` is free-form.
  settingsType = types.submodule {
    freeformType = settingsFormat.type;
    options = {
      matrix = {
        homeserver = mkOption {
          type = types.str;
          example = "https://matrix.example.org";
          description = "The Matrix homeserver's client API URL.";
        };
        user_id = mkOption {
          type = types.str;
          example = "@nanoclaw:example.org";
          description = "The bot's own Matrix account.";
        };
        owners = mkOption {
          type = types.listOf types.str;
          example = [ "@me:example.org" ];
          description = "The Matrix users the bot serves: only they may invite it and talk in the main room.";
        };
        access_token_credential = mkOption {
          type = types.str;
          readOnly = true;
          default = "matrix-token";
          description = "The systemd credential holding `accessTokenFile`, which the module hands to the host.";
        };
      };
      model = {
        name = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "claude-sonnet-4-5";
          description = "The model id; `null`: the Claude CLI's default.";
        };
        base_url = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "https://api.anthropic.com";
          description = "An Anthropic-compatible endpoint; `null`: Anthropic's own API.";
        };
        api_key_credential = mkOption {
          type = types.nullOr types.str;
          readOnly = true;
          default = if cfg.apiKeyFile != null then "anthropic-key" else null;
          defaultText = literalExpression ''if apiKeyFile != null then "anthropic-key" else null'';
          description = "The systemd credential holding `apiKeyFile`, which the module hands to the host.";
        };
        oauth_token_credential = mkOption {
          type = types.nullOr types.str;
          readOnly = true;
          default = if cfg.oauthTokenFile != null then "claude-oauth-token" else null;
          defaultText = literalExpression ''if oauthTokenFile != null then "claude-oauth-token" else null'';
          description = "The systemd credential holding `oauthTokenFile`, which the module hands to the host.";
        };
      };
      data_dir = mkOption {
        type = types.str;
        readOnly = true;
        default = cfg.dataDir;
        defaultText = literalExpression "config.services.nanoclaw.dataDir";
        description = "Set by `dataDir`.";
      };
      sandbox_socket = mkOption {
        type = types.str;
        default = "/run/nanoclaw/sandbox.sock";
        description = ''
          The broker's socket, where `nanoclaw-sandboxd.socket` listens and the host asks
          for tool units. Under `/run/`, which every tool unit sees empty.
        '';
      };
      egress_socket = mkOption {
        type = types.str;
        readOnly = true;
        default = "/run/nanoclaw-egress/proxy.sock";
        description = ''
          Where the host's egress proxy listens when a group has `egress.domains`, in the
          host's `RuntimeDirectory=nanoclaw-egress`; the broker's `--egress-socket`, where
          the relays of such groups lead.
        '';
      };
      credential_socket = mkOption {
        type = types.str;
        readOnly = true;
        default = "/run/nanoclaw-credentials/proxy.sock";
        description = ''
          Where the host's credential proxy listens for the agent units, in the host's
          `RuntimeDirectory=nanoclaw-credentials`; the broker's `--credential-socket`, where
          each agent unit's model relay leads.
        '';
      };
      audit.retention_days = mkOption {
        type = types.ints.between 1 36500;
        default = 90;
        description = ''
          How many days the audit trail of tool calls (`nanoclaw audit`) is kept in the
          host's database; older rows are deleted at start and every hour.
        '';
      };
      confine_agent = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Whether each group's agent runtime (the Claude Code CLI) runs in the group's agent
          unit (`groups.<name>.agent`), started by the broker. `false` runs it in the host's
          process tree, as the host's user, beside the Matrix token, the API key, the
          database and every transcript: evaluation warns, and `nanoclaw doctor` fails.
        '';
      };
      image_scaler_python = mkOption {
        type = types.nullOr types.str;
        default = "${pkgs.python3.withPackages (ps: [ ps.pillow ])}/bin/python3";
        defaultText = literalExpression ''"''${pkgs.python3.withPackages (ps: [ ps.pillow ])}/bin/python3"'';
        description = ''
          A Python 3 with Pillow, run with `-I` in a fresh tool unit of the group, which
          makes every image sent in a JPEG the model takes (at most 1568 pixels a side,
          upright, without metadata); it joins the store paths of every group with
          `confineStore`. `null`: images go to the model as sent, only when it takes them.
        '';
      };
    };
  };
in
{
  options.services.nanoclaw = {
    enable = mkEnableOption "nanoclaw, a personal AI agent in Matrix rooms whose tool calls run in hardened transient systemd units";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = literalExpression "pkgs.callPackage ./package.nix { }";
      description = "The nanoclaw package (the host `nanoclaw` and the broker `nanoclaw-sandboxd`).";
    };

    settings = mkOption {
      type = settingsType;
      default = { };
      example = {
        matrix = {
          homeserver = "https://matrix.example.org";
          user_id = "@nanoclaw:example.org";
          owners = [ "@me:example.org" ];
          encryption = true;
        };
        model.name = "claude-sonnet-4-5";
        timezone = "Europe/Berlin";
        assistant_name = "Andy";
        max_concurrent_runs = 3;
      };
      description = ''
        The host's configuration file, `/etc/nanoclaw/config.toml` (see
        `units/config.example.toml`): the keys declared here, and any other. The module
        adds `groups.<name>` from `groups` (as defaults a setting here overrides), and the
        credentials of `accessTokenFile` and `apiKeyFile` or `oauthTokenFile`. Secrets never go here: the file
        is in the world-readable Nix store, and evaluation stops at a key or value that
        looks like one.
      '';
    };

    accessTokenFile = mkOption {
      type = types.externalPath;
      example = "/run/keys/nanoclaw-matrix-token";
      description = ''
        A file holding the bot's Matrix access token, readable by root only. It is handed to
        the host with `LoadCredential=`, so neither the token nor the file enters the store.
      '';
    };
    apiKeyFile = mkOption {
      type = types.nullOr types.externalPath;
      default = null;
      example = "/run/keys/anthropic-api-key";
      description = "A file holding the model API key, readable by root only (`LoadCredential=`); `null`: none.";
    };
    oauthTokenFile = mkOption {
      type = types.nullOr types.externalPath;
      default = null;
      example = "/run/keys/claude-oauth-token";
      description = ''
        Instead of `apiKeyFile`: a file holding a Claude subscription's token, as
        `claude setup-token` prints it (`sk-ant-oat01-...`), readable by root only
        (`LoadCredential=`); `null`: none. Only the host's credential proxy reads it.
      '';
    };

    dataDir = mkOption {
      type = types.externalPath;
      default = "/var/lib/nanoclaw";
      description = "The database, the sessions, the memory and each group's workspace; hidden from every tool unit.";
    };
    protectedPaths = mkOption {
      type = types.listOf types.str;
      default = [ "/etc/nanoclaw" ];
      example = [
        "/etc/nanoclaw"
        "/srv/secrets"
      ];
      description = "Absolute paths hidden from every tool unit and never mounted.";
    };
    blockedPatterns = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        ".password-store"
        "wallet.dat"
      ];
      description = "Path components never mounted, besides the built-in ${
        lib.concatMapStringsSep ", " (pattern: "`${pattern}`") rules.blocked_patterns
      } and `${rules.env_file_prefix}*`.";
    };
    defaults.limits = limitsOption "every group";
    defaults.agent = mkOption {
      default = { };
      example = {
        memoryMaxBytes = 2147483648;
      };
      description = ''
        Bounds of every group's agent unit, where a group's `agent` leaves them `null`. A
        bound left `null` here is nanoclaw's built-in default.
      '';
      type = types.submodule { options = limitOptions agentLimits ""; };
    };

    agentCli = mkOption {
      type = types.path;
      default =
        cfg.package.agentCli or (throw ''
          services.nanoclaw.agentCli: the package ${cfg.package.name or ""} does not say where
          its agent runtime is (passthru.agentCli): set agentCli to the Claude Code CLI the broker
          runs in each group's agent unit.'');
      defaultText = literalExpression "config.services.nanoclaw.package.agentCli";
      description = ''
        The agent runtime the broker runs in each group's agent unit (its `--agent-cli`):
        the Claude Code CLI the package's Agent SDK bundles, as nanoclaw's package installs
        it (`claude-loader.sh`, which starts the program as published with nixpkgs' glibc
        loader). Another CLI must speak the protocol of the SDK the host runs.
      '';
    };

    groups = mkOption {
      type = types.attrsOf groupType;
      default = { };
      description = ''
        The groups, by folder name (`${rules.group.pattern}`: at most
        ${toString agent.maxGroupName} characters, so that the users
        `${rules.group.tool_user_prefix}<name>` and `${agent.userPrefix}<name>` fit the
        ${toString rules.group.max_user_name} a user name may have; not
        ${lib.concatStringsSep " or " rules.group.reserved}): one Matrix room each, with its
        own memory, workspace, tool units and agent unit.
      '';
    };

    serviceOverrides = mkOption {
      type = types.attrsOf types.anything;
      default = { };
      example = {
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
          "AF_NETLINK"
          "AF_PACKET"
        ];
      };
      description = ''
        `serviceConfig` settings of `nanoclaw.service` that replace the module's hardening,
        key by key: what a setup must loosen, stated in one place.
      '';
    };

    policy = mkOption {
      type = types.attrsOf types.anything;
      readOnly = true;
      description = ''
        The sandbox policy the module renders (`policies/README.md`), as written to
        `/etc/nanoclaw/policy.json` except that there each confined group's store closure
        is added to its `read_only_paths`.
      '';
    };
    configFile = mkOption {
      type = types.path;
      readOnly = true;
      description = "The host's rendered configuration file in the store (also `/etc/nanoclaw/config.toml`).";
    };
  };
}
