# What the options put into the host's configuration file (nanoclaw/config.py); the
# freeform `settings` add to it. Secrets are named by credential, never written here.
{ lib, cfg }:
let
  present = lib.filterAttrs (_: value: value != null);
in
{
  data_dir = cfg.dataDir;
  sandbox_socket = lib.mkDefault "/run/nanoclaw/sandbox.sock";
  matrix = {
    homeserver = cfg.homeserverUrl;
    user_id = cfg.userId;
    inherit (cfg) owners;
    access_token_credential = "matrix-token";
  };
  model = present {
    name = cfg.model;
    base_url = cfg.baseUrl;
    api_key_credential = if cfg.apiKeyFile != null then "anthropic-key" else null;
  };
  groups = lib.mapAttrs (
    _: group:
    present {
      room_id = group.roomId;
      inherit (group) main trigger model;
      requires_trigger = group.requiresTrigger;
    }
    // lib.optionalAttrs (group.allowedSenders != [ ]) { allowed_senders = group.allowedSenders; }
  ) cfg.groups;
}
