# What the module adds to the host's configuration file (nanoclaw/host/config.py): each group's
# room options, as defaults that `settings.groups.<name>.*` overrides. The secrets are
# named by credential (options.nix), never written here.
{ lib, cfg }:
{
  groups = lib.mapAttrs (
    _: group:
    lib.mapAttrs (_: lib.mkDefault) (
      lib.filterAttrs (_: value: value != null && value != [ ] && value != { }) {
        room_id = group.roomId;
        inherit (group) main trigger model;
        requires_trigger = group.requiresTrigger;
        allowed_senders = group.allowedSenders;
        subagents = lib.mapAttrs (
          _: sub:
          lib.filterAttrs (_: value: value != null) {
            inherit (sub) description prompt model tools;
          }
        ) group.subagents;
      }
    )
  ) cfg.groups;
}
