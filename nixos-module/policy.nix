# The sandbox policy (policies/README.md) from the options, as it is at evaluation time:
# each group's store closure joins its read_only_paths when the file is built (default.nix).
{
  lib,
  cfg,
  # Bound read-only, without their closure, for groups with confineStore: the store paths
  # /etc links into (hosts, nsswitch.conf, the CA bundle), which the tmpfs would hide.
  confinedExtras ? [ ],
}:
let
  limits = import ./limits.nix;

  renderLimits =
    values:
    lib.listToAttrs (
      lib.concatLists (
        lib.mapAttrsToList (
          name: spec: lib.optional (values.${name} != null) (lib.nameValuePair spec.key values.${name})
        ) limits
      )
    );

  nonEmpty = attrs: lib.filterAttrs (_: value: value != [ ] && value != { }) attrs;

  group =
    _: g:
    nonEmpty {
      inherit (g) uid;
      mounts = map (mount: { inherit (mount) host sandbox writable; }) g.mounts;
      egress = nonEmpty { inherit (g.egress) cidrs domains; };
      path = map (package: "${lib.getBin package}/bin") g.packages;
      empty_paths = lib.optional g.confineStore "/nix/store";
      read_only_paths = lib.optionals g.confineStore confinedExtras;
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
// lib.optionalAttrs (cfg.proxy != null) { proxy = { inherit (cfg.proxy) address port; }; }
