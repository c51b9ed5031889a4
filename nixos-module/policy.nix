# The sandbox policy (policies/README.md) from the options, as it is at evaluation time:
# each confined group's store closure joins its read_only_paths when the file is built
# (default.nix).
{ lib, cfg }:
let
  limits = import ./limits.nix { inherit lib; };

  renderLimits =
    values:
    lib.listToAttrs (
      lib.concatLists (
        lib.mapAttrsToList (
          option: limit: lib.optional (values.${option} != null) (lib.nameValuePair limit.name values.${option})
        ) limits
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
      limits = renderLimits g.limits;
    }
    // lib.optionalAttrs g.main { main = true; };
in
nonEmpty {
  version = 1;
  data_dir = cfg.dataDir;
  protected_paths = cfg.protectedPaths;
  blocked_patterns = cfg.blockedPatterns;
  defaults = nonEmpty { limits = renderLimits cfg.defaults.limits; };
  groups = lib.mapAttrs group cfg.groups;
}
