# A stand-in for nixpkgs.lib.nixosSystem: the NixOS options this project's modules and
# test nodes set, declared as NixOS declares them, and what NixOS makes of them, built with
# the derivations of pkgs.nix:
#   - a unit file per service, socket and mount (nixos/lib/systemd-lib.nix), with
#     X-Restart-Triggers as a file of its own, all linked from /etc/systemd/system;
#   - tmpfiles.d from systemd.tmpfiles;
#   - system.build.etc from every environment.etc source, as nixos/modules/system/etc/etc.nix
#     makes it (so whatever /etc holds depends on it, and a file that depends on /etc while
#     /etc holds it is an infinite recursion, as on NixOS);
#   - /etc/hosts, nsswitch.conf, zoneinfo and the CA bundle, as NixOS defines them;
#   - NixOS's own refusals: user names of 32 characters or more abort, users need a group,
#     uids and gids are unique, failed assertions stop system.build.toplevel.
# Options NixOS has and this project only passes through (boot, virtualisation, firewall,
# interfaces, other services) are free-form; any other option does not exist here.
{
  lib,
  # nixpkgs.config -> the package set, as NixOS imports nixpkgs with the system's config.
  pkgsFor,
}:
{
  modules,
  specialArgs ? { },
  # x86_64-linux only, as the flake: the platform is that of `pkgs` (or nixpkgs.pkgs).
  ...
}:
let
  inherit (lib)
    mkOption
    types
    concatStrings
    concatMapStrings
    mapAttrsToList
    ;

  # An option with its type and default, which is all the stand-in needs of most.
  option = type: default: mkOption { inherit type default; };
  freeform = option (types.attrsOf types.anything) { };
  strings = option (types.listOf types.str) [ ];

  # systemd-lib.nix's unitOption: lists concatenate, other values must agree.
  atom =
    value:
    builtins.isBool value
    || builtins.isInt value
    || builtins.isFloat value
    || builtins.isString value
    || builtins.isPath value
    || lib.isDerivation value;
  unitOption = lib.mkOptionType {
    name = "systemd option";
    check = value: atom value || (builtins.isList value && lib.all atom value);
    merge =
      loc: defs:
      if lib.any (def: builtins.isList def.value) defs then
        lib.concatMap (def: lib.toList def.value) defs
      else
        lib.mergeEqualOption loc defs;
  };
  unitSettings = option (types.attrsOf unitOption) { };

  # Options every unit kind has (systemd-unit-options.nix).
  unitOptions = {
    enable = option types.bool true;
    description = option types.str "";
    wants = strings;
    requires = strings;
    after = strings;
    before = strings;
    partOf = strings;
    wantedBy = strings;
    unitConfig = unitSettings;
  };
  serviceOptions = unitOptions // {
    serviceConfig = unitSettings;
    environment = mkOption {
      type = types.attrsOf (
        types.nullOr (
          types.oneOf [
            types.str
            types.path
            types.package
          ]
        )
      );
      default = { };
    };
    path = option (types.listOf (types.either types.package types.str)) [ ];
    restartTriggers = option (types.listOf types.unspecified) [ ];
  };
  socketOptions = unitOptions // {
    listenStreams = strings;
    socketConfig = unitSettings;
  };
  mountOptions = unitOptions // {
    what = mkOption { type = types.str; };
    where = mkOption { type = types.str; };
    type = option types.str "";
    options = option types.commas "";
    mountConfig = unitSettings;
  };

  text = value: if builtins.isBool value then lib.boolToString value else toString value;
  section =
    name: settings:
    "[${name}]\n"
    + concatStrings (
      mapAttrsToList (key: value: concatMapStrings (item: "${key}=${text item}\n") (lib.toList value)) (
        lib.filterAttrs (_: value: value != [ ] && value != null) settings
      )
    );
  unitSection = unit: {
    Description = unit.description;
    Wants = unit.wants;
    Requires = unit.requires;
    After = unit.after;
    Before = unit.before;
    PartOf = unit.partOf;
  };
  escapePath =
    path:
    lib.replaceStrings
      [
        "/"
        "-"
        " "
      ]
      [
        "-"
        "\\x2d"
        "\\x20"
      ]
      (lib.removePrefix "/" path);

  base =
    { config, pkgs, ... }:
    let
      cfg = config;
      etcEntries = lib.filter (entry: entry.enable) (lib.attrValues cfg.environment.etc);

      serviceFile =
        name: service:
        let
          triggers = lib.optionalAttrs (service.restartTriggers != [ ]) {
            X-Restart-Triggers = "${pkgs.writeText "X-Restart-Triggers-${name}" (
              toString (lib.flatten service.restartTriggers)
            )}";
          };
          searchPath = service.path ++ [
            pkgs.coreutils
            pkgs.findutils
            pkgs.gnugrep
            pkgs.gnused
          ];
        in
        section "Unit" (unitSection service // service.unitConfig // triggers)
        + section "Service" (
          {
            Environment = [
              "PATH=${lib.makeBinPath searchPath}"
            ]
            ++ mapAttrsToList (key: value: "${key}=${toString value}") (
              lib.filterAttrs (_: value: value != null) service.environment
            );
          }
          // service.serviceConfig
        );
      socketFile =
        _: socket:
        section "Unit" (unitSection socket // socket.unitConfig)
        + section "Socket" (
          {
            ListenStream = socket.listenStreams;
          }
          // socket.socketConfig
        );
      mountFile =
        mount:
        section "Unit" (unitSection mount // mount.unitConfig)
        + section "Mount" (
          {
            What = mount.what;
            Where = mount.where;
            Type = mount.type;
            Options = mount.options;
          }
          // mount.mountConfig
        );

      enabled = lib.filterAttrs (_: unit: unit.enable);
      units =
        mapAttrsToList (name: service: {
          name = "${name}.service";
          text = serviceFile name service;
          inherit (service) wantedBy;
        }) (enabled cfg.systemd.services)
        ++ mapAttrsToList (name: socket: {
          name = "${name}.socket";
          text = socketFile name socket;
          inherit (socket) wantedBy;
        }) (enabled cfg.systemd.sockets)
        ++ map (mount: {
          name = "${escapePath mount.where}.mount";
          text = mountFile mount;
          inherit (mount) wantedBy;
        }) (lib.filter (mount: mount.enable) cfg.systemd.mounts);
      # systemd-lib.nix's makeUnit: a store path name cannot hold every unit name's characters.
      pathSafe =
        lib.replaceStrings
          [
            "@"
            ":"
            "\\"
            "["
            "]"
          ]
          [
            "-"
            "-"
            "-"
            ""
            ""
          ];
      unitFiles = lib.listToAttrs (
        map (unit: lib.nameValuePair unit.name (pkgs.writeText "unit-${pathSafe unit.name}" unit.text)) units
      );

      tmpfilesFiles = lib.mapAttrs (
        name: paths:
        pkgs.writeText "${name}.conf" (
          concatStrings (
            lib.concatLists (
              mapAttrsToList (
                path: kinds:
                mapAttrsToList (
                  kind: rule:
                  "${kind} '${path}' ${rule.mode} ${rule.user} ${rule.group} ${rule.age} ${rule.argument}\n"
                ) kinds
              ) paths
            )
          )
        )
      ) cfg.systemd.tmpfiles.settings;

      # nixos/modules/system/etc/etc.nix, the builder's shell function left out.
      etc =
        pkgs.runCommandLocal "etc"
          {
            passthru.targets = map (entry: entry.target) etcEntries;
          }
          ''
            set -euo pipefail
            mkdir -p "$out/etc"
            ${lib.concatMapStringsSep "\n" (
              entry:
              lib.escapeShellArgs [
                "makeEtcEntry"
                # Force local source paths to be added to the store
                "${entry.source}"
                entry.target
                entry.mode
                entry.user
                entry.group
              ]
            ) etcEntries}
          '';

      users = pkgs.writeText "users-groups.json" (
        builtins.toJSON {
          users = mapAttrsToList (_: user: {
            inherit (user)
              name
              uid
              group
              home
              description
              ;
          }) cfg.users.users;
          groups = mapAttrsToList (_: group: { inherit (group) name gid; }) cfg.users.groups;
        }
      );
      unique = ids: lib.length ids == lib.length (lib.unique ids);
      ids = what: lib.filter (id: id != null) (mapAttrsToList (_: entry: entry.${what}) cfg.users.${
        if what == "uid" then "users" else "groups"
      });

      failed = map (assertion: assertion.message) (lib.filter (assertion: !assertion.assertion) cfg.assertions);
      toplevel =
        if failed != [ ] then
          throw "\nFailed assertions:\n${concatMapStrings (message: "- ${message}\n") failed}"
        else
          lib.foldr lib.warn (pkgs.runCommand "nixos-system-${cfg.networking.hostName}" {
            etc = cfg.system.build.etc;
            systemPath = pkgs.runCommand "system-path" { paths = cfg.environment.systemPackages; } "";
            inherit users;
          } "") cfg.warnings;
    in
    {
      options = {
        assertions = option (types.listOf types.unspecified) [ ];
        warnings = option (types.listOf types.str) [ ];
        # nixos/modules/misc/meta.nix: every module's documentation file.
        meta.doc = mkOption {
          type = types.path // {
            merge = _: defs: map (def: def.value) defs;
          };
        };
        nixpkgs = {
          pkgs = option types.unspecified (pkgsFor cfg.nixpkgs.config);
          config = freeform;
        };
        system = {
          stateVersion = option types.str "25.11";
          build = mkOption {
            type = types.submoduleWith {
              modules = [ { freeformType = types.lazyAttrsOf types.unspecified; } ];
            };
            default = { };
          };
        };

        environment = {
          systemPackages = option (types.listOf types.package) [ ];
          binsh = option types.path "${pkgs.bashInteractive}/bin/sh";
          usrbinenv = option (types.nullOr types.path) "${pkgs.coreutils}/bin/env";
          # nixos/modules/system/etc/etc.nix
          etc = mkOption {
            default = { };
            type = types.attrsOf (
              types.submodule (
                {
                  name,
                  config,
                  options,
                  ...
                }:
                {
                  options = {
                    enable = option types.bool true;
                    target = mkOption { type = types.str; };
                    text = option (types.nullOr types.lines) null;
                    source = mkOption { type = types.path; };
                    mode = option types.str "symlink";
                    uid = option types.int 0;
                    gid = option types.int 0;
                    user = option types.str "+${toString config.uid}";
                    group = option types.str "+${toString config.gid}";
                  };
                  config = {
                    target = lib.mkDefault name;
                    source = lib.mkIf (config.text != null) (
                      lib.mkDerivedConfig options.text (pkgs.writeText ("etc-" + lib.replaceStrings [ "/" ] [ "-" ] name))
                    );
                  };
                }
              )
            );
          };
        };

        systemd = {
          # nixos/modules/system/boot/systemd.nix: mkPackageOption pkgs "systemd" { }.
          package = option types.package pkgs.systemd;
          services = mkOption {
            type = types.attrsOf (types.submodule { options = serviceOptions; });
            default = { };
          };
          sockets = mkOption {
            type = types.attrsOf (types.submodule { options = socketOptions; });
            default = { };
          };
          mounts = mkOption {
            type = types.listOf (types.submodule { options = mountOptions; });
            default = [ ];
          };
          tmpfiles = {
            rules = strings;
            settings = mkOption {
              type = types.attrsOf (
                types.attrsOf (
                  types.attrsOf (
                    types.submodule {
                      options = lib.genAttrs [ "mode" "user" "group" "age" ] (
                        _:
                        mkOption {
                          type = types.str;
                          default = "-";
                        }
                      )
                      // {
                        argument = option types.str "";
                      };
                    }
                  )
                )
              );
              default = { };
            };
          };
        };

        # nixos/modules/config/users-groups.nix
        users = {
          users = mkOption {
            default = { };
            type = types.attrsOf (
              types.submodule (
                { name, ... }:
                {
                  options = {
                    name = mkOption {
                      type = types.str;
                      default = name;
                      apply =
                        value:
                        assert (
                          builtins.stringLength value < 32
                          || abort "Username '${value}' is longer than 31 characters which is not allowed!"
                        );
                        value;
                    };
                    uid = option (types.nullOr types.int) null;
                    group = option types.str "";
                    isSystemUser = option types.bool false;
                    home = option types.path "/var/empty";
                    description = option types.str "";
                    initialPassword = option (types.nullOr types.str) null;
                  };
                }
              )
            );
          };
          groups = mkOption {
            default = { };
            type = types.attrsOf (
              types.submodule (
                { name, ... }:
                {
                  options = {
                    name = option types.str name;
                    gid = option (types.nullOr types.int) null;
                  };
                }
              )
            );
          };
        };

        networking = mkOption {
          default = { };
          type = types.submodule {
            freeformType = types.attrsOf types.anything;
            options = {
              hostName = option types.str "nixos";
              hosts = option (types.attrsOf (types.listOf types.str)) { };
            };
          };
        };
        security.pki.installCACerts = option types.bool true;

        boot = freeform;
        virtualisation = freeform;
        services.getty = freeform;
        services.matrix-synapse = freeform;
      };

      config = {
        _module.args.pkgs = cfg.nixpkgs.pkgs;

        users.users.root = {
          uid = 0;
          group = "root";
          home = "/root";
        };
        users.groups.root.gid = 0;

        environment.etc = {
          # nixos/modules/config/networking.nix
          hosts.source = pkgs.writeText "hosts" (
            "127.0.0.1 localhost\n::1 localhost\n"
            + concatStrings (
              mapAttrsToList (address: names: "${address} ${lib.concatStringsSep " " names}\n") cfg.networking.hosts
            )
          );
          # nixos/modules/config/nsswitch.nix
          "nsswitch.conf".text = ''
            passwd: files systemd
            group: files [success=merge] systemd
            shadow: files
            hosts: mymachines files myhostname dns
          '';
          # nixos/modules/config/locale.nix
          zoneinfo.source = "${pkgs.tzdata}/share/zoneinfo";
          # nixos/modules/security/ca.nix
          "ssl/certs/ca-certificates.crt" = lib.mkIf cfg.security.pki.installCACerts {
            source = "${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt";
          };
          "ssl/certs/ca-bundle.crt" = lib.mkIf cfg.security.pki.installCACerts {
            source = "${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt";
          };
          # nixos/modules/system/boot/systemd.nix and systemd/tmpfiles.nix
          "systemd/system".source = pkgs.runCommand "system-units" {
            units = lib.attrValues unitFiles;
            wants = map (unit: "${unit.name}:${toString unit.wantedBy}") units;
          } "";
          "tmpfiles.d".source = pkgs.runCommand "tmpfiles.d" {
            files = lib.attrValues tmpfilesFiles ++ [
              (pkgs.writeText "00-nixos.conf" (lib.concatLines cfg.systemd.tmpfiles.rules))
            ];
          } "";
        };

        assertions = [
          {
            assertion = unique (ids "uid") && unique (ids "gid");
            message = "UIDs and GIDs must be unique!";
          }
        ]
        ++ mapAttrsToList (name: user: {
          assertion = user.group != "";
          message = "users.users.${name}.group is unset.";
        }) cfg.users.users;

        system.build = {
          inherit etc toplevel;
          units = unitFiles;
          tmpfiles = tmpfilesFiles;
          # nixos/modules/virtualisation/qemu-vm.nix: a script that boots the system.
          vm = pkgs.runCommand "nixos-vm" { inherit toplevel; } "";
        };
      };
    };
in
lib.evalModules {
  modules = [ base ] ++ modules;
  inherit specialArgs;
}
