# The NixOS VM of `nix run .#vm`: the module with two groups, the broker's socket
# listening, the host installed but stopped until it has real secrets. Log in as root (no
# password) and try
#   nanoclaw exec family -- /bin/sh -c 'id; ls /workspace; echo $PATH'
#   systemctl status nanoclaw-sandboxd.socket nanoclaw-sandboxd; journalctl -u nanoclaw
{ lib, pkgs, ... }:
{
  networking.hostName = "nanoclaw-demo";
  system.stateVersion = "25.11";
  users.users.root.initialPassword = "";
  services.getty.autologinUser = "root";
  virtualisation.vmVariant.virtualisation = {
    memorySize = 2048;
    graphics = false;
  };

  # Stand-ins, so the VM boots without secrets: replace both files with real ones
  # (root-only, outside the store), then `systemctl start nanoclaw` to talk to Matrix.
  systemd.services.nanoclaw.wantedBy = lib.mkForce [ ];
  systemd.tmpfiles.settings."05-nanoclaw-demo" = {
    "/etc/nanoclaw-secrets".d.mode = "0700";
    "/etc/nanoclaw-secrets/matrix-token".f = {
      mode = "0400";
      argument = "replace-me";
    };
    "/etc/nanoclaw-secrets/anthropic-key".f = {
      mode = "0400";
      argument = "replace-me";
    };
    "/srv/project".d.mode = "0755";
  };

  services.nanoclaw = {
    enable = true;
    settings.matrix = {
      homeserver = "https://matrix.example.org";
      user_id = "@nanoclaw:example.org";
      owners = [ "@me:example.org" ];
    };
    accessTokenFile = "/etc/nanoclaw-secrets/matrix-token";
    apiKeyFile = "/etc/nanoclaw-secrets/anthropic-key";
    protectedPaths = [
      "/etc/nanoclaw"
      "/etc/nanoclaw-secrets"
    ];
    groups = {
      main = {
        uid = 61000;
        main = true;
        roomId = "!owners:example.org";
        mounts = [
          {
            host = "/srv/project";
            sandbox = "/workspace/project";
            writable = true;
          }
        ];
        egress.domains = [
          "github.com"
          "*.githubusercontent.com"
        ];
        packages = with pkgs; [
          coreutils
          git
          curl
          ripgrep
        ];
      };
      family = {
        uid = 61001;
        roomId = "!family:example.org";
        allowedSenders = [ "@me:example.org" ];
        packages = with pkgs; [
          coreutils
          gnugrep
          findutils
        ];
      };
    };
  };
}
