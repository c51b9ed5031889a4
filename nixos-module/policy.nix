# The sandbox policy (policies/README.md) from the options, as it is at evaluation time:
# each confined group's store closure joins its read_only_paths when the file is built
# (default.nix).
{ lib, cfg }:
let
  rules = lib.importJSON ./rules.json;
  limits = import ./limits.nix { inherit lib; };
  agentLimits = import ./limits.nix {
    inherit lib;
    inherit (import ./agent.nix { inherit rules; }) limits;
  };

  # The limits of `spec` (limits.nix) set in `values`, by their policy keys.
  renderLimits =
    spec: values:
    lib.listToAttrs (
      lib.concatLists (
        lib.mapAttrsToList (
          option: limit: lib.optional (values.${option} != null) (lib.nameValuePair limit.name values.${option})
        ) spec
      )
    );

  nonEmpty = attrs: lib.filterAttrs (_: value: value != [ ] && value != { }) attrs;

  # Like `main`, `protect` is written only where it differs from the policy's default.
  mount =
    mount:
    {
      inherit (mount) host sandbox writable;
    }
    // lib.optionalAttrs (!mount.protect) { protect = false; };

  group =
    _: g:
    nonEmpty {
      inherit (g) uid;
      mounts = map mount g.mounts;
      egress = nonEmpty { inherit (g.egress) cidrs domains; };
      path = map (package: "${lib.getBin package}/bin") g.packages;
      empty_paths = lib.optional g.confineStore "/nix/store";
      limits = renderLimits limits g.limits;
      # Every group has its agent unit: without one, the host cannot answer in its room.
      agent = {
        inherit (g.agent) uid;
      }
      // renderLimits agentLimits g.agent;
      # Each one the host may name; the broker narrows the group's units for it.
      subagents = lib.mapAttrs (
        _: sub:
        lib.optionalAttrs sub.readonly { readonly = true; }
        // lib.optionalAttrs sub.noEgress { no_egress = true; }
      ) g.subagents;
    }
    // lib.optionalAttrs g.main { main = true; };
in
nonEmpty {
  version = 1;
  data_dir = cfg.dataDir;
  protected_paths = cfg.protectedPaths;
  blocked_patterns = cfg.blockedPatterns;
  defaults = nonEmpty {
    limits = renderLimits limits cfg.defaults.limits;
    agent = renderLimits agentLimits cfg.defaults.agent;
  };
  groups = lib.mapAttrs group cfg.groups;
}
